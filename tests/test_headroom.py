"""The headroom verdict (kd_gym.headroom): does a pool leave room for per-instance choice, before any RL."""

from __future__ import annotations

import pytest
from test_default_pool import TINY_RECIPES

from kd_gym.headroom import HEADROOM_POINTS, pool_headroom, verdict_lines
from kd_gym.prepare.pool_build import build_default_pool
from kd_gym.prepare.pool_report import format_manifest


def manifest(best: float, routed: float | None, equal: float | None = None, kind: str = "kmeans") -> dict:
    teachers = [{"name": "expert-a", "dev": {"accuracy": best}}, {"name": "expert-b", "dev": {"accuracy": best - 0.1}}]
    return {"teachers": teachers, "silos": {"kind": kind},
            "dev_by_silo": {"routed": routed, "any_right": None if routed is None else min(1.0, routed + 0.1),
                            "equal_weights": equal}}


@pytest.mark.parametrize(("best", "equal", "routed", "verdict"), [
    (0.5776, 0.5647, 0.7422, "headroom"),  # tweets, topic silos: +16.5 points over the best teacher
    (0.5988, 0.6222, 0.7519, "headroom"),  # tweets without topics, k-means silos: +13.0 over equal weights
    (0.5872, 0.6266, 0.6744, "little"),  # snippets, domain silos: +4.8 over equal weights
    (0.7170, 0.7217, 0.6981, "none"),  # one domain, k-means silos: -2.4
    (0.7467, None, 0.7435, "none"),  # a pool that did not record equal weights: against the best teacher
    (0.70, 0.60, 0.70, "none"),  # no gain at all
    (0.70, None, None, "unknown"),  # no silo experts to route to
])
def test_the_verdict_follows_what_silo_routing_gains_over_the_best_fixed_weighting(best, equal, routed, verdict):
    headroom = pool_headroom(manifest(best, routed, equal))
    assert headroom.verdict == verdict and headroom.best_teacher == "expert-a"
    assert headroom.best_fixed == max(best, equal or 0.0)
    text = "\n".join(verdict_lines(headroom))
    assert f"verdict: {verdict}" in text and f"{best:.1%}" in text
    if verdict in ("none", "little"):  # the user is told what to try
        assert "--silo-column" in text and "fewer silos" in text
    if routed is not None:
        assert f"{100 * (routed - max(best, equal or 0.0)):+.1f} points" in text
    assert (HEADROOM_POINTS, pool_headroom(manifest(0.60, 0.60 + HEADROOM_POINTS / 100)).verdict) == (5.0, "headroom")


def test_a_built_pool_records_what_some_teacher_gets_right_and_prints_its_verdict(tiny_csv, tiny_encoder, kd_home):
    built = build_default_pool(str(tiny_csv), base=tiny_encoder, recipes=TINY_RECIPES, device="cpu")
    any_right, equal = built["dev_by_silo"]["any_right"], built["dev_by_silo"]["equal_weights"]
    best = max(t["dev"]["accuracy"] for t in built["teachers"])
    assert best <= any_right <= 1.0 and equal <= any_right  # some teacher right on a row: at least any one's rows
    text = format_manifest(built)
    assert "verdict: unknown" in text  # the tiny recipes are generalists: no silo expert to route to
    assert text.index("dev disagreement") < text.index("verdict:")  # the verdict is the last thing printed


def test_bench_prints_the_verdict_before_its_results(tiny_csv, tiny_encoder, kd_home, tmp_path, capsys):
    from kd_gym.cli import main as run_cli

    build_default_pool(str(tiny_csv), base=tiny_encoder, recipes=TINY_RECIPES, device="cpu")
    capsys.readouterr()
    assert run_cli(["bench", "--agents", "uniform", "--seeds", "0", "--steps", "4", "--out", str(tmp_path / "b"),
                    "--no-oracle", "--task", str(tiny_csv), "--student-checkpoint", str(tiny_encoder),
                    "--batch-size", "8", "--dev-subset", "20", "--max-length", "16", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert out.index("per-instance headroom (dev accuracy)") < out.index("| uniform")  # before the results


def test_a_pool_built_before_the_equal_weights_figure_gets_it_once(tiny_csv, tiny_encoder, kd_home):
    import json

    from kd_gym.defaults import default_pool_dir
    from kd_gym.prepare.pool_report import pool_manifest
    from kd_gym.tasks import load_task

    built = build_default_pool(str(tiny_csv), base=tiny_encoder, recipes=TINY_RECIPES, device="cpu")
    folder = default_pool_dir(str(tiny_csv))
    old = {**built, "dev_by_silo": {k: v for k, v in built["dev_by_silo"].items() if k != "equal_weights"}}
    (folder / "pool.json").write_text(json.dumps(old))
    refreshed = pool_manifest(folder, load_task(str(tiny_csv)))
    assert refreshed["dev_by_silo"]["equal_weights"] == built["dev_by_silo"]["equal_weights"]
    assert json.loads((folder / "pool.json").read_text())["dev_by_silo"] == refreshed["dev_by_silo"]


def test_a_silo_column_names_the_silos_and_its_own_pool_folder(tmp_path, kd_home):
    import pandas as pd
    from conftest import make_rows

    from kd_gym.defaults import default_pool_dir
    from kd_gym.prepare.pool_build import silo_labels, teacher_rows
    from kd_gym.tasks import load_task

    rows = pd.DataFrame(make_rows(300))
    rows["source"] = ["shop" if i % 3 else "news" for i in range(len(rows))]
    path = tmp_path / "domains.csv"
    rows.to_csv(path, index=False)
    task = load_task(str(path), silo_column="source")
    labels, info = silo_labels(task, teacher_rows(task, 0))
    assert info == {"kind": "column", "column": "source", "names": ["news", "shop"]}
    assert set(labels) == {"news", "shop"}
    folders = {default_pool_dir(str(path)), default_pool_dir(str(path), silo_column="source"),
               default_pool_dir(str(path), kmeans_silos=3)}
    assert len(folders) == 3  # each choice of silos is a pool of its own
    assert default_pool_dir(str(path), silo_column="source").name.startswith("domains-siloed-by-source-")
    with pytest.raises(ValueError, match=r"column 'domain' is missing .* pass silo_column=\.\.\."):
        load_task(str(path), silo_column="domain")
    with pytest.raises(ValueError, match=r"silo_column='label' is also the task's text or label column"):
        load_task(str(path), silo_column="label")
    with pytest.raises(ValueError, match=r"kmeans_silos=1 is invalid; use an integer >= 2"):
        load_task(str(path), kmeans_silos=1)
    rows.assign(source="shop").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"silo_column='source' has 1 value"):
        silo_labels(load_task(str(path), silo_column="source"), teacher_rows(task, 0))


def test_the_silo_flags_reach_every_command_that_finds_a_pool():
    from kd_gym.cli import build_parser, command_parser

    parser = build_parser()
    for argv in (["teachers", "build"], ["teachers", "show"], ["train"], ["bench"], ["demo"]):
        args = parser.parse_args([*argv, "--silo-column", "source", "--kmeans-silos", "3"])
        assert (args.silo_column, args.kmeans_silos) == ("source", 3), command_parser(parser, args).prog


def test_snippets_has_its_domains_and_their_two_genres_as_silo_columns(kd_home):
    from kd_gym.defaults import default_pool_dir
    from kd_gym.task_sources import SNIPPET_GENRES
    from kd_gym.tasks import load_task

    domains, genres = load_task("snippets"), load_task("snippets", silo_column="genre")
    assert domains.silo_column == "domain" and genres.silo_column == "genre"
    train = domains.splits["train"]
    assert all(SNIPPET_GENRES[d] == g for d, g in zip(train["domain"], train["genre"]))
    assert set(train["genre"]) == {"reviews", "news-and-tweets"}
    assert domains.content_fingerprint() == genres.content_fingerprint()  # the same rows: only the silos differ
    assert default_pool_dir("snippets").name.startswith("snippets-siloed-")
    assert default_pool_dir("snippets", silo_column="genre").name.startswith("snippets-siloed-by-genre-")

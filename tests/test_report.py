"""Reports: rliable's scores (normalised score, IQM, probability of improvement) on hand-computed numbers, and
``kd-gym report`` merging the cells of a bench split across files into the single-machine results.md."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from agents.experiments import scores
from agents.experiments.report import aggregate_report, bench_report


def _frame(scenario: str = "default", **agents: list[float]) -> pd.DataFrame:
    """One row per (agent, seed) with these test metrics (seeds 0, 1, ...)."""
    return pd.DataFrame([{"agent": agent, "seed": seed, "test_metric": value, "dev_metric": value, "wall_s": 1.0,
                          "scenario": scenario}
                         for agent, values in agents.items() for seed, value in enumerate(values)])


# uniform's mean is 0.52 and oracle's 0.72; x beats every run of uniform.
BEATS = {"uniform": [0.50, 0.52, 0.54], "oracle": [0.70, 0.72, 0.74], "x": [0.60, 0.61, 0.66]}


def test_normalised_score_and_probability_of_improvement_by_hand():
    table = scores.rliable_scores(_frame(**BEATS)).set_index("agent")
    # (0.60 - 0.52) / 0.2 = 40%, (0.61 - 0.52) / 0.2 = 45%, (0.66 - 0.52) / 0.2 = 70%
    assert table.loc["x", "normalised_mean"] == pytest.approx((40 + 45 + 70) / 3)
    assert table.loc["uniform", "normalised_mean"] == pytest.approx(0.0)
    assert table.loc["oracle", "normalised_mean"] == pytest.approx(100.0)
    assert table.loc["x", "improvement"] == 1.0  # every run of x beats every run of uniform
    assert (table.loc["x", "improvement_low"], table.loc["x", "improvement_high"]) == (1.0, 1.0)
    assert table.loc["oracle", "improvement"] == 1.0 and np.isnan(table.loc["uniform", "improvement"])
    # three runs: a 25% trimmed mean cuts none, so the IQM is the mean; its CI lies within the runs' range
    assert table.loc["x", "iqm"] == pytest.approx((40 + 45 + 70) / 3)
    assert 40 - 1e-9 <= table.loc["x", "iqm_low"] < table.loc["x", "iqm"] < table.loc["x", "iqm_high"] <= 70 + 1e-9
    assert table.loc["x", ["tasks", "runs"]].tolist() == [1, 3]


def test_iqm_of_known_arrays():
    assert scores.iqm([np.arange(1.0, 9.0)])[0] == pytest.approx(4.5)  # mean of 3, 4, 5, 6
    assert scores.iqm([np.array([0.0, 1.0, 2.0, 3.0, 100.0])])[0] == pytest.approx(2.0)  # one cut at each end
    assert scores.iqm([np.array([1.0, 2.0, 3.0, 4.0]), np.array([5.0, 6.0, 7.0, 8.0])])[0] == pytest.approx(4.5)
    point, low, high = scores.iqm([np.array([0.0, 1.0, 2.0, 3.0, 100.0])])
    assert 0.0 <= low <= point <= high <= 100.0 and high < 100.0  # the outlier never drives the IQM to 100
    assert np.isnan(scores.iqm([np.array([5.0])])[1])  # one run: no interval


def test_probability_of_improvement_counts_every_pair_and_ties_half():
    # x vs uniform over all 9 pairs: 0.55 beats 1; 0.7 beats 2 and ties 1; 0.8 beats 3 -> 6.5 / 9
    point, low, high = scores.probability_of_improvement([np.array([0.55, 0.7, 0.8])], [np.array([0.5, 0.6, 0.7])])
    assert point == pytest.approx(6.5 / 9)
    assert 0.0 <= low < point < high <= 1.0
    # averaged over tasks: 1.0 on the first, 0.5 (equal runs) on the second
    two = scores.probability_of_improvement([np.array([0.9, 0.8]), np.array([0.3, 0.4])],
                                            [np.array([0.1, 0.2]), np.array([0.3, 0.4])])
    assert two[0] == pytest.approx(0.75)
    with pytest.raises(ValueError, match="needs the same tasks for both: got 2 and 1"):
        scores.probability_of_improvement([np.ones(2), np.ones(2)], [np.ones(2)])


def test_the_vectorised_bootstrap_statistics_are_rliables():
    from rliable import metrics

    rng = np.random.default_rng(3)
    x = [rng.normal(size=5), rng.integers(0, 3, size=4).astype(float)]
    y = [rng.normal(size=3), rng.integers(0, 3, size=6).astype(float)]
    rliable_poi = np.mean([metrics.probability_of_improvement(a[:, None], b[:, None]) for a, b in zip(x, y)])
    assert scores._improvement(*x, *y) == pytest.approx(rliable_poi)
    assert scores._iqm(*x) == pytest.approx(metrics.aggregate_iqm(np.concatenate(x)))


def test_intervals_are_deterministic():
    tasks = [np.random.default_rng(0).normal(size=12)]
    assert scores.iqm(tasks) == scores.iqm(tasks)
    assert scores.iqm(tasks, reps=200, seed=1) != scores.iqm(tasks, reps=200)  # the seed is what makes them equal


def test_bench_report_shows_the_scores_table():
    report = bench_report(_frame(**BEATS), command="kd-gym bench", title="t")
    assert "| x | +51.7 | +51.7 [+" in report and "| 1.00 [1.00, 1.00] |" in report
    assert "| agent | normalised test score (%) mean | IQM normalised (%) [95% CI] | P(test > uniform) [95% CI] |" in report
    assert "p (paired t)" in report and "| margin |" in report  # the t-test and the margins stay
    assert "2000 resamples, seed 0" in report


def test_missing_reference_rows_leave_their_columns_out():
    no_oracle = bench_report(_frame(uniform=BEATS["uniform"], x=BEATS["x"]), command=None, title="t")
    assert "Normalised scores and their IQM are left out: they need the uniform and oracle rows (missing: oracle)." \
        in no_oracle
    assert "IQM normalised" not in no_oracle and "| x | 1.00 [1.00, 1.00] |" in no_oracle
    neither = bench_report(_frame(x=BEATS["x"], y=BEATS["uniform"]), command=None, title="t")
    assert "missing: uniform and oracle" in neither and "left out: it needs the uniform rows" in neither
    assert "P(test >" not in neither
    oracle_worse = bench_report(_frame(uniform=[0.6, 0.7], oracle=[0.5, 0.6], x=[0.1, 0.2]), command=None, title="t")
    assert "oracle does not beat uniform on the mean test metric of scenario(s) default" in oracle_worse


def test_aggregate_over_scenarios_by_hand():
    # default: uniform 0.5, oracle 0.7 (gap 0.2), x 0.6 -> 50%; noisy: uniform 0.4, oracle 0.8, x 0.4 -> 0%
    frame = pd.concat([_frame("default", uniform=[0.5, 0.5], oracle=[0.7, 0.7], x=[0.6, 0.6]),
                       _frame("noisy-teacher", uniform=[0.4, 0.4], oracle=[0.8, 0.8], x=[0.4, 0.4])])
    table = scores.rliable_scores(frame).set_index("agent")
    assert table.loc["x", "normalised_mean"] == pytest.approx(25.0)
    assert table.loc["x", ["tasks", "runs"]].tolist() == [2, 4]
    assert table.loc["x", "iqm"] == pytest.approx(25.0)  # 4 runs 50, 50, 0, 0: the middle two are 50 and 0
    assert table.loc["x", "improvement"] == pytest.approx((1.0 + 0.5) / 2)  # beats on default, ties on noisy
    text = aggregate_report(frame)
    assert text.startswith("## All scenarios: default, noisy-teacher (tasks: scenarios, runs: seeds)")
    assert "| x | 2 / 4 | +25.0 | +25.0 [" in text


def test_read_results_refuses_two_configs_of_one_agent(tmp_path):
    from agents.experiments.grid import read_results

    rows = _frame(uniform=[0.5, 0.6]).assign(config_hash=["aaaa", "bbbb"], steps=[4, 8])
    rows.to_csv(tmp_path / "results.csv", index=False)
    with pytest.raises(ValueError, match=r"agent 'uniform': rows of 2 bench configs: aaaa \(1 rows, steps 4\), "
                                         r"bbbb \(1 rows, steps 8\).*pass --config-hash"):
        read_results([tmp_path])
    assert read_results([tmp_path], ["bbbb"])["test_metric"].tolist() == [0.6]
    with pytest.raises(ValueError, match="is neither a results.csv file nor a folder"):
        read_results([tmp_path / "nothing"])


def _without_command(text: str) -> list[str]:
    return [line for line in text.splitlines() if not line.startswith("Command: ")]


def test_report_over_a_split_results_csv_is_the_single_machine_report(tiny_env_kwargs, tmp_path, capsys):
    from kd_gym.cli import main
    from tests.test_cli import tiny_flags

    out = tmp_path / "bench"
    assert main(["bench", "--agents", "no_kd,uniform", "--seeds", "0,1", "--steps", "4", "--out", str(out),
                 *tiny_flags(tiny_env_kwargs)]) == 0
    single = (out / "results.md").read_text()
    rows = pd.read_csv(out / "results.csv")
    assert len(rows) == 6  # no_kd, uniform, oracle x 2 seeds
    # two machines: each has half of the cells (by seed), in its own file
    rows[rows["seed"] == 1].to_csv(out / "machine-a.csv", index=False)
    rows[rows["seed"] == 0].to_csv(out / "machine-b.csv", index=False)
    merged = tmp_path / "merged"
    assert main(["report", str(out / "machine-a.csv"), str(out / "machine-b.csv"), "--out", str(merged)]) == 0
    report = (merged / "results.md").read_text()
    assert _without_command(report) == _without_command(single)
    assert "Command: `kd-gym report " in report and "P(test > uniform)" in report
    for figure in ("curves.png", "weights.png"):  # the cells' curves found beside the files
        assert (merged / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(pd.read_csv(merged / "results-merged.csv")["source"].map(lambda s: s[-13:]).unique()) == [
        "machine-a.csv", "machine-b.csv"]

    # a second scenario: the report aggregates over both first
    noisy = tmp_path / "noisy"
    assert main(["bench", "--agents", "no_kd,uniform", "--seeds", "0,1", "--steps", "4", "--out", str(noisy),
                 "--scenario", "noisy-teacher", *tiny_flags(tiny_env_kwargs)]) == 0
    both = tmp_path / "both"
    assert main(["report", str(out), str(noisy), "--out", str(both)]) == 0
    text = (both / "results.md").read_text()
    assert "## All scenarios: default, noisy-teacher (tasks: scenarios, runs: seeds)" in text
    assert "| agent | scenarios / runs normalised |" in text
    assert text.count("## kd-gym bench: ") == 2
    assert (both / "curves-noisy-teacher.png").exists() and (both / "weights-default.png").exists()


def test_the_new_flags_have_help(capsys):
    from kd_gym.cli import main

    for command, flags in ((["report"], ["--out", "--config-hash", "PATH"]), (["bench"], ["--emit-sweep", "--cell"])):
        with pytest.raises(SystemExit):
            main([*command, "--help"])
        text = capsys.readouterr().out
        for flag in flags:
            assert flag in text, f"{command[0]} --help lacks {flag}"
    assert "W&B sweep file" in text and "AGENT@SEED" in text


def test_the_report_heading_comes_from_the_rows():
    from agents.experiments.grid import title_of
    from agents.experiments.report import bench_title

    protocol = {"protocol": "train-eval", "train_students": 4, "eval_students": 2}
    rows = _frame(**BEATS).assign(bench_command="demo", bench_task="data/my.csv", task="my.csv", env="lite",
                                  steps=300, **protocol)
    assert title_of(rows) == bench_title("demo", "data/my.csv", "lite", "default", 300, protocol)
    assert title_of(rows).endswith("300 student steps, train-eval protocol (4 training students, 2 evaluation "
                                   "students per seed)")
    older = _frame(**BEATS).assign(task="my.csv", env="lite", steps=300)  # rows written before these columns
    assert title_of(older) == "kd-gym bench: my.csv, lite env, scenario default, 300 student steps"


def test_the_sweep_command_drops_the_flags_it_sets_itself_in_any_spelling():
    from agents.experiments.grid import DROPPED_FLAGS, _strip_flags

    options = {"--out", "--agents", "--seeds", "--emit-sweep", "--cell", "--steps", "--scenario"}
    argv = ["--agents", "a,b", "--emit", "g.yaml", "--steps", "6", "--out=runs/x", "--seeds=0,1", "--scenario",
            "specialists", "--cell", "a@0"]
    assert _strip_flags(argv, DROPPED_FLAGS, options) == ["--steps", "6", "--scenario", "specialists"]


def test_every_results_table_says_what_each_learner_learns_from():
    from agents.experiments.report import readme_table

    frame = _frame(**BEATS)
    frame["learns_from"] = frame["agent"].map({"uniform": "nothing (fixed)", "x": "the env's return"})
    for text in (bench_report(frame, None, "t"), readme_table(frame)):
        rows: dict[str, str] = {}
        for line in text.splitlines():  # the first table's rows
            if line.startswith("| "):
                rows.setdefault(line.split(" | ")[0][2:], line)
        assert rows["agent"].startswith("| agent | learns from | test")
        assert rows["x"].startswith("| x | the env's return | ") and rows["oracle"].startswith("| oracle | - | ")
    # cells of an older bench (no such column) give the table without it
    assert "learns from" not in bench_report(_frame(**BEATS), None, "t")

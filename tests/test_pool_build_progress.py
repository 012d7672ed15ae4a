"""Long builds say where they are: plain progress lines with the elapsed time, and a dry run that says what a build
would do and about how long it would take."""

from __future__ import annotations

import re

from test_default_pool import TINY_RECIPES

from kd_gym.cli import main as run_cli
from kd_gym.defaults import default_pool_dir
from kd_gym.prepare.pool_build import build_default_pool


def test_a_build_prints_where_it_is_with_the_time_even_without_progress_bars(tiny_csv, tiny_encoder, kd_home,
                                                                             monkeypatch, capsys):
    monkeypatch.setenv("TQDM_DISABLE", "1")
    build_default_pool(str(tiny_csv), base=tiny_encoder, recipes=TINY_RECIPES, device="cpu")
    lines = [line for line in capsys.readouterr().out.splitlines() if re.match(r"\[\s*\d+ s\] ", line)]
    text = "\n".join(lines)
    for expected in ("train rows", "silos (", "teacher 1/2 tiny-l1: fine-tuning 1 MiniLM layer(s) on 60 rows",
                     "teacher 1/2 tiny-l1: trained", "teacher 2/2 tfidf-all: TF-IDF", "logits on dev",
                     "pool written to"):
        assert expected in text, (expected, text)
    build_default_pool(str(tiny_csv), base=tiny_encoder, recipes=TINY_RECIPES, device="cpu")  # again: kept
    assert "teacher 1/2 tiny-l1: already built, kept" in capsys.readouterr().out


def test_a_dry_run_plans_the_build_and_builds_nothing(tiny_csv, kd_home, capsys):
    assert run_cli(["teachers", "build", "--task", str(tiny_csv), "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "dry run: nothing is built" in out and "5 k-means clusters" in out
    generalist = re.search(r"teacher 6/6 minilm-l1: fine-tuning 1 MiniLM layer\(s\) on (\d+) rows, (\d+) updates", out)
    assert generalist and int(generalist[2]) == -(-int(generalist[1]) // 32)  # one epoch, no minimum
    assert re.search(r"teacher 1/6 expert-cluster-0: fine-tuning 3 MiniLM layer\(s\) on \d+ rows, 150 updates", out)
    assert re.search(r"about \d+ min on a 2-core CPU", out)
    assert not default_pool_dir(str(tiny_csv)).exists()

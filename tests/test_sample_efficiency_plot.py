"""scripts/plot_sample_efficiency.py: test % against student steps learned, from the results.csv of bench folders."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _results(folder: Path, rows: list[tuple[str, int, int, float]]) -> None:
    folder.mkdir(parents=True)
    pd.DataFrame(rows, columns=["agent", "seed", "train_student_steps", "test_metric"]).to_csv(
        folder / "results.csv", index=False)


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_sample_efficiency.py"), *args],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)


def test_each_learner_gets_a_point_per_training_budget_over_the_chosen_seeds(tmp_path):
    _results(tmp_path / "one", [("ppo", 0, 1500, 0.50), ("ppo", 1, 1500, 0.54), ("uniform", 0, 0, 0.40)])
    _results(tmp_path / "four", [("ppo", 0, 6000, 0.60), ("ppo", 1, 6000, 0.64), ("ppo", 2, 6000, 0.99)])
    figure = tmp_path / "curve.png"
    completed = _run(str(tmp_path / "one"), str(tmp_path / "four"), "--seeds", "0,1", "--out", str(figure))
    assert completed.returncode == 0, completed.stderr
    assert figure.stat().st_size > 10_000
    ppo = next(line for line in completed.stdout.splitlines() if line.startswith("| ppo"))
    # seed 2 is left out; the reference agent (no training steps) is a line, not a row
    assert "52.00 ± 2.83 (n=2)" in ppo and "62.00 ± 2.83 (n=2)" in ppo
    assert not any(line.startswith("| uniform") for line in completed.stdout.splitlines())


def test_online_results_without_training_budgets_are_refused_with_the_reason(tmp_path):
    (tmp_path / "online").mkdir()
    pd.DataFrame({"agent": ["ppo"], "seed": [0], "test_metric": [0.5]}).to_csv(tmp_path / "online" / "results.csv")
    completed = _run(str(tmp_path / "online"))
    assert completed.returncode != 0 and "train_student_steps" in completed.stderr

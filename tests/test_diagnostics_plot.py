"""scripts/plot_diagnostics.py: reads the cells of bench folders and plots the learning diagnostics they hold."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _cell(out: Path, agent: str, seed: int, expert_weight: float) -> None:
    folder = out / "cells" / f"{agent}__{seed}"
    folder.mkdir(parents=True)
    steps = np.arange(0, 400, 50)
    pd.DataFrame({"env_step": steps, "dev_metric": 0.5, "routing/expert_weight": expert_weight,
                  "agent/entropy": np.linspace(0.69, 0.3, len(steps))}).to_csv(folder / "train_history.csv",
                                                                              index=False)


def test_the_diagnostics_plot_reads_each_runs_cells_and_prints_their_tails(tmp_path):
    for seed in (0, 1):
        _cell(tmp_path / "a", "reinforce", seed, 0.2)
        _cell(tmp_path / "b", "reinforce-paper", seed, 0.5)
    figure = tmp_path / "diag.png"
    completed = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_diagnostics.py"),
                                f"one={tmp_path / 'a'}:reinforce", f"two={tmp_path / 'b'}:reinforce-paper",
                                "--out", str(figure)], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    assert figure.stat().st_size > 10_000
    rows = {line.split("|")[1].strip(): line for line in completed.stdout.splitlines() if line.startswith("| one")
            or line.startswith("| two")}
    assert "| 2 | 0.2 |" in rows["one"] and "| 2 | 0.5 |" in rows["two"]


def test_a_run_without_cells_says_how_to_make_them(tmp_path):
    completed = subprocess.run([sys.executable, str(ROOT / "scripts" / "plot_diagnostics.py"),
                                f"x={tmp_path}:reinforce"], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert completed.returncode != 0 and "run the bench first" in completed.stderr

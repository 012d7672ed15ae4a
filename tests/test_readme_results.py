"""scripts/readme_results.py: the README's results block is written from a demo's results.csv, not by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def load_script():
    spec = importlib.util.spec_from_file_location("readme_results", ROOT / "scripts" / "readme_results.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_block_is_written_from_the_run_and_check_fails_when_stale(tmp_path, capsys):
    script = load_script()
    run = tmp_path / "demo"
    run.mkdir()
    rows = [(agent, seed, test, test - 0.01) for agent, base in
            (("no_kd", 0.60), ("uniform", 0.50), ("best_teacher", 0.61), ("oracle", 0.68))
            for seed, test in enumerate((base, base + 0.01, base - 0.01))]
    pd.DataFrame(rows, columns=["agent", "seed", "test_metric", "dev_metric"]).assign(wall_s=2.0).to_csv(
        run / "results.csv", index=False)
    (run / "results.md").write_text("# demo\n\nCommand: `kd-gym demo`\n")
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n\n{script.START}\nold numbers\n{script.END}\n\nafter\n")
    assert script.main(["--run", str(run), "--readme", str(readme), "--check"]) == 1  # stale
    assert script.main(["--run", str(run), "--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "old numbers" not in text and text.startswith("intro") and text.endswith("after\n")
    assert "| oracle | 68.00 ± 1.00 | +18.00 |" in text  # paired with uniform over the same seeds
    assert "| per-instance choice pays | oracle - best fixed (best_teacher) | +7.00 |" in text
    assert "| distillation pays | oracle - no_kd | +8.00 |" in text
    assert "Seeds 0, 1, 2" in text and "Command: `kd-gym demo`" in text
    assert script.main(["--run", str(run), "--readme", str(readme), "--check"]) == 0


def test_an_earlier_configurations_cells_in_the_same_folder_are_left_out(tmp_path):
    script = load_script()
    run = tmp_path / "demo"
    run.mkdir()
    old = [(agent, seed, 0.10, 0.10, "old") for agent in ("no_kd", "uniform", "oracle") for seed in (0, 1)]
    new = [(agent, seed, base + 0.01 * seed, base, "new") for agent, base in
           (("no_kd", 0.60), ("uniform", 0.50), ("oracle", 0.70)) for seed in (0, 1)]
    pd.DataFrame(old + new, columns=["agent", "seed", "test_metric", "dev_metric", "config_hash"]).assign(
        wall_s=2.0).to_csv(run / "results.csv", index=False)
    text = script.block(run)
    # the newest cells alone (with the old ones mixed in, the oracle's mean would be 40.25)
    assert "| oracle | 70.50 ± 0.71 | +20.00 |" in text and "| no_kd | 60.50 ± 0.71 | +10.00 |" in text


def test_the_readme_has_the_block():
    text = (ROOT / "README.md").read_text()
    script = load_script()
    assert text.count(script.START) == 1 and text.count(script.END) == 1

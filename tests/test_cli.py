"""The command line end to end on a tiny setup: train, bench (with resume), custom agents by path and entry point."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest

from kd_gym.cli import build_parser, main

KD_GYM = [sys.executable, "-m", "kd_gym.cli"]


def tiny_flags(kwargs: dict) -> list[str]:
    return ["--task", kwargs["task"], "--teachers", ",".join(kwargs["teachers"]),
            "--student-checkpoint", kwargs["student_checkpoint"], "--batch-size", "8", "--dev-subset", "20",
            "--max-length", "16", "--device", "cpu", "--reward-interval", "3"]


def test_every_command_has_help(capsys):
    for command in (["train"], ["demo"], ["bench"], ["teachers", "build"]):
        with pytest.raises(SystemExit) as exit_info:
            build_parser().parse_args([*command, "--help"])
        assert exit_info.value.code == 0
        assert "usage: kd-gym" in capsys.readouterr().out


def test_train_prints_one_json_line_and_writes_the_run(tiny_env_kwargs, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["train", "--agent", "confidence", "--seed", "1", "--steps", "9", "--out", str(out),
                 *tiny_flags(tiny_env_kwargs)])
    assert code == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert {"agent", "seed", "dev_metric", "test_metric", "steps", "wall_s"} <= set(line)
    assert line["agent"] == "confidence" and line["seed"] == 1 and line["steps"] == 9
    assert 0.0 <= line["test_metric"] <= 1.0
    assert json.loads((out / "result.json").read_text())["test_metric"] == line["test_metric"]
    assert (out / "student.safetensors").stat().st_size > 0
    assert (out / "agent" / "agent.json").exists()
    history = pd.read_csv(out / "history.csv")
    assert history["student_step"].iloc[-1] == 9


def test_a_flag_that_does_not_apply_to_the_agent_is_an_error(tiny_env_kwargs, tmp_path):
    with pytest.raises(SystemExit, match="does not apply|do\\(es\\) not apply"):
        main(["train", "--agent", "uniform", "--steps", "3", "--learning-rate", "0.1", "--out", str(tmp_path),
              *tiny_flags(tiny_env_kwargs)])


def test_bench_writes_tables_plots_and_resumes_without_duplicates(tiny_env_kwargs, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--agents", "uniform,confidence", "--steps", "6", "--out", str(out), *tiny_flags(tiny_env_kwargs)]
    assert main([*args, "--seeds", "0,1"]) == 0
    first = pd.read_csv(out / "results.csv")
    assert len(first) == 4
    wall_before = first.set_index(["agent", "seed"])["wall_s"]
    # An interrupted bench: rerun with one more seed; only the new cells run, finished ones are kept as they were.
    assert main([*args, "--seeds", "0,1,2"]) == 0
    second = pd.read_csv(out / "results.csv")
    assert len(second) == 6
    assert not second.duplicated(["agent", "seed", "config_hash"]).any()
    pd.testing.assert_series_equal(second.set_index(["agent", "seed"])["wall_s"].loc[wall_before.index], wall_before)
    report = (out / "results.md").read_text()
    assert "95% CI" in report and "p (paired t)" in report and "kd-gym bench" in report
    assert "| confidence |" in report
    for figure in ("curves.png", "weights.png"):
        assert (out / figure).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_adds_the_oracle_row_for_scenarios_that_have_one(tiny_env_kwargs, tmp_path):
    out = tmp_path / "bench"
    assert main(["bench", "--agents", "uniform", "--seeds", "0", "--steps", "4", "--out", str(out),
                 "--scenario", "noisy-teacher", *tiny_flags(tiny_env_kwargs)]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert set(frame["agent"]) == {"uniform", "oracle"}
    assert set(frame["scenario"]) == {"noisy-teacher"}


CUSTOM_AGENT = textwrap.dedent('''
    import numpy as np
    from agents import Agent

    class FirstTeacher(Agent):
        """All weight on teacher 0."""
        name = "first_teacher"

        def predict(self, obs, deterministic=False):
            weights = np.zeros(self.batch_shape, dtype=np.float32)
            weights[:, 0] = 1.0
            return weights
''')


@pytest.mark.parametrize("how", ["module_path", "entry_point"])
def test_a_custom_agent_trains_through_the_cli(how, tiny_env_kwargs, tmp_path):
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_agents.py").write_text(CUSTOM_AGENT)
    name = "my_agents:FirstTeacher"
    if how == "entry_point":  # an installed distribution that declares the entry point, as pip would lay it out
        dist = plugins / "my_agents-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-agents\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text("[kd_gym.agents]\nfirst = my_agents:FirstTeacher\n")
        name = "first"
    env = {**os.environ, "PYTHONPATH": f"{plugins}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "KD_GYM_HOME": os.environ["KD_GYM_HOME"]}
    out = tmp_path / "run"
    completed = subprocess.run([*KD_GYM, "train", "--agent", name, "--steps", "5", "--out", str(out),
                                *tiny_flags(tiny_env_kwargs)], env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["agent"] == name and result["steps"] == 5
    history = pd.read_csv(out / "history.csv")
    weights = history[[c for c in history.columns if c.startswith("weight/")]].iloc[1:]
    assert (weights.iloc[:, 0] == 1.0).all() and (weights.iloc[:, 1:] == 0.0).all().all()
    assert Path(out / "agent" / "agent.json").exists()

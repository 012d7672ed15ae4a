"""The command line end to end on a tiny setup: train, bench (with resume), demo (a bench preset), flags generated
from EnvConfig and the agents' Config classes, custom agents (and their flags) by path and entry point."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
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


def test_a_flag_that_does_not_apply_to_the_agent_is_an_error(tiny_env_kwargs, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--agent", "single:1", "--steps", "3", "--learning-rate", "0.1", "--out", str(tmp_path),
              *tiny_flags(tiny_env_kwargs)])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err
    assert "--learning-rate does not apply to agent(s) single:1" in error
    assert "'single:1' accepts --teacher" in error  # what the agent does take
    assert not (tmp_path / "result.json").exists()


def _subparser(name: str) -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def test_env_flags_are_generated_from_env_config():
    from kd_gym import EnvConfig

    parser = _subparser("train")
    options = {option: action for action in parser._actions for option in action.option_strings}
    for field in EnvConfig.cli_fields():
        if field.name in ("task", "teachers", "episode_steps", "student"):
            continue  # --task, --teachers, --steps, --env
        dashed = "--" + field.name.replace("_", "-")
        assert dashed in options and options[dashed].default is None, field.name
        assert f"--{field.name}" in options  # the spelling W&B sweeps write
    assert "--episode-steps" not in options and "--student" not in options
    assert "--data" not in options and "--task-kwargs" not in options  # Python-only options
    args = parser.parse_args(["--lr", "0.002", "--dev_subset", "7", "--include-representation", "--teachers", "a,b",
                              "--steps", "12"])
    assert (args.lr, args.dev_subset, args.include_representation) == (0.002, 7, True)
    from agents.experiments.common import env_kwargs_from

    kwargs = env_kwargs_from(args)
    assert kwargs == {"lr": 0.002, "dev_subset": 7, "include_representation": True, "task": "tweets",
                      "teachers": ["a", "b"]}
    with pytest.raises(SystemExit):
        parser.parse_args(["--dev-subset", "many"])  # typed from the annotation (int)


def test_bench_writes_tables_plots_and_resumes_without_duplicates(tiny_env_kwargs, tmp_path):
    out = tmp_path / "bench"
    args = ["bench", "--agents", "uniform,confidence", "--steps", "6", "--out", str(out), "--no-oracle",
            *tiny_flags(tiny_env_kwargs)]
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


@pytest.mark.parametrize("scenario", ["default", "noisy-teacher"])
def test_bench_adds_the_oracle_row_and_the_margins(tiny_env_kwargs, tmp_path, scenario):
    out = tmp_path / "bench"
    assert main(["bench", "--agents", "no_kd,uniform", "--seeds", "0", "--steps", "4", "--out", str(out),
                 "--scenario", scenario, *tiny_flags(tiny_env_kwargs)]) == 0
    frame = pd.read_csv(out / "results.csv")
    assert set(frame["agent"]) == {"no_kd", "uniform", "oracle"}
    assert set(frame["scenario"]) == {scenario}
    report = (out / "results.md").read_text()
    means = frame.groupby("agent")["test_metric"].mean() * 100
    expected = f"| per-instance choice pays | oracle - best fixed (uniform) | {means['oracle'] - means['uniform']:+.2f} |"
    assert expected in report and "| distillation pays |" in report


def test_demo_is_a_bench_preset_with_its_own_defaults(tiny_env_kwargs, tmp_path, capsys):
    from agents.experiments.bench import DEMO_DEFAULTS

    defaults = _subparser("demo").parse_args([])
    assert (defaults.agents, defaults.seeds, defaults.out) == (DEMO_DEFAULTS["agents"], "0,1,2", "runs/demo")
    assert defaults.agents.split(",") == ["no_kd", "uniform", "best_teacher", "confidence", "oracle", "gold-router", "ppo"]
    out = tmp_path / "demo"
    args = ["demo", "--agents", "no_kd,uniform", "--seeds", "0", "--steps", "4", "--out", str(out),
            *tiny_flags(tiny_env_kwargs)]
    assert main(args) == 0
    frame = pd.read_csv(out / "results.csv")
    assert set(frame["agent"]) == {"no_kd", "uniform", "oracle"} and set(frame["metric"]) == {"accuracy"}
    report = (out / "results.md").read_text()
    assert report.startswith("# kd-gym demo:") and "test accuracy (%)" in report
    assert f"Command: `kd-gym demo --agents no_kd,uniform --seeds 0 --steps 4 --out {out}" in report
    capsys.readouterr()
    assert main(args) == 0  # resumes like bench: nothing left to run
    assert "3 cells, 3 already done, 0 to run" in capsys.readouterr().err
    assert len(pd.read_csv(out / "results.csv")) == 3


def test_train_student_refuses_a_built_env_of_another_length(tiny_env_kwargs):
    import gymnasium as gym

    from agents.experiments.run import train_student

    env = gym.make("kd_gym/TeacherSelectionLite-v0", **tiny_env_kwargs)  # episode_steps=12
    with pytest.raises(ValueError, match="episode_steps=12 but steps=5"):
        train_student("uniform", steps=5, built_env=env, progress=False)
    assert env.unwrapped.config.episode_steps == 12


CUSTOM_AGENT = textwrap.dedent('''
    import dataclasses

    import numpy as np
    from agents import Agent, AgentConfig


    @dataclasses.dataclass
    class OneTeacherConfig(AgentConfig):
        teacher_index: int = 0
        """the teacher that gets all the weight"""


    class OneTeacher(Agent):
        """All weight on one teacher."""
        name = "one_teacher"
        Config = OneTeacherConfig

        def predict(self, obs, deterministic=False):
            weights = np.zeros(self.batch_shape, dtype=np.float32)
            weights[:, self.config.teacher_index] = 1.0
            return weights
''')


def _plugin_env(tmp_path: Path, entry_point: bool) -> dict:
    """Environment variables under which ``my_agents:OneTeacher`` imports (and, with ``entry_point``, is declared in
    the group kd_gym.agents as ``one``, as pip would lay out an installed distribution)."""
    plugins = tmp_path / "plugins"
    plugins.mkdir()
    (plugins / "my_agents.py").write_text(CUSTOM_AGENT)
    if entry_point:
        dist = plugins / "my_agents-0.1.dist-info"
        dist.mkdir()
        (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-agents\nVersion: 0.1\n")
        (dist / "entry_points.txt").write_text("[kd_gym.agents]\none = my_agents:OneTeacher\n")
    return {**os.environ, "PYTHONPATH": f"{plugins}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "KD_GYM_HOME": os.environ["KD_GYM_HOME"]}


def _teacher_weights(history_csv: Path) -> pd.DataFrame:
    history = pd.read_csv(history_csv)
    return history[[c for c in history.columns if c.startswith("weight/")]].iloc[1:]  # row 0: before any step


@pytest.mark.parametrize("how", ["module_path", "entry_point"])
def test_a_custom_agent_and_its_own_flag_train_through_the_cli(how, tiny_env_kwargs, tmp_path):
    env = _plugin_env(tmp_path, entry_point=how == "entry_point")
    name = "one" if how == "entry_point" else "my_agents:OneTeacher"
    out = tmp_path / "run"
    completed = subprocess.run([*KD_GYM, "train", "--agent", name, "--teacher-index", "1", "--steps", "5",
                                "--out", str(out), *tiny_flags(tiny_env_kwargs)],
                               env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    result = json.loads(completed.stdout.strip().splitlines()[-1])
    assert result["agent"] == name and result["steps"] == 5
    weights = _teacher_weights(out / "history.csv")
    assert (weights.iloc[:, 1] == 1.0).all() and (weights.drop(columns=weights.columns[1]) == 0.0).all().all()
    saved = json.loads((out / "agent" / "agent.json").read_text())
    assert saved["config"]["teacher_index"] == 1
    if how == "entry_point":  # an installed plug-in's flags are listed in --help like a built-in's
        helped = subprocess.run([*KD_GYM, "train", "--help"], env=env, capture_output=True, text=True, timeout=300)
        assert "--teacher-index" in helped.stdout and "[one_teacher]" in helped.stdout
        assert "one" in helped.stdout.split("--agent AGENT")[-1].split("--seed")[0]  # named among the agents


def test_bench_passes_a_custom_agents_flag_only_to_that_agent(tiny_env_kwargs, tmp_path):
    env = _plugin_env(tmp_path, entry_point=False)
    out = tmp_path / "bench"
    base = [*KD_GYM, "bench", "--seeds", "0", "--steps", "4", "--out", str(out), *tiny_flags(tiny_env_kwargs)]
    completed = subprocess.run([*base, "--agents", "uniform,my_agents:OneTeacher", "--teacher-index", "2"],
                               env=env, capture_output=True, text=True, timeout=300)
    assert completed.returncode == 0, completed.stderr[-2000:]
    weights = _teacher_weights(out / "cells" / "my_agents-OneTeacher__0" / "history.csv")
    assert (weights.iloc[:, 2] == 1.0).all()
    uniform = _teacher_weights(out / "cells" / "uniform__0" / "history.csv")
    assert np.allclose(uniform.to_numpy(), 1 / 3)
    # A flag that none of the benched agents has is an error naming the flag and what each agent accepts.
    wrong = subprocess.run([*base, "--agents", "uniform", "--teacher-index", "2"], env=env, capture_output=True,
                           text=True, timeout=300)
    assert wrong.returncode == 2
    assert "unrecognized arguments: --teacher-index 2" in wrong.stderr


# -- resumable runs
class Interrupted(Exception):
    """Stands for a crash of the run between two checkpoints."""


def _crash_at(monkeypatch, step: int):
    """Make runs raise :class:`Interrupted` before their student update number ``step + 1``; returns the undo."""
    from agents.experiments.run import TrainingMonitor

    original = TrainingMonitor.step

    def crashing_step(self, action):
        if self.steps == step:
            raise Interrupted(f"crash at step {step}")
        return original(self, action)

    monkeypatch.setattr(TrainingMonitor, "step", crashing_step)
    return lambda: monkeypatch.setattr(TrainingMonitor, "step", original)


def _last_line(text: str) -> dict:
    """The final JSON line without what differs between any two runs (wall time, run folder)."""
    line = json.loads(text.strip().splitlines()[-1])
    return {k: v for k, v in line.items() if k not in ("wall_s", "out")}


def _same_run_files(a: Path, b: Path) -> None:
    pd.testing.assert_frame_equal(pd.read_csv(a / "history.csv"), pd.read_csv(b / "history.csv"))
    results = [json.loads((folder / "result.json").read_text()) for folder in (a, b)]
    assert [{k: v for k, v in r.items() if k != "wall_s"} for r in results] == [
        {k: v for k, v in results[0].items() if k != "wall_s"}] * 2
    assert (a / "student.safetensors").read_bytes() == (b / "student.safetensors").read_bytes()
    assert (a / "agent" / "state.json").read_text() == (b / "agent" / "state.json").read_text()


@pytest.mark.parametrize("agent", ["uniform", "random", "gold-router"])
def test_an_interrupted_train_resumes_to_the_same_final_line(agent, tiny_env_kwargs, tmp_path, capsys, monkeypatch):
    from agents.checkpoint import load_checkpoint

    # 30 steps in episodes of one run; checkpoints after steps 10 and 20; REINFORCE updates its selector from step
    # 5 on, in windows of 3 steps (reward_interval), so a checkpoint falls inside an open window.
    command = ["train", "--agent", agent, "--seed", "3", "--steps", "30", "--checkpoint-every", "10",
               *tiny_flags(tiny_env_kwargs), *(["--warmup-steps", "5"] if agent == "gold-router" else [])]
    assert main([*command, "--out", str(tmp_path / "straight")]) == 0
    straight = _last_line(capsys.readouterr().out)
    assert not (tmp_path / "straight" / "checkpoint.safetensors").exists()  # removed once the results are written

    out = tmp_path / "interrupted"
    no_more_crashes = _crash_at(monkeypatch, 25)
    with pytest.raises(Interrupted):
        main([*command, "--out", str(out)])
    saved = load_checkpoint(out / "checkpoint.safetensors")
    assert saved["step"] == 20 and saved["config"]["agent"] == agent
    no_more_crashes()
    assert main([*command, "--out", str(out)]) == 0
    assert _last_line(capsys.readouterr().out) == straight
    _same_run_files(tmp_path / "straight", out)
    assert not (out / "checkpoint.safetensors").exists()


def test_an_interrupted_ppo_train_resumes_from_its_checkpoint(tiny_env_kwargs, tmp_path, capsys, monkeypatch):
    """SB3 agents resume approximately (see agents/sb3.py): the run goes on from the checkpoint to the full budget."""
    from agents.checkpoint import load_checkpoint

    out = tmp_path / "ppo"
    command = ["train", "--agent", "ppo", "--n-steps", "4", "--minibatch-size", "48", "--steps", "16",
               "--checkpoint-every", "6", "--out", str(out), *tiny_flags(tiny_env_kwargs)]
    no_more_crashes = _crash_at(monkeypatch, 14)
    with pytest.raises(Interrupted):
        main(command)
    saved = load_checkpoint(out / "checkpoint.safetensors")
    assert saved["step"] == 12 and saved["agent_training"]["num_timesteps"] == 12 * 8  # B sub-envs (the router view)
    no_more_crashes()
    assert main(command) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["steps"] == 16 and 0.0 <= line["test_metric"] <= 1.0
    history = pd.read_csv(out / "history.csv")
    assert history["student_step"].is_monotonic_increasing and history["student_step"].iloc[-1] == 16


def test_a_train_killed_with_sigkill_resumes_in_a_new_process(tiny_env_kwargs, tmp_path, capsys):
    """kill -9 right after step 17 (checkpoints every 5): the rerun redoes steps 16 and 17 and ends the same."""
    command = ["train", "--agent", "gold-router", "--warmup-steps", "4", "--seed", "1", "--steps", "24",
               "--checkpoint-every", "5", *tiny_flags(tiny_env_kwargs)]
    assert main([*command, "--out", str(tmp_path / "straight")]) == 0
    straight = _last_line(capsys.readouterr().out)
    out = tmp_path / "killed"
    kill_at = textwrap.dedent("""
        import os, signal, sys
        from agents.experiments.run import TrainingMonitor
        from kd_gym.cli import main

        step = TrainingMonitor.step

        def step_then_die(self, action):
            result = step(self, action)
            if self.steps == 17:
                os.kill(os.getpid(), signal.SIGKILL)
            return result

        TrainingMonitor.step = step_then_die
        sys.exit(main(sys.argv[1:]))
    """)
    killed = subprocess.run([sys.executable, "-c", kill_at, *command, "--out", str(out)], capture_output=True,
                            text=True, timeout=300)
    assert killed.returncode == -9, killed.stderr[-2000:]
    assert (out / "checkpoint.safetensors").exists() and not (out / "result.json").exists()
    assert not list(out.glob("*.tmp"))
    resumed = subprocess.run([*KD_GYM, *command, "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert _last_line(resumed.stdout) == straight
    _same_run_files(tmp_path / "straight", out)


def test_train_reads_a_custom_task_through_the_task_flags(tiny_csv, tiny_env_kwargs, tmp_path, capsys):
    """A csv whose columns are 'review' and 'sentiment': the task flags name them, through train and bench."""
    frame = pd.read_csv(tiny_csv).rename(columns={"text": "review", "label": "sentiment"})
    csv = tmp_path / "reviews.csv"
    frame.to_csv(csv, index=False)
    flags = tiny_flags({**tiny_env_kwargs, "task": str(csv)})
    assert main(["train", "--steps", "4", "--out", str(tmp_path / "plain"), *flags]) == 2
    assert "column 'text' is missing" in capsys.readouterr().err  # without the flags: a one-line error
    custom = ["--text-column", "review", "--label-column", "sentiment"]
    assert main(["train", "--steps", "4", "--out", str(tmp_path / "run"), *flags, *custom]) == 0
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["task"] == str(csv) and line["steps"] == 4 and 0.0 <= line["test_metric"] <= 1.0
    assert main(["bench", "--agents", "uniform", "--seeds", "0", "--steps", "3", "--out", str(tmp_path / "bench"),
                 "--no-oracle", *flags, *custom]) == 0
    assert len(pd.read_csv(tmp_path / "bench" / "results.csv")) == 1


def test_an_agent_whose_learn_takes_no_resume_trains_unchecked(tiny_env_kwargs, tmp_path, capsys, monkeypatch):
    import agents

    class OldStyle(agents.Agent):
        """A plug-in written before learn() took ``resume``: it loops by itself."""

        name = "old_style"

        def predict(self, obs, deterministic=False):
            return np.ones(self.batch_shape, np.float32)

        def learn(self, total_steps, callback=None):
            obs, _ = self.env.reset(seed=self.config.seed)
            for _ in range(total_steps):
                obs, *_ = self.env.step(self.predict(obs))
            return self

    monkeypatch.setitem(agents._REGISTERED, "old_style", OldStyle)
    out = tmp_path / "run"
    assert main(["train", "--agent", "old_style", "--steps", "6", "--checkpoint-every", "2", "--out", str(out),
                 *tiny_flags(tiny_env_kwargs)]) == 0
    captured = capsys.readouterr()
    assert "agent 'old_style' is not checkpointed: its learn() takes no 'resume'" in captured.err
    assert json.loads(captured.out.strip().splitlines()[-1])["steps"] == 6
    assert not (out / "checkpoint.safetensors").exists()

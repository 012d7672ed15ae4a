"""Every sweep file, offline: the W&B sweep schema, real flags, the logged metric, and a command that runs.

The schema is checked by the ``sweeps`` package (the engine behind W&B sweeps); the command is built with wandb's
own helpers for ``${args_no_boolean_flags}`` from one parameter set sampled by ``sweeps.next_run``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import struct
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kd_gym import EnvConfig
from kd_gym.cli import build_parser

SWEEPS = sorted((Path(__file__).parents[1] / "sweeps").glob("*.yaml"))


def test_the_required_sweeps_exist():
    assert {p.stem for p in SWEEPS} >= {"reinforce", "ppo", "kd"}


def _train_parser() -> argparse.ArgumentParser:
    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices["train"]


def _options(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    return {option: action for action in parser._actions for option in action.option_strings}


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_sweep_file_is_valid_and_its_parameters_are_real_flags(path):
    from agents.experiments.sweep_check import check_sweep
    from sweeps import schema_violations_from_proposed_config

    config = yaml.safe_load(path.read_text())
    assert schema_violations_from_proposed_config(config) == []
    assert check_sweep(path) == config  # the checker kd-gym ships agrees (its refusals: tests/test_bad_inputs.py)
    assert {"program", "method", "metric", "parameters", "command"} <= set(config)
    assert "${args_no_boolean_flags}" in config["command"]
    options = _options(_train_parser())
    agent = config["command"][config["command"].index("--agent") + 1]
    from agents import resolve

    agent_fields = {f for f in resolve(agent)[0].Config.__dataclass_fields__}
    env_options = {f.name for f in EnvConfig.cli_fields()}
    for name, spec in config["parameters"].items():
        assert f"--{name}" in options, f"{path.name}: parameter {name!r} is not a flag of kd-gym train"
        assert name in agent_fields or name in env_options, f"{path.name}: {name!r} does not apply to {agent!r}"
        values = spec.get("values", [])
        if any(isinstance(v, bool) for v in values):
            # ${args_no_boolean_flags} omits false booleans, so false must be the flag's default
            assert options[f"--{name}"].default in (None, False), f"{name}: a swept boolean must default to false"


def test_the_sweep_checker_refuses_tuning_on_the_test_split(tmp_path):
    from agents.experiments.sweep_check import check_sweep, main

    config = yaml.safe_load((Path(__file__).parents[1] / "sweeps" / "kd.yaml").read_text())
    path = tmp_path / "on_test.yaml"
    path.write_text(yaml.safe_dump({**config, "metric": {"name": "test_metric", "goal": "maximize"}}))
    with pytest.raises(ValueError, match=r"metric 'test_metric' cannot be swept \(tuning on it would select on the "
                                         r"test split\); use one the run logs: dev_metric"):
        check_sweep(path)
    assert main([str(p) for p in SWEEPS]) == 0 and main([str(path)]) == 1


def read_offline_summary(path: Path) -> dict:
    """The summary of an offline W&B run, read from its ``run-*.wandb`` file.

    The file is wandb's record log (LevelDB log format after a 7-byte ``:W&B`` header: 32 KiB blocks of records with
    a 7-byte header crc32 / length / type), each record a ``wandb_internal_pb2.Record``.
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    summary, position, block, pending = {}, 7, 32768, b""
    while position + 7 <= len(data):
        left = block - position % block
        if left < 7:  # block trailer padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position:position + 7])
        chunk = data[position + 7:position + 7 + length]
        position += 7 + length
        if kind == 0:
            continue
        pending = chunk if kind in (1, 2) else pending + chunk  # 1 full, 2 first, 3 middle, 4 last
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            if record.WhichOneof("record_type") == "summary":
                for item in record.summary.update:
                    summary[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
    return summary


def _wandb_command(config: dict, run_config: dict) -> list[str]:
    """The command wandb agent would run for ``run_config`` (see wandb/wandb_agent.py)."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    variables = create_sweep_command_args({"args": run_config})
    variables.update(interpreter=[sys.executable], program=[config["program"]], env=["/usr/bin/env"])
    command = []
    for chunk in create_sweep_command(config["command"]):
        chunk = str(chunk)
        command += variables.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return command


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.stem)
def test_the_command_wandb_would_run_logs_the_metric(path, tiny_env_kwargs, tmp_path):
    from sweeps import SweepConfig, next_run

    config = yaml.safe_load(path.read_text())
    run = next_run(SweepConfig(config), runs=[])
    command = _wandb_command(config, run.config)
    assert command[:4] == ["/usr/bin/env", sys.executable, "-m", "kd_gym.cli"]
    for name, value in run.config.items():
        if value["value"] is True:
            assert f"--{name}" in command
        elif value["value"] is not False:
            assert f"--{name}={value['value']}" in command
    # The sampled command as W&B would run it, pointed at a tiny task and pool and a short budget.
    kw = tiny_env_kwargs
    tiny = ["--task", kw["task"], "--teachers", ",".join(kw["teachers"]), "--student-checkpoint",
            kw["student_checkpoint"], "--batch-size", "8", "--dev-subset", "20", "--max-length", "16",
            "--device", "cpu", "--steps", "6", "--out", str(tmp_path / "run")]
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
    completed = subprocess.run(command + tiny, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    runs = list(tmp_path.rglob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, "the run did not log to W&B offline"
    summary = read_offline_summary(runs[0])
    assert config["metric"]["name"] in summary
    assert 0.0 <= summary[config["metric"]["name"]] <= 1.0


def _tiny_bench_flags(kw: dict) -> list[str]:
    return ["--task", kw["task"], "--teachers", ",".join(kw["teachers"]), "--student-checkpoint",
            kw["student_checkpoint"], "--batch-size", "8", "--dev-subset", "20", "--max-length", "16",
            "--device", "cpu", "--reward-interval", "3", "--steps", "6"]


def test_a_bench_grid_runs_as_a_sweep_one_cell_per_run_and_reports_as_one_bench(tiny_env_kwargs, tmp_path, capsys):
    """kd-gym bench --emit-sweep: a grid sweep that the checker and W&B's schema accept, whose W&B command runs one
    cell into its own folder and logs the metric; kd-gym report over the cells gives the single-machine report."""
    from agents.experiments.sweep_check import check_sweep
    from kd_gym.cli import main
    from sweeps import SweepConfig, next_run, schema_violations_from_proposed_config

    out, sweep = tmp_path / "grid", tmp_path / "grid.yaml"
    bench = ["bench", "--agents", "uniform,reinforce", "--seeds", "0,1", "--learning-rate", "0.05",
             *_tiny_bench_flags(tiny_env_kwargs)]
    assert main([*bench, "--out", str(out), "--emit-sweep", str(sweep)]) == 0
    assert not out.exists()  # emitting runs nothing
    config = yaml.safe_load(sweep.read_text())
    assert schema_violations_from_proposed_config(config) == []
    assert check_sweep(sweep) == config
    assert config["method"] == "grid" and config["metric"]["name"] == "dev_metric"
    cells = config["parameters"]["cell"]["values"]
    assert cells == ["uniform@0", "uniform@1", "reinforce@0", "reinforce@1", "oracle@0", "oracle@1"]
    assert "--emit-sweep" not in config["command"] and "--learning-rate" in config["command"]

    # The first run of the grid, as wandb agent would start it.
    run = next_run(SweepConfig(config), runs=[])
    command = _wandb_command(config, run.config)
    assert command[-1] == "--cell=uniform@0"
    env = {**os.environ, "WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_DIR": str(tmp_path)}
    completed = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert completed.returncode == 0, completed.stderr[-3000:]
    cell = out / "cells" / "uniform__0"
    row = pd.read_csv(cell / "results.csv")
    assert row[["agent", "seed", "scenario"]].values.tolist() == [["uniform", 0, "default"]]
    assert not (out / "results.csv").exists()  # cells never write the shared table
    summary = read_offline_summary(next(tmp_path.rglob("offline-run-*/run-*.wandb")))
    assert summary[config["metric"]["name"]] == pytest.approx(row["dev_metric"].iloc[0], abs=1e-6)

    # The other runs (in this process, as other machines would), then one report over the folder.
    for value in cells[1:]:
        assert main([*bench, "--out", str(out), "--cell", value]) == 0
    assert main([*bench, "--out", str(out), "--cell", "uniform@0"]) == 0  # done: not run again
    assert "cell uniform@0 already done" in capsys.readouterr().err
    assert main(["report", str(out), "--out", str(out)]) == 0
    single = tmp_path / "single"
    assert main([*bench, "--out", str(single)]) == 0
    # the same numbers in the same order; only the command and the wall-clock column (s / cell) differ
    def strip(text: str) -> list[str]:  # drops the wall column, last or before the training-cost column
        wall = r"\| [\d.]+ \|(?P<cost> [\d,]+ \|)?$"
        return [re.sub(wall, lambda m: "|" + (m.group("cost") or ""), line) for line in text.splitlines()
                if not line.startswith("Command: ")]

    assert strip((out / "results.md").read_text()) == strip((single / "results.md").read_text())

    # a cell outside the grid is refused before anything runs
    assert main([*bench, "--out", str(out), "--cell", "uniform@7"]) == 2
    assert "--cell uniform@7: seed 7 is not one of --seeds 0,1" in capsys.readouterr().err
    assert not (out / "cells" / "uniform__7").exists()


@pytest.mark.parametrize("change, message", [
    (lambda c: c["parameters"]["cell"]["values"].append("ppo@0"), r"cell 'ppo@0' is not in the command's grid"),
    (lambda c: c["parameters"].update(seed={"values": [3]}), r"a bench grid sweeps one parameter, 'cell'"),
    (lambda c: c["command"].insert(-1, "--no-such-flag"), r"flags do not parse: .*--no-such-flag"),
    (lambda c: c["metric"].update(name="test_metric"), r"metric 'test_metric' is not logged by a bench cell"),
])
def test_the_sweep_checker_refuses_a_broken_bench_grid(change, message, tmp_path):
    from agents.experiments.sweep_check import check_sweep

    config = {"program": "kd_gym/cli.py", "method": "grid", "metric": {"name": "dev_metric", "goal": "maximize"},
              "parameters": {"cell": {"values": ["uniform@0", "oracle@1"]}},
              "command": ["${env}", "${interpreter}", "-m", "kd_gym.cli", "bench", "--agents", "uniform,oracle",
                          "--seeds", "0,1", "--out", "runs/grid", "--track", "${args}"]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(config))
    assert check_sweep(path) == config
    change(config)
    path.write_text(yaml.safe_dump(config))
    with pytest.raises(ValueError, match=message):
        check_sweep(path)


def test_kd_gym_sweep_runs_a_sweep_file_locally_and_continues(tiny_env_kwargs, tmp_path):
    """kd-gym sweep: W&B's search proposes each run, the command is the one wandb agent would run, a grid stops when
    it is done, and a second call continues from sweep.csv."""
    import shlex

    from agents.experiments.sweep_local import run_sweep

    sweep = {"program": "kd_gym/cli.py", "method": "grid", "metric": {"name": "dev_metric", "goal": "maximize"},
             "parameters": {"learning_rate": {"values": [0.001, 0.05]}},
             "command": ["${env}", "${interpreter}", "-m", "kd_gym.cli", "train", "--agent", "gold-router", "--steps",
                         "6", "${args}"]}
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(sweep))
    extra = _tiny_bench_flags(tiny_env_kwargs)[:-2] + ["--out", str(tmp_path / "run")]
    first = run_sweep(path, 1, tmp_path / "sweep", extra)
    assert len(first) == 1
    second = run_sweep(path, 5, tmp_path / "sweep", extra)  # one grid point left: it stops after it
    assert sorted(second["learning_rate"]) == [0.001, 0.05]
    assert second["dev_metric"].between(0, 1).all()
    for command, rate in zip(second["command"], second["learning_rate"]):
        assert f"--learning_rate={rate}" in shlex.split(command)
    table = [line for line in (tmp_path / "sweep" / "sweep.md").read_text().splitlines() if line.startswith("| 0.")]
    best = second.loc[second["dev_metric"].idxmax()]
    assert table[0].startswith(f"| {best['learning_rate']} | {best['dev_metric']} |")  # ranked best first


def test_the_recorded_reinforce_paper_choices_are_real_flags_with_the_recorded_values():
    from agents.reinforce_paper import PaperReinforceConfig as ReinforceConfig

    path = Path(__file__).parents[1] / "agents" / "hyperparams" / "reinforce-paper.yml"
    recorded = yaml.safe_load(path.read_text())
    parser, agent_fields = _train_parser(), set(ReinforceConfig.__dataclass_fields__)
    env_options = {f.name for f in EnvConfig.cli_fields()}
    sets = [entry for per_env in recorded.values() for entry in per_env.values()]
    assert sets, "no recorded set"
    for entry in sets:
        assert entry["found_by"].startswith("kd-gym sweep sweeps/") and Path(
            Path(__file__).parents[1], entry["found_by"].split()[2]).is_file()
        assert set(entry["env"]) <= env_options and set(entry["agent"]) <= agent_fields
        args = vars(parser.parse_args(["--agent", "reinforce-paper", *entry["flags"].split()]))
        for name, value in {**entry["env"], **entry["agent"]}.items():
            assert args[name] == value, f"{entry['flags']!r} sets {name}={args[name]!r}, the file says {value!r}"
        set_by_flags = {flag.removeprefix("--").replace("-", "_") for flag in entry["flags"].split()
                        if flag.startswith("--")}
        assert set_by_flags == set(entry["env"]) | set(entry["agent"])


def test_a_sweep_records_each_run_as_it_ends_and_goes_on_after_a_failed_one(monkeypatch, tmp_path):
    """kd-gym sweep writes each run to sweep.csv when it ends; a run that fails is recorded with its error (its last
    stderr line) and the next one runs. The runs are stand-ins for kd-gym train (its exit code and output)."""
    from agents.experiments import sweep_local
    from kd_gym.cli import main

    out, path = tmp_path / "sweep", tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump({
        "program": "kd_gym/cli.py", "method": "grid", "metric": {"name": "dev_metric", "goal": "maximize"},
        "parameters": {"temperature": {"values": [-1.0, 2.0]}},
        "command": ["${env}", "${interpreter}", "-m", "kd_gym.cli", "train", "--agent", "uniform", "${args}"]}))
    recorded_before: list[int] = []

    def run(command, **kwargs):
        recorded_before.append(len(pd.read_csv(out / "sweep.csv")) if (out / "sweep.csv").exists() else 0)
        if "--temperature=-1.0" in command:
            return subprocess.CompletedProcess(command, 2, "", "kd-gym train: error: --temperature -1.0 is invalid; "
                                                               "use a number > 0\n")
        return subprocess.CompletedProcess(command, 0, 'note\n{"dev_metric": 0.61, "test_metric": 0.6, "wall_s": 1.5}\n',
                                           "")

    monkeypatch.setattr(sweep_local.subprocess, "run", run)
    assert main(["sweep", str(path), "--count", "5", "--out", str(out)]) == 0  # a grid of 2: it stops after them
    assert recorded_before == [0, 1]  # the failed run was on disk before the next one started
    rows = pd.read_csv(out / "sweep.csv")
    assert rows["temperature"].tolist() == [-1.0, 2.0] and rows["status"].tolist() == ["failed", "finished"]
    assert rows["error"][0] == "exit 2: kd-gym train: error: --temperature -1.0 is invalid; use a number > 0"
    assert pd.isna(rows["dev_metric"][0]) and rows["dev_metric"][1] == 0.61
    report = (out / "sweep.md").read_text()
    assert "(1 runs, ranked by dev_metric" in report and "| 2.0 | 0.61 | 0.6 | 1.5 |" in report
    assert "## 1 failed run(s)" in report and "| -1.0 | exit 2: kd-gym train: error: --temperature -1.0" in report
    assert main(["sweep", str(path), "--count", "1", "--out", str(out)]) == 0 and len(recorded_before) == 2  # done

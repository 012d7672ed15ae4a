"""Every sweep file, offline: the W&B sweep schema, real flags, the logged metric, and a command that runs.

The schema is checked by the ``sweeps`` package (the engine behind W&B sweeps); the command is built with wandb's
own helpers for ``${args_no_boolean_flags}`` from one parameter set sampled by ``sweeps.next_run``.
"""

from __future__ import annotations

import argparse
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

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

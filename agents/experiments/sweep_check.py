"""Check a W&B sweep file against the command it drives, before a sweep spends hours on runs that fail.

    python -m agents.experiments.sweep_check sweeps/*.yaml

A sweep file (``program``, ``method``, ``metric``, ``parameters``, ``command``) must run ``kd-gym train`` with its
parameters passed through ``${args}`` or ``${args_no_boolean_flags}``; every parameter must be a flag of
``kd-gym train`` that applies to the swept agent (one of its ``Config`` fields, an env option or a task option),
and the metric must be a dev-split key of the result the run logs (:func:`sweep_metrics`: ``dev_metric``; tuning
on ``test_metric`` would select on the test split, which agents never see).
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import difflib
import io
import sys
from pathlib import Path
from typing import Any

import yaml

from agents.experiments.cells import SWEEP_PARAMETER, parse_cell
from agents.experiments.cells import split_list as _split

REQUIRED_KEYS = ("program", "method", "metric", "parameters", "command")
ARGS_MACROS = ("${args}", "${args_no_boolean_flags}")


def sweep_metrics() -> list[str]:
    """The keys a sweep may select on: the dev-split numbers of a run's result (the ``dev_*`` fields of
    :class:`~agents.experiments.run.RunResult`), which ``kd-gym train`` prints in its JSON result line (what
    ``kd-gym sweep`` reads) and logs to its W&B summary (what ``wandb agent`` reads). A key the run logs only now
    and then (``agent/...``, per dev record) is not in that line, so a local sweep could not read it."""
    from agents.experiments.run import RunResult

    return [f.name for f in dataclasses.fields(RunResult) if f.name.startswith("dev_")]


def _check_metric(path: Path, config: dict, allowed: list[str]) -> None:
    metric = (config["metric"] or {}).get("name", "")
    if metric not in allowed:
        why = (" (tuning on it would select on the test split)" if metric == "test_metric" else
               " (it is not a key of the result kd-gym train logs: its JSON line and W&B summary)")
        raise ValueError(f"{path}: metric {metric!r} cannot be swept{why}; use one the run logs: {', '.join(allowed)}")


def subcommand_parser(name: str) -> argparse.ArgumentParser:
    """The parser of ``kd-gym NAME`` (``train``, ``bench``, ``demo``, ...), as the CLI builds it."""
    from kd_gym.cli import build_parser

    commands = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return commands.choices[name]


def check_bench_grid(path: Path, config: dict) -> dict:
    """Check a bench-grid sweep (:func:`agents.experiments.grid.sweep_config`): the command runs ``kd-gym bench`` (or ``demo``) with flags
    that parse, ends with ``${args}``, the only parameter is ``cell`` and each of its values is a cell of the
    command's ``--agents`` x ``--seeds``, and the metric is one the run logs. Called by
    :func:`check_sweep`.

    :raises ValueError: naming the file, what is wrong and what to write instead.
    """
    command = [str(part) for part in config["command"]]
    name = next(part for part in command if part in ("bench", "demo"))
    if command[-1] not in ARGS_MACROS:
        raise ValueError(f"{path}: a bench grid's command must end with ${{args}}, which W&B replaces with "
                         f"--cell=AGENT@SEED; got {command[-1]!r}")
    parameters = config["parameters"] or {}
    if set(parameters) != {SWEEP_PARAMETER} or not parameters[SWEEP_PARAMETER].get("values"):
        raise ValueError(f"{path}: a bench grid sweeps one parameter, {SWEEP_PARAMETER!r}, with values AGENT@SEED; "
                         f"got {sorted(parameters)} (write it with kd-gym bench ... --emit-sweep FILE)")
    flags = command[command.index(name) + 1:-1]
    errors = io.StringIO()
    try:
        with contextlib.redirect_stderr(errors):
            args = subcommand_parser(name).parse_args(flags)
    except SystemExit:
        message = errors.getvalue().strip().splitlines()
        raise ValueError(f"{path}: the command's kd-gym {name} flags do not parse: "
                         f"{message[-1] if message else flags}") from None
    agents = _split(args.agents) + (["oracle"] if args.oracle_row and "oracle" not in _split(args.agents) else [])
    seeds = [int(s) for s in _split(args.seeds)]
    for value in parameters[SWEEP_PARAMETER]["values"]:
        agent, seed = parse_cell(str(value))
        if agent not in agents or seed not in seeds:
            raise ValueError(f"{path}: cell {value!r} is not in the command's grid --agents {','.join(agents)} x "
                             f"--seeds {args.seeds}; add it there or drop the cell")
    metric = (config["metric"] or {}).get("name", "")
    if metric not in sweep_metrics():
        raise ValueError(f"{path}: metric {metric!r} is not logged by a bench cell; use {', '.join(sweep_metrics())}")
    return config


def _applicable_fields(agent: str) -> set[str]:
    """The sweepable names for ``agent``: its Config fields, the env options and the task options."""
    from agents import resolve
    from kd_gym.config import EnvConfig
    from kd_gym.tasks import TaskOptions

    agent_class, _ = resolve(agent)
    return ({f.name for f in dataclasses.fields(agent_class.Config)} | {f.name for f in EnvConfig.cli_fields()}
            | {f.name for f in dataclasses.fields(TaskOptions)})


def check_sweep(path: str | Path) -> dict[str, Any]:
    """The sweep config of ``path``, checked (see the module docstring).

    :raises ValueError: naming the file, the bad key or parameter and what to write instead.
    """
    path = Path(path)
    try:
        config = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(config, dict):
        raise ValueError(f"{path}: expected a mapping with keys {list(REQUIRED_KEYS)}, got {type(config).__name__}")
    missing = [key for key in REQUIRED_KEYS if key not in config]
    if missing:
        raise ValueError(f"{path}: missing key(s) {missing}; a sweep file needs {list(REQUIRED_KEYS)}")
    command = [str(part) for part in config["command"]]
    if "train" not in command and ("bench" in command or "demo" in command):  # kd-gym bench --emit-sweep
        return check_bench_grid(path, config)
    if "train" not in command or not any(macro in command for macro in ARGS_MACROS):
        raise ValueError(f"{path}: the command must run `kd-gym train` and pass the parameters with one of "
                         f"{list(ARGS_MACROS)}; got {command}")
    if "--agent" not in command[:-1]:
        raise ValueError(f"{path}: the command names no agent; add `--agent <name>` (e.g. reinforce) to it")
    agent = command[command.index("--agent") + 1]
    try:
        applicable = _applicable_fields(agent)
    except ValueError as error:  # an unknown agent name or path
        raise ValueError(f"{path}: {error}") from error
    options = {option for action in subcommand_parser("train")._actions for option in action.option_strings}
    # a plug-in agent (module:Class) gets its Config fields as flags once named, like the built-ins
    options |= {f"--{name}" for name in applicable} | {f"--{name.replace('_', '-')}" for name in applicable}
    for name in config["parameters"] or {}:
        if f"--{name}" not in options:
            close = difflib.get_close_matches(f"--{name}", sorted(options), n=1)
            hint = f"; did you mean {close[0].removeprefix('--')!r}?" if close else ""
            raise ValueError(f"{path}: parameter {name!r} is not a flag of kd-gym train{hint} (sweep parameters are "
                             "flag names with underscores, e.g. learning_rate; see kd-gym train --help)")
        if name not in applicable and name not in {"steps", "seed", "env", "task", "teachers"}:
            raise ValueError(f"{path}: parameter {name!r} does not apply to agent {agent!r}; sweep its own "
                             "hyperparameters, env options or task options")
    _check_metric(path, config, sweep_metrics())
    return config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Check W&B sweep files against kd-gym train.")
    parser.add_argument("files", nargs="+", type=Path, help="sweep YAML files")
    args = parser.parse_args(argv)
    failed = 0
    for path in args.files:
        try:
            check_sweep(path)
            print(f"ok: {path}")
        except (ValueError, OSError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

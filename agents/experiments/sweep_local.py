"""Run a W&B sweep file on this machine, without a W&B server: ``kd-gym sweep``.

W&B's own search code (the ``sweeps`` package, which the W&B server runs) proposes each run's parameters from the
runs so far (grid, random or bayes, as the file says); the command is built as ``wandb agent`` builds it from the
file's ``command``; it runs with W&B offline; the metric is read from the JSON line that ``kd-gym train`` prints.
The same file then runs unchanged under ``wandb sweep`` + ``wandb agent`` where a server is reachable.

    kd-gym sweep sweeps/reinforce.yaml --count 12 --out runs/sweep-reinforce

Every finished run is appended to ``OUT/sweep.csv`` at once (parameters, metric, the command), so a killed sweep
continues where it stopped when run again with the same ``--out``; ``OUT/sweep.md`` ranks the runs by the metric.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import pandas as pd


def wandb_command(config: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The command ``wandb agent`` runs for a sweep file's ``config`` and one run's ``params`` ({name: value})."""
    from wandb.sdk.launch.sweeps.utils import create_sweep_command, create_sweep_command_args

    variables = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    variables.update(interpreter=[sys.executable], program=[config["program"]], env=["/usr/bin/env"])
    command: list[str] = []
    for chunk in create_sweep_command(config["command"]):
        chunk = str(chunk)
        command += variables.get(chunk[2:-1], []) if chunk.startswith("${") and chunk.endswith("}") else [chunk]
    return command


def _result_line(stdout: str) -> dict[str, Any]:
    """The last JSON object line of a run's output (``kd-gym train`` prints one)."""
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            return json.loads(line)
    raise ValueError(f"the run printed no JSON result line; its output ended with: {stdout[-500:]!r}")


def run_sweep(path: str | Path, count: int, out: str | Path, extra: list[str] | None = None) -> pd.DataFrame:
    """Run ``count`` more runs of the sweep file ``path`` (checked first); return every run recorded in ``out``.

    :param extra: arguments appended to every command (e.g. ``--steps 500``), recorded with the run.
    """
    from agents.experiments.sweep_check import check_sweep
    from sweeps import RunState, SweepConfig, SweepRun, next_run

    config = check_sweep(path)
    metric, goal = config["metric"]["name"], config["metric"].get("goal", "maximize")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "sweep.csv"
    rows = pd.read_csv(csv).to_dict("records") if csv.exists() else []
    names = list(config["parameters"])
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_DIR": str(out)}
    for index in range(count):
        history = [SweepRun(name=f"run-{i}", state=RunState.finished, config={n: {"value": r[n]} for n in names},
                            summary_metrics={metric: r[metric]}) for i, r in enumerate(rows)]
        proposal = next_run(SweepConfig(config), history, validate=True)
        if proposal is None:  # a grid that is done
            print(f"kd-gym sweep: the grid of {path} is done ({len(rows)} runs)", file=sys.stderr)
            break
        params = {name: value["value"] for name, value in proposal.config.items()}
        command = wandb_command(config, params) + list(extra or [])
        print(f"[{index + 1}/{count}] {shlex.join(command)}", file=sys.stderr)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise RuntimeError(f"sweep run failed (exit {done.returncode}): {shlex.join(command)}\n{done.stderr[-3000:]}")
        result = _result_line(done.stdout)
        rows.append({**params, metric: result[metric],
                     **{k: result[k] for k in ("test_metric", "wall_s") if k in result and k != metric},
                     "command": shlex.join(command)})
        pd.DataFrame(rows).to_csv(csv, index=False)
        print(f"    {metric} = {result[metric]:.4f}", file=sys.stderr)
    frame = pd.DataFrame(rows)
    if not frame.empty:
        ranked = frame.sort_values(metric, ascending=goal == "minimize")
        columns = [*names, metric, *(c for c in ("test_metric", "wall_s") if c in frame and c != metric)]
        lines = [f"# Sweep {path} ({len(frame)} runs, ranked by {metric}, {goal})", "",
                 "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
                 *("| " + " | ".join(str(row[c]) for c in columns) + " |" for _, row in ranked.iterrows()),
                 "", f"Best: `{ranked.iloc[0]['command']}`", ""]
        (out / "sweep.md").write_text("\n".join(lines))
        print("\n".join(lines))
    return frame


def sweep(args: argparse.Namespace) -> int:
    """``kd-gym sweep``."""
    run_sweep(args.file, args.count, args.out, shlex.split(args.extra) if args.extra else None)
    return 0


def add_sweep_command(commands: argparse._SubParsersAction) -> None:
    """``kd-gym sweep``: a W&B sweep file run locally (no server)."""
    from agents.experiments.flags import positive_int

    parser = commands.add_parser(
        "sweep", help="run a W&B sweep file on this machine, without a W&B server",
        description=__doc__.split("\n\n")[1])
    parser.add_argument("file", help="the sweep file (sweeps/*.yaml); checked first (agents.experiments.sweep_check)")
    parser.add_argument("--count", type=positive_int, default=10, help="runs to add (a grid stops when it is done)")
    parser.add_argument("--out", default="runs/sweep", help="folder of sweep.csv / sweep.md (rerun to continue)")
    parser.add_argument("--extra", default="", help="arguments appended to every run's command, e.g. '--steps 500'")
    parser.set_defaults(func=sweep)

"""Run a W&B sweep file on this machine, without a W&B server: ``kd-gym sweep``.

W&B's own search code (the ``sweeps`` package, which the W&B server runs) proposes each run's parameters from the
runs so far (grid, random or bayes, as the file says); the command is built as ``wandb agent`` builds it from the
file's ``command``; it runs with W&B offline; the metric is read from the JSON line that ``kd-gym train`` prints.
The same file then runs unchanged under ``wandb sweep`` + ``wandb agent`` where a server is reachable.

    kd-gym sweep sweeps/reinforce.yaml --count 12 --out runs/sweep-reinforce

Every run is appended to ``OUT/sweep.csv`` as soon as it ends (parameters, metric, status, the command), so a
killed sweep continues where it stopped when run again with the same ``--out``. A run that fails (a non-zero exit, or
no metric in its result line) is recorded with ``status`` ``failed`` and its error, and the sweep goes on (W&B's
search counts it as a failed run); ``OUT/sweep.md`` ranks the finished runs by the metric and lists the failed ones.
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


def _run_metrics(done: subprocess.CompletedProcess, metric: str) -> dict[str, Any]:
    """The metric (and ``test_metric``, ``wall_s``) of a finished run.

    :raises ValueError: for a run that failed: its exit code and last error line, or what its result line lacks.
    """
    if done.returncode != 0:
        lines = [line for line in (done.stderr or "").strip().splitlines() if line.strip()]
        raise ValueError(f"exit {done.returncode}: {lines[-1].strip() if lines else 'no error output'}")
    result = _result_line(done.stdout)
    if not isinstance(result.get(metric), (int, float)):
        raise ValueError(f"the run's result line has no number {metric!r} (its keys: {sorted(result)})")
    return {metric: result[metric], **{k: result[k] for k in ("test_metric", "wall_s") if k in result and k != metric}}


def _history(rows: list[dict], names: list[str], metric: str) -> list:
    """The runs so far as W&B's search sees them: finished with their metric, or failed."""
    from sweeps import RunState, SweepRun

    return [SweepRun(name=f"run-{i}", config={n: {"value": r[n]} for n in names},
                     state=RunState.failed if r.get("status") == "failed" else RunState.finished,
                     summary_metrics={} if r.get("status") == "failed" else {metric: r[metric]})
            for i, r in enumerate(rows)]


def _read_sweep_csv(csv: Path) -> list[dict]:
    """The runs recorded in ``csv`` (a file from before ``status`` existed holds finished runs only)."""
    if not csv.exists():
        return []
    frame = pd.read_csv(csv, keep_default_na=False, na_values=[""])
    if "status" not in frame:
        frame["status"] = "finished"
    return frame.to_dict("records")


def run_sweep(path: str | Path, count: int, out: str | Path, extra: list[str] | None = None) -> pd.DataFrame:
    """Run ``count`` more runs of the sweep file ``path`` (checked first); return every run recorded in ``out``.

    :param extra: arguments appended to every command (e.g. ``--steps 500``), recorded with the run.
    """
    from agents.experiments.cells import write_atomic
    from agents.experiments.sweep_check import check_sweep
    from sweeps import SweepConfig, next_run

    config = check_sweep(path)
    metric, goal = config["metric"]["name"], config["metric"].get("goal", "maximize")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "sweep.csv"
    rows = _read_sweep_csv(csv)
    names = list(config["parameters"])
    env = {**os.environ, "WANDB_MODE": os.environ.get("WANDB_MODE", "offline"), "WANDB_DIR": str(out)}
    for index in range(count):
        proposal = next_run(SweepConfig(config), _history(rows, names, metric), validate=True)
        if proposal is None:  # a grid that is done
            print(f"kd-gym sweep: the grid of {path} is done ({len(rows)} runs)", file=sys.stderr)
            break
        params = {name: value["value"] for name, value in proposal.config.items()}
        command = wandb_command(config, params) + list(extra or [])
        print(f"[{index + 1}/{count}] {shlex.join(command)}", file=sys.stderr)
        done = subprocess.run(command, env=env, capture_output=True, text=True)
        try:
            row = {**params, **_run_metrics(done, metric), "status": "finished", "error": ""}
            print(f"    {metric} = {row[metric]:.4f}", file=sys.stderr)
        except ValueError as error:  # recorded, and the sweep goes on
            row = {**params, metric: float("nan"), "status": "failed", "error": str(error)[:1000]}
            print(f"    failed: {row['error']}", file=sys.stderr)
        rows.append({**row, "command": shlex.join(command)})
        write_atomic(csv, pd.DataFrame(rows).to_csv(index=False))
    frame = pd.DataFrame(rows)
    if not frame.empty:
        (out / "sweep.md").write_text(sweep_table(frame, path, names, metric, goal))
        print((out / "sweep.md").read_text())
    return frame


def sweep_table(frame: pd.DataFrame, path: str | Path, names: list[str], metric: str, goal: str) -> str:
    """``sweep.md``: the finished runs ranked by ``metric`` (best first) and the best command; then the failed
    runs with their errors."""
    failed = frame[frame["status"] == "failed"] if "status" in frame else frame.iloc[:0]
    finished = frame.drop(index=failed.index).sort_values(metric, ascending=goal == "minimize")
    columns = [*names, metric, *(c for c in ("test_metric", "wall_s") if c in frame and c != metric)]
    lines = [f"# Sweep {path} ({len(finished)} runs, ranked by {metric}, {goal})", "",
             "| " + " | ".join(columns) + " |", "|" + "---|" * len(columns),
             *("| " + " | ".join(str(row[c]) for c in columns) + " |" for _, row in finished.iterrows()), ""]
    if len(finished):
        lines += [f"Best: `{finished.iloc[0]['command']}`", ""]
    if len(failed):
        lines += [f"## {len(failed)} failed run(s)", "", "| " + " | ".join([*names, "error"]) + " |",
                  "|" + "---|" * (len(names) + 1),
                  *("| " + " | ".join([*(str(row[n]) for n in names), str(row["error"]).replace("|", "\\|")]) + " |"
                    for _, row in failed.iterrows()), ""]
    return "\n".join(lines)


def sweep(args: argparse.Namespace) -> int:
    """``kd-gym sweep``: exit code 1 when no run of the sweep has finished (every one failed)."""
    frame = run_sweep(args.file, args.count, args.out, shlex.split(args.extra) if args.extra else None)
    return 1 if len(frame) and (frame["status"] == "failed").all() else 0


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

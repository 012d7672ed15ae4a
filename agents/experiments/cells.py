"""The cells of a bench: one (agent, seed) run each, with the hash, folder and ``results.csv`` row that identify it.

This is the layer that :mod:`~agents.experiments.bench` (a grid run here), :mod:`~agents.experiments.grid` (a grid
run across machines, merged later) and :mod:`~agents.experiments.sweep_check` share; it imports none of them.
"""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Collection
from pathlib import Path

import pandas as pd

from agents.experiments.common import agent_kwargs_from, env_kwargs_from, protocol_kwargs_from
from kd_gym.prepare.cache import fingerprint

RESULTS = "results.csv"
"""the rows of a bench (in its folder) or of one cell (in the cell's folder)"""
REQUIRED_COLUMNS = ("agent", "seed", "dev_metric", "test_metric", "config_hash")
"""the columns every ``results.csv`` row needs: the cell (agent, seed, config hash) and its result"""
RESULT_COLUMNS = (
    *REQUIRED_COLUMNS,
    "steps", "wall_s", "task", "env", "metric",  # RunResult.summary()
    "learns_from",  # RunResult.extra: what the agent learns from
    "protocol", "train_student_steps", "eval_students", "eval_test_std", "train_phase",  # train-eval runs' extra
    "scenario", "bench_command", "bench_task", "bench_agents", "train_students",  # bench_row
)
"""every column :func:`bench_row` writes; a ``results.csv`` with any other column was not written by kd-gym (a new
column of a run's result belongs here too: a bench resumed on its rows would refuse them, as
tests/test_bad_inputs.py checks on a real bench)"""
NUMERIC_COLUMNS: dict[str, tuple[bool, float, float]] = {
    "seed": (True, 0, math.inf), "steps": (True, 1, math.inf), "wall_s": (False, 0, math.inf),
    "dev_metric": (False, 0, 1), "test_metric": (False, 0, 1), "eval_test_std": (False, 0, 1),
    "train_student_steps": (True, 0, math.inf), "eval_students": (True, 1, math.inf),
    "train_students": (True, 1, math.inf),
}
"""column -> (integer?, lowest, highest) of the numbers a ``results.csv`` holds; metrics in [0, 1], except the
Matthews correlation in [-1, 1]"""
SWEEP_PARAMETER = "cell"
"""the one parameter of a bench-grid sweep: ``AGENT@SEED``"""


def split_list(text: str) -> list[str]:
    """``"a, b,,c"`` -> ``["a", "b", "c"]``: the comma-separated ``--agents`` and ``--seeds``."""
    return [part.strip() for part in text.split(",") if part.strip()]


def parse_cell(text: str) -> tuple[str, int]:
    """``AGENT@SEED`` -> (agent, seed); ``ValueError`` naming the text otherwise."""
    agent, _, seed = text.rpartition("@")
    if not agent or not seed.strip().isdigit():
        raise ValueError(f"cell {text!r} is not AGENT@SEED (e.g. uniform@0)")
    return agent.strip(), int(seed)


def grid_cells(args: argparse.Namespace) -> list[str]:
    """The cells of the bench, ``AGENT@SEED``, agent-major as the bench runs them."""
    return [f"{agent}@{int(seed)}" for agent in split_list(args.agents) for seed in split_list(args.seeds)]


def hyperparams_entry(args: argparse.Namespace, agent: str) -> dict | None:
    """The entry of its hyperparameter file that an SB3 agent reads for the bench's env (``agents/hyperparams/<algo>.yml``
    or ``--hyperparams-file``); None for the other agents."""
    import agents
    from agents.experiments.monitor import ENVS
    from agents.sb3 import SB3Agent, load_hyperparams

    agent_class, _ = agents.resolve(agent)
    if not (isinstance(agent_class, type) and issubclass(agent_class, SB3Agent)):
        return None
    path = agent_kwargs_from(args, agent).get("hyperparams_file") or None
    return load_hyperparams(agent_class.name, ENVS[args.env], path)


def cell_config_hash(args: argparse.Namespace, agent: str) -> str:
    """A short hash of everything that defines a cell's result except its seed: agent, env, budget, scenario, the
    env and agent options given on the command line, and, for an SB3 agent, the hyperparameter entry it reads (so a
    cell run before its yml changed is run again, not reported as done)."""
    env_kwargs = env_kwargs_from(args)
    config = {"agent": agent, "env": args.env, "steps": args.steps, "scenario": args.scenario or "default",
              "env_kwargs": env_kwargs, "agent_kwargs": agent_kwargs_from(args, agent)}
    if args.env == "lite" and env_kwargs.get("lite_student", "ngrams") == "ngrams" and "ngram_update" not in env_kwargs:
        # the default n-gram student became sparse, then fastText's SGD: a cell of an earlier default (dense, then
        # sparse) is not reported as done
        config["ngram_update"] = "sgd"
    hyperparams = hyperparams_entry(args, agent)
    if hyperparams is not None:
        config["hyperparams"] = hyperparams
    protocol = protocol_kwargs_from(args)
    if protocol["protocol"] != "online":  # online cells keep the hashes they had before protocols existed
        config["protocol"] = protocol
    return fingerprint(config)[:12]


def cell_folder(out: Path, agent: str, seed: int) -> Path:
    """Where cell (agent, seed) writes its run (``module:Class`` names made path-safe)."""
    return out / "cells" / f"{agent.replace(':', '-')}__{seed}"


def bench_row(args: argparse.Namespace, result, config_hash: str) -> dict:
    """The ``results.csv`` row of a finished cell: the run's summary (agent metrics aside), its scenario and config
    hash, and what the report needs to write the bench's results.md (the command, ``--task`` as given, the agents in
    the bench's order, the protocol).

    :param result: the cell's :class:`~agents.experiments.run.RunResult`.
    """
    summary = {k: v for k, v in result.summary().items() if k != "agent_metrics"}
    return {**summary, "scenario": args.scenario or "default", "config_hash": config_hash,
            "bench_command": getattr(args, "command", "bench"), "bench_task": args.task, "bench_agents": args.agents,
            **protocol_kwargs_from(args)}


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file, so a killed run never leaves half a file."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _bad_value(column: str, value, row: pd.Series) -> str | None:
    """What is wrong with ``value`` in ``column`` of ``row`` (None: nothing)."""
    integer, low, high = NUMERIC_COLUMNS[column]
    if column.endswith("_metric") and row.get("metric") == "matthews_correlation":
        low = -1
    number = pd.to_numeric(pd.Series([value]), errors="coerce").iloc[0]
    kind = "an integer" if integer else "a number"
    if pd.isna(number) or not math.isfinite(number) or (integer and number != int(number)):
        text = str(value)
        shown = repr(text) if len(text) <= 40 else f"{text[:40] + '...'!r} ({len(text)} characters)"
        return f"holds {shown}, not {kind} in [{low}, {high}]"
    if not low <= number <= high:
        return f"holds {number}, out of range: {kind} in [{low}, {high}] was expected"
    return None


def read_results_csv(csv: Path, rerun: Collection[tuple[str, int, str]] = (),
                     extra_columns: Collection[str] = (), runs_cells: bool = True) -> pd.DataFrame:
    """The rows of a ``results.csv`` written by a bench or a cell run, checked, so that a resumed bench or a report
    never counts a row twice or computes with a value that is not a result: the columns are those
    :func:`bench_row` writes (:data:`RESULT_COLUMNS`, the :data:`REQUIRED_COLUMNS` among them), each number is a
    number in its range (:data:`NUMERIC_COLUMNS`), and no cell (agent, seed, config hash) has two rows.

    :param rerun: cells (agent, seed, config hash) about to be run again (``--force``): their rows are dropped
        unchecked.
    :param extra_columns: columns allowed besides :data:`RESULT_COLUMNS`.
    :param runs_cells: the caller runs cells (``kd-gym bench``), so the error offers ``--force``; False: a report.
    :raises ValueError: naming the file, the line (the header is line 1), the column and the value, and what to do.
    """
    try:
        frame = pd.read_csv(csv, dtype={"agent": str, "config_hash": str})
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as error:
        raise ValueError(f"{csv} is not a readable csv file ({str(error).strip()[:200]}); fix it, or move it aside "
                         "to run every cell again") from error
    unknown = [c for c in frame.columns if c not in RESULT_COLUMNS and c not in extra_columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if unknown or missing:
        what = (f"column(s) {unknown} that kd-gym bench does not write" if unknown else "") + (
            " and " if unknown and missing else "") + (f"no column(s) {missing}" if missing else "")
        raise ValueError(f"{csv} has {what}; a bench's results.csv has the columns {list(RESULT_COLUMNS)}. "
                         f"{'Delete those columns' if unknown and not missing else 'Fix the header'}, or move the "
                         "file aside to run every cell again")
    seeds = pd.to_numeric(frame["seed"], errors="coerce")
    cells = list(zip(frame["agent"].astype(str), seeds, frame["config_hash"].astype(str)))
    forced = {(str(a), float(s), str(h)) for a, s, h in rerun}
    keep = [cell not in forced for cell in cells]
    fix = ("delete that row (it is no cell of this command, so --force does not run it again)" if forced else
           "fix or delete that row, or rerun the command with --force to run its cells again (their rows are "
           "replaced)" if runs_cells else "fix or delete that row")
    first_line: dict[tuple, int] = {}
    for index, row in frame.iterrows():
        if not keep[index]:
            continue
        line, where = index + 2, f"{csv} line {index + 2} (agent {row['agent']!r}, seed {row['seed']})"
        for column in REQUIRED_COLUMNS:
            if pd.isna(row[column]) or str(row[column]).strip() == "":
                raise ValueError(f"{where}: column {column!r} is empty; {fix}")
        for column in NUMERIC_COLUMNS:
            if column in frame.columns and not pd.isna(row[column]):
                problem = _bad_value(column, row[column], row)
                if problem:
                    raise ValueError(f"{where}: column {column!r} {problem}; {fix}")
        if cells[index] in first_line:
            raise ValueError(f"{where} repeats the cell of line {first_line[cells[index]]} (the same agent, seed and "
                             f"config_hash {row['config_hash']}): a cell has one row, and a second one would count "
                             f"as another seed in the report; {fix}")
        first_line[cells[index]] = line
    frame = frame[keep].reset_index(drop=True)
    for column in NUMERIC_COLUMNS:
        if column in frame.columns:
            frame[column] = pd.to_numeric(frame[column])
    if len(frame):
        frame["seed"] = frame["seed"].astype(int)
    return frame

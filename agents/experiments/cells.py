"""The cells of a bench: one (agent, seed) run each, with the hash, folder and ``results.csv`` row that identify it.

This is the layer that :mod:`~agents.experiments.bench` (a grid run here), :mod:`~agents.experiments.grid` (a grid
run across machines, merged later) and :mod:`~agents.experiments.sweep_check` share; it imports none of them.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from agents.experiments.common import agent_kwargs_from, env_kwargs_from, protocol_kwargs_from
from kd_gym.prepare.cache import fingerprint

RESULTS = "results.csv"
"""the rows of a bench (in its folder) or of one cell (in the cell's folder)"""
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
    config = {"agent": agent, "env": args.env, "steps": args.steps, "scenario": args.scenario or "default",
              "env_kwargs": env_kwargs_from(args), "agent_kwargs": agent_kwargs_from(args, agent)}
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

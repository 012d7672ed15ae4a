"""``kd-gym bench`` and its preset ``kd-gym demo``: agents x seeds on one scenario, resumable, with tables and plots.

Every (agent, seed) cell trains one student for the same number of steps. A finished cell is written to
``results.csv`` at once (atomically), so a killed bench picks up where it stopped: cells already in the file with the
same config hash are not run again. ``demo`` is the same bench with its own defaults and one step first: build the
default teacher pool if it is missing.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from agents.experiments.common import (
    agent_kwargs_from,
    check_env_options,
    env_kwargs_from,
    protocol_kwargs_from,
    run_one,
)
from agents.experiments.grid import bench_row
from kd_gym.cli import task_kwargs_from
from kd_gym.prepare.cache import fingerprint

BENCH_DEFAULTS = {"agents": "no_kd,uniform,best_teacher,confidence,reinforce,ppo", "seeds": "0,1,2,3,4",
                  "out": "runs/bench", "protocol": "train-eval"}
DEMO_DEFAULTS = {"agents": "no_kd,uniform,best_teacher,confidence,oracle,reinforce,ppo", "seeds": "0,1,2",
                 "out": "runs/demo", "protocol": "online"}  # online: the first demo stays within 15 minutes


def cell_config_hash(args: argparse.Namespace, agent: str) -> str:
    """A short hash of everything that defines a cell's result except its seed: agent, env, budget, scenario, and
    the env and agent options given on the command line."""
    config = {"agent": agent, "env": args.env, "steps": args.steps, "scenario": args.scenario or "default",
              "env_kwargs": env_kwargs_from(args), "agent_kwargs": agent_kwargs_from(args, agent)}
    protocol = protocol_kwargs_from(args)
    if protocol["protocol"] != "online":  # online cells keep the hashes they had before protocols existed
        config["protocol"] = protocol
    return fingerprint(config)[:12]


def cell_folder(out: Path, agent: str, seed: int) -> Path:
    """Where cell (agent, seed) writes its run (``module:Class`` names made path-safe)."""
    return out / "cells" / f"{agent.replace(':', '-')}__{seed}"


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _split(text: str) -> list[str]:
    return [part for part in text.split(",") if part]


def run_bench(args: argparse.Namespace) -> pd.DataFrame:
    """Run the cells of ``args.agents`` x ``args.seeds`` missing from ``args.out/results.csv``; return all its rows.

    :param args: parsed ``kd-gym bench`` (or ``demo``) flags.
    """
    import gymnasium as gym

    from agents.experiments.run import ENVS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "results.csv"
    rows = pd.read_csv(csv).to_dict("records") if csv.exists() else []
    done = {(r["agent"], int(r["seed"]), r["config_hash"]) for r in rows}
    cells = [(a, int(s), cell_config_hash(args, a)) for a in _split(args.agents) for s in _split(args.seeds)]
    todo = [c for c in cells if c not in done]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run", file=sys.stderr)
    if not todo:
        return pd.DataFrame(rows)
    env = gym.make(ENVS[args.env], **env_kwargs_from(args), episode_steps=args.steps)
    for agent, seed, config_hash in tqdm(todo, desc="bench cells", unit="cell"):
        result = run_one(args, agent, seed, cell_folder(out, agent, seed), built_env=env)
        row = bench_row(args, result, config_hash)
        rows.append(row)
        _write_atomic(csv, pd.DataFrame(rows).to_csv(index=False))
        tqdm.write(f"{agent:>14} seed {seed}: dev {result.dev_metric:.4f}  test {result.test_metric:.4f}  "
                   f"({result.wall_s:.1f} s)", file=sys.stderr)
    return pd.DataFrame(rows)


def _histories(frame: pd.DataFrame, out: Path) -> dict[str, list[pd.DataFrame]]:
    """The dev curves (``history.csv``) of the cells in ``frame``, per agent."""
    histories: dict[str, list[pd.DataFrame]] = {}
    for agent, seed in zip(frame["agent"], frame["seed"]):
        path = cell_folder(out, agent, int(seed)) / "history.csv"
        if path.exists():
            histories.setdefault(agent, []).append(pd.read_csv(path))
    return histories


def bench(args: argparse.Namespace) -> int:
    """``kd-gym bench`` (and ``demo``): run the missing cells, then write ``results.md``, ``curves.png`` and
    ``weights.png`` for the cells of this command's config; return the exit code.

    :param args: parsed ``kd-gym bench`` / ``demo`` flags; ``args.argv`` (set by ``kd_gym.cli.main``) is the
        command recorded under the table.
    """
    from agents.experiments.plots import plot_curves, plot_weights
    from agents.experiments.report import bench_report, bench_title

    started = time.perf_counter()
    check_env_options(args)  # before any cell runs or any file is written
    args.scenario = args.scenario or "default"
    if args.oracle_row and "oracle" not in _split(args.agents):  # every scenario has one (kd_gym.regime, scenarios)
        args.agents += ",oracle"
    if getattr(args, "emit_sweep", None) or getattr(args, "cell", None):  # a grid across machines
        from agents.experiments.grid import emit_sweep, run_cell

        return emit_sweep(args) if args.emit_sweep else run_cell(args)
    frame = run_bench(args)
    out = Path(args.out)
    current = {cell_config_hash(args, a) for a in _split(args.agents)}
    frame = frame[frame["config_hash"].isin(current)]
    metric = frame["metric"].dropna().iloc[0] if "metric" in frame and frame["metric"].notna().any() else "metric"
    name = getattr(args, "command", "bench")
    command = "kd-gym " + shlex.join(getattr(args, "argv", [name]))
    protocol = protocol_kwargs_from(args)
    title = bench_title(name, args.task, args.env, args.scenario, args.steps, protocol)
    report = bench_report(frame, command=command, title=title, metric_label=metric)
    _write_atomic(out / "results.md", report)
    histories = _histories(frame, out)
    plot_curves(histories, out / "curves.png", title=f"dev {metric}, {args.scenario}")
    plot_weights(histories, out / "weights.png")
    print(report)
    print(f"\nwrote {out}/results.csv, results.md, curves.png, weights.png ({time.perf_counter() - started:.0f} s)")
    return 0


def ensure_default_pool(task: str, split_seed: int = 0, task_kwargs: dict | None = None, pool: str = "siloed") -> None:
    """Build the default teacher pool of ``task`` if it is not there yet (once; minutes on a CPU); print its
    manifest.

    :param task: a task name, as ``kd-gym teachers build --task`` takes it.
    :param split_seed: the seed of the task's split (the env option ``split_seed``).
    :param task_kwargs: how to read a custom task (the task flags, :class:`kd_gym.tasks.TaskOptions`).
    :param pool: which default pool (the env option ``pool``).
    """
    from kd_gym.defaults import default_pool_dir
    from kd_gym.prepare.pool_build import build_default_pool, format_manifest

    manifest_path = default_pool_dir(task, split_seed, pool, **(task_kwargs or {})) / "pool.json"
    if manifest_path.exists():
        manifest = json.loads(manifest_path.read_text())
    else:
        print(f"building the {pool} teacher pool for {task!r} (once; a few minutes on a CPU) ...")
        manifest = build_default_pool(task, seed=split_seed, pool=pool, task_kwargs=task_kwargs)
    print(format_manifest(manifest), "\n")


def demo(args: argparse.Namespace) -> int:
    """``kd-gym demo``: the default teacher pool (built if missing, unless ``--teachers`` names others), then
    :func:`bench` with the demo's defaults.

    :param args: parsed ``kd-gym demo`` flags (those of bench, with :data:`DEMO_DEFAULTS`).
    """
    check_env_options(args)  # before minutes of building teachers
    if not args.teachers:
        ensure_default_pool(args.task, args.split_seed or 0, task_kwargs_from(args), args.pool or "siloed")
    return bench(args)

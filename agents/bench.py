"""``kd-gym bench``: agents x seeds on one scenario, resumable, with tables and plots.

Every (agent, seed) cell trains one student for the same number of steps. A finished cell is written to
``results.csv`` at once (atomically), so a killed bench picks up where it stopped: cells already in the file with the
same config hash are not run again.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from agents.cli import add_run_command, env_kwargs_from, run_one
from kd_gym.cache import fingerprint

BENCH_AGENTS = "uniform,confidence,reinforce,ppo,sac"


def cell_config_hash(args: argparse.Namespace, agent: str) -> str:
    """A short hash of everything that defines a cell's result except its seed."""
    from agents.cli import agent_kwargs_from

    config = {"agent": agent, "env": args.env, "steps": args.steps, "scenario": args.scenario or "default",
              "env_kwargs": env_kwargs_from(args), "agent_kwargs": agent_kwargs_from(args, agent)}
    return fingerprint(config)[:12]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def run_bench(args: argparse.Namespace) -> pd.DataFrame:
    """Run the missing cells; return all rows of ``results.csv``."""
    import gymnasium as gym

    from agents.run import ENVS

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    csv = out / "results.csv"
    rows = pd.read_csv(csv).to_dict("records") if csv.exists() else []
    done = {(r["agent"], int(r["seed"]), r["config_hash"]) for r in rows}
    agents = [a for a in args.agents.split(",") if a]
    seeds = [int(s) for s in args.seeds.split(",") if s != ""]
    cells = [(a, s, cell_config_hash(args, a)) for a in agents for s in seeds]
    todo = [c for c in cells if c not in done]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run", file=sys.stderr)
    if not todo:
        return pd.DataFrame(rows)
    env = gym.make(ENVS[args.env], **env_kwargs_from(args), episode_steps=args.steps)
    for agent, seed, config_hash in tqdm(todo, desc="bench cells", unit="cell"):
        folder = out / "cells" / f"{agent.replace(':', '-')}__{seed}"
        result = run_one(args, agent, seed, folder, built_env=env)
        row = {**{k: v for k, v in result.summary().items() if k != "agent_metrics"},
               "scenario": args.scenario or "default", "config_hash": config_hash}
        rows.append(row)
        _write_atomic(csv, pd.DataFrame(rows).to_csv(index=False))
    return pd.DataFrame(rows)


def _bench(args: argparse.Namespace) -> int:
    from agents.plots import plot_curves, plot_weights
    from agents.report import bench_report

    started = time.perf_counter()
    args.scenario = args.scenario or "default"
    if args.oracle and args.scenario != "default" and "oracle" not in args.agents.split(","):
        args.agents += ",oracle"
    frame = run_bench(args)
    out = Path(args.out)
    current = {cell_config_hash(args, a) for a in args.agents.split(",")}
    frame = frame[frame["config_hash"].isin(current)]
    command = "kd-gym " + shlex.join(args.argv)
    report = bench_report(frame, command=command, title=f"{args.task}, {args.env} env, scenario {args.scenario}, {args.steps} student steps")
    _write_atomic(out / "results.md", report)
    histories = {}
    for agent in frame["agent"].unique():
        for seed in frame.loc[frame["agent"] == agent, "seed"]:
            path = out / "cells" / f"{agent.replace(':', '-')}__{int(seed)}" / "history.csv"
            if path.exists():
                histories.setdefault(agent, []).append(pd.read_csv(path))
    plot_curves(histories, out / "curves.png", title=f"dev metric, {args.scenario}")
    plot_weights(histories, out / "weights.png")
    print(report)
    print(f"\nwrote {out}/results.csv, results.md, curves.png, weights.png ({time.perf_counter() - started:.0f} s)")
    return 0


def _bench_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", default=BENCH_AGENTS, help="comma-separated agent names")
    parser.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    parser.add_argument("--out", default="runs/bench", help="output folder (rerun with the same folder to resume)")
    parser.add_argument("--no-oracle", dest="oracle", action="store_false",
                        help="do not add the scenario's oracle row")


def add_bench_arguments(commands: argparse._SubParsersAction) -> None:
    add_run_command(
        commands, "bench", _bench,
        help="compare agents over seeds: results.csv/.md, curves.png, weights.png (resumable)",
        description="Train one student per (agent, seed) cell with the same budget and compare agents: mean ± std "
                    "and 95%% CI of the test metric, a paired comparison against uniform, learning curves and "
                    "learned weights. Rerunning the same command skips finished cells.",
        own_flags=_bench_flags,
    )

"""``kd-gym train`` and ``kd-gym demo`` (plugged into the ``kd-gym`` command through entry points)."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from agents.flags import ENV_FLAGS, add_agent_flags, add_env_flags, collect

DEMO_AGENTS = ("uniform", "best_teacher", "no_kd", "reinforce", "ppo")


def builtin_agent_classes() -> list[type]:
    from agents import BUILTIN, _import_path

    return [_import_path(path) for path in BUILTIN.values()]


def env_kwargs_from(args: argparse.Namespace) -> dict[str, Any]:
    """Env options given on the command line (unset flags keep the env's defaults)."""
    kwargs = collect(args, ENV_FLAGS)
    kwargs["task"] = args.task
    if getattr(args, "teachers", None):
        kwargs["teachers"] = [t for t in args.teachers.split(",") if t]
    return kwargs


def agent_kwargs_from(args: argparse.Namespace, agent: str) -> dict[str, Any]:
    """Agent hyperparameters given on the command line; a flag the agent does not have is an error."""
    import dataclasses

    from agents import resolve

    given = collect(args, args._agent_flag_owners)
    agent_class, _ = resolve(agent)
    accepted = {f.name for f in dataclasses.fields(agent_class.Config)}
    wrong = sorted(set(given) - accepted)
    if wrong:
        flags = ", ".join("--" + w.replace("_", "-") for w in wrong)
        raise SystemExit(f"kd-gym train: {flags} do(es) not apply to agent {agent!r}; it accepts "
                         f"{sorted(a for a in accepted if a != 'seed')}")
    return given


def add_common_run_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--env", default="lite", choices=["lite", "full"], help="lite (CPU-cheap) or full student")
    parser.add_argument("--task", default="tweets", help="task name, hub dataset or local file (default: tweets)")
    parser.add_argument("--steps", type=int, default=1500, help="student updates per run (default: 1500)")
    parser.add_argument("--teachers", default=None,
                        help="comma-separated teacher folders or hub ids (default: the task's default pool)")
    parser.add_argument("--track", action="store_true", help="log to Weights & Biases (offline without an API key)")
    parser.add_argument("--wandb-project", default="kd-gym", help="W&B project")
    parser.add_argument("--wandb-entity", default=None, help="W&B entity (team or user)")
    parser.add_argument("--wandb-group", default=None, help="W&B group")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch CPU threads (0: 1 for the lite env on a CPU, whose tiny matmuls only lose from "
                             "more; torch's default otherwise)")


def set_threads(args: argparse.Namespace) -> None:
    """Apply --threads (see its help)."""
    import torch

    if args.threads > 0:
        torch.set_num_threads(args.threads)
    elif args.env == "lite" and not torch.cuda.is_available():
        torch.set_num_threads(1)


def add_run_command(commands: argparse._SubParsersAction, name: str, func, help: str, description: str,
                    own_flags) -> argparse.ArgumentParser:
    """A subcommand that trains students: its own flags (``own_flags(parser)``), then the run, env and agent flags."""
    parser = commands.add_parser(name, help=help, description=description,
                                 formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    own_flags(parser)
    add_common_run_flags(parser)
    add_env_flags(parser)
    parser.set_defaults(func=func, _agent_flag_owners=add_agent_flags(parser, builtin_agent_classes()))
    return parser


def run_one(args: argparse.Namespace, agent: str, seed: int, out_dir: Path, built_env=None, progress: bool = True):
    """One tracked (agent, seed) run; returns the RunResult."""
    from agents.run import train_student
    from agents.tracking import Tracker, run_name

    set_threads(args)
    agent_kwargs = agent_kwargs_from(args, agent)
    env_kwargs = env_kwargs_from(args)
    config = {"agent": agent, "seed": seed, "env": args.env, "steps": args.steps, **env_kwargs, **agent_kwargs}
    tracker = Tracker(args.track, project=args.wandb_project, entity=args.wandb_entity, group=args.wandb_group,
                      name=run_name(args.task, agent, seed), config=config, directory=out_dir)
    result = train_student(agent, env=args.env, steps=args.steps, seed=seed, env_kwargs=env_kwargs,
                           agent_kwargs=agent_kwargs, out_dir=out_dir, built_env=built_env, progress=progress,
                           on_record=lambda record: tracker.log(record, step=record["student_step"]))
    tracker.finish({"dev_metric": result.dev_metric, "test_metric": result.test_metric, "wall_s": result.wall_s,
                    **{f"agent/{k}": v for k, v in result.extra.get("agent_metrics", {}).items()}})
    return result


def _train(args: argparse.Namespace) -> int:
    from agents.tracking import run_name

    out = Path(args.out) if args.out else Path("runs") / "train" / run_name(args.task, args.agent, args.seed)
    result = run_one(args, args.agent, args.seed, out)
    line = {k: v for k, v in result.summary().items() if k != "agent_metrics"}
    print(json.dumps({**line, "out": str(out)}))
    return 0


def _train_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agent", default="uniform", help="agent name (reinforce, ppo, a2c, sac, "
                        "td3, uniform, single:<k>, best_teacher, confidence, random, no_kd) or module:Class")
    parser.add_argument("--seed", type=int, default=0, help="seed of the student init, batch order and agent")
    parser.add_argument("--out", default=None, help="run folder (default: runs/train/<task>__<agent>__<seed>__<time>)")


def add_train_command(commands: argparse._SubParsersAction) -> None:
    add_run_command(
        commands, "train", _train, help="train one student under one agent and report dev/test metrics",
        description="Train one student for --steps updates while the agent chooses the teacher weights (and learns); "
                    "evaluate the final student on dev and test; print one JSON line and write it, with the agent "
                    "and student checkpoints, to the run folder.",
        own_flags=_train_flags,
    )


def _demo(args: argparse.Namespace) -> int:
    import gymnasium as gym
    import pandas as pd

    from agents.report import summary_table
    from agents.run import ENVS
    from kd_gym.pool_build import build_default_pool, default_pool_dir, format_manifest

    started = time.perf_counter()
    manifest_path = default_pool_dir(args.task) / "pool.json"
    if not manifest_path.exists():
        print(f"building the default teacher pool for {args.task!r} (once; a few minutes on a CPU) ...")
        manifest = build_default_pool(args.task)
    else:
        manifest = json.loads(manifest_path.read_text())
    print(format_manifest(manifest), "\n")
    env = gym.make(ENVS[args.env], **env_kwargs_from(args), episode_steps=args.steps)
    out = Path(args.out)
    rows = []
    for agent in args.agents.split(","):
        for seed in [int(s) for s in args.seeds.split(",")]:
            result = run_one(args, agent, seed, out / f"{agent}__{seed}", built_env=env)
            rows.append(result.summary())
            print(f"{agent:>14} seed {seed}: dev {result.dev_metric:.4f}  test {result.test_metric:.4f}  "
                  f"({result.wall_s:.1f} s)", flush=True)
    frame = pd.DataFrame(rows).drop(columns=["agent_metrics"], errors="ignore")
    frame.to_csv(out / "results.csv", index=False)
    command = "kd-gym demo " + " ".join(f"--{k} {v}" for k, v in
                                        {"agents": args.agents, "seeds": args.seeds, "steps": args.steps}.items())
    table = summary_table(frame, metric_label=env.unwrapped.trainer.data.task.metric)
    text = (f"# kd-gym demo: lite students on {args.task}, {args.steps} student steps each\n\n"
            f"Teachers: {', '.join(env.unwrapped.teacher_names)}\n\n{table}\n\nCommand: `{command}`\n")
    (out / "results.md").write_text(text)
    print("\n" + table)
    print(f"\nwrote {out / 'results.md'} and {out / 'results.csv'} in {time.perf_counter() - started:.0f} s")
    return 0


def _demo_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--agents", default=",".join(DEMO_AGENTS), help="comma-separated agent names")
    parser.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    parser.add_argument("--out", default="runs/demo", help="output folder")


def add_demo_command(commands: argparse._SubParsersAction) -> None:
    add_run_command(
        commands, "demo", _demo,
        help="the main job: build the default teachers if needed, then compare teacher weightings",
        description="Build the default teacher pool if it is not cached, then train lite students on the task under "
                    "fixed weightings (equal weights, the best single teacher, no KD) and learned ones (REINFORCE, "
                    "PPO) for the same number of student steps; print and write a table of dev and test metrics.",
        own_flags=_demo_flags,
    )


def add_bench_command(commands: argparse._SubParsersAction) -> None:
    from agents.bench import add_bench_arguments

    add_bench_arguments(commands)

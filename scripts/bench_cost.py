"""What does an agent cost on top of the student it trains? Wall time of one online run per agent, against uniform.

Each round trains one student per agent (``train_student``, online protocol, the same env and seed), interleaved, so
the agents see the same machine load; the median over rounds is reported with its ratio to ``uniform``.

    python scripts/bench_cost.py                               # uniform vs gold-router, 1,500 steps, 5 rounds
    python scripts/bench_cost.py --agents uniform,gold-router,ppo --steps 1000 --rounds 3
"""

from __future__ import annotations

import argparse
import statistics

import gymnasium as gym
import torch

import kd_gym  # noqa: F401  (registers the env ids)
from agents.experiments.run import ENVS, train_student


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--agents", default="uniform,gold-router",
                        help="comma-separated; the first is the reference (default: the online learner gold-router)")
    parser.add_argument("--env", default="lite", choices=sorted(ENVS))
    parser.add_argument("--steps", type=int, default=1500, help="student updates per run")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    names = [name for name in args.agents.split(",") if name]
    env = gym.make(ENVS[args.env], episode_steps=args.steps)
    walls: dict[str, list[float]] = {name: [] for name in names}
    for round_ in range(args.rounds):
        for name in names:
            walls[name].append(train_student(name, steps=args.steps, seed=round_, built_env=env, progress=False).wall_s)
    reference = statistics.median(walls[names[0]])
    print(f"{args.env} env, {args.steps} student steps, {args.rounds} rounds, {torch.get_num_threads()} thread(s)")
    print(f"{'agent':<14}{'s / run':>10}{'ratio':>8}")
    for name in names:
        median = statistics.median(walls[name])
        print(f"{name:<14}{median:>10.2f}{median / reference:>8.2f}")


if __name__ == "__main__":
    main()

"""How much does the reward say about the action? Signal-to-noise of the env's one-step reward, measured.

From states along a ``uniform`` run (a student after 0, ..., ``--steps`` updates), each state's batch is tried with
``--actions`` random keep/drop actions (Bernoulli(0.5) per instance and teacher, the paper's policy at its start) and
with the oracle's action, by ``env.unwrapped.lookahead_dev`` (a trial update from the same student on the same batch,
then the dev subset; it changes nothing). Per state:

- signal: the spread (std) of the one-step dev change across the random actions (what a policy gradient can learn
  from), and the oracle's gain over their mean;
- noise: the spread of the same change across states for one fixed action (keep every teacher): what the batch and
  the student's state add whatever the action.

Printed for the dev metric (the default reward ``dev_delta``, in points) and the dev loss (nats). A window of the
paper's REINFORCE shares one return among B x K x ``reward_interval`` actions; the last column is the spread one
action contributes to it, under independent actions: the signal divided by sqrt(B K).

    python scripts/reward_snr.py                    # 8 states, 16 actions each
    python scripts/reward_snr.py --states 4 --actions 8 --steps 1500
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import numpy as np
import torch

import kd_gym  # noqa: F401  (registers the env ids)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--states", type=int, default=8, help="states along the run")
    parser.add_argument("--steps", type=int, default=1500, help="the run's length (the last state's step)")
    parser.add_argument("--actions", type=int, default=16, help="random actions tried per state")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    env = gym.make("kd_gym/TeacherSelectionLite-v0", episode_steps=args.steps + 1)
    unwrapped = env.unwrapped
    obs, _ = env.reset(seed=args.seed)
    rng = np.random.default_rng(args.seed)
    shape = (unwrapped.batch_size, unwrapped.num_teachers)
    keep_all = np.ones(shape, np.float32)
    marks = set(np.linspace(0, args.steps, args.states).astype(int).tolist())
    rows = []
    for step in range(args.steps + 1):
        if step in marks:
            now = unwrapped.evaluate("dev", subset=True)
            trials = [unwrapped.lookahead_dev(rng.integers(0, 2, shape).astype(np.float32))
                      for _ in range(args.actions)]
            fixed = unwrapped.lookahead_dev(keep_all)
            oracle = unwrapped.lookahead_dev(unwrapped.oracle_weights())
            for key, scale in (("metric", 100.0), ("loss", 1.0)):
                changes = np.array([t[key] - now[key] for t in trials]) * scale
                rows.append({"step": step, "key": key, "across_actions": changes.std(),
                             "oracle_gain": (oracle[key] - now[key]) * scale - changes.mean(),
                             "fixed": (fixed[key] - now[key]) * scale})
        obs, *_ = env.step(keep_all)
    print(f"one-step dev change, {len(marks)} states x {args.actions} random actions (B={shape[0]}, K={shape[1]})\n")
    print("| reward | spread across actions | oracle gain over their mean | spread across states, fixed action "
          "| signal / noise | one action's share of a shared return |")
    print("|---|---|---|---|---|---|")
    for key, unit in (("metric", "dev metric, points"), ("loss", "dev loss, nats")):
        mine = [r for r in rows if r["key"] == key]
        signal = float(np.mean([r["across_actions"] for r in mine]))
        gain = float(np.mean([r["oracle_gain"] for r in mine]))
        noise = float(np.std([r["fixed"] for r in mine]))
        share = signal / np.sqrt(shape[0] * shape[1])
        print(f"| {unit} | {signal:.4f} | {gain:+.4f} | {noise:.4f} | {signal / max(noise, 1e-12):.2f} | "
              f"{share:.5f} |")


if __name__ == "__main__":
    main()

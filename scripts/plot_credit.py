"""Is the one-step credit a guide to the teacher an instance should follow? Measured along a student's training.

At every step of an episode the batch's per-pair dev credit (``env.unwrapped.pair_credit()``: how fast distilling
instance i toward teacher k alone would lower the student's dev-subset loss, first order) is measured before the
teaching policy acts, and compared with the teacher the oracle routes the instance to (the expert of its silo, from
the env's privileged ``info["silo_expert"]``; diagnostics only, never an agent's input). Per teaching policy
(``uniform``: equal weights; ``oracle``: every instance to its silo's expert) it plots, against the student's step:

- the share of instances whose silo expert has the highest credit (chance: 1 / K);
- the mean credit of the silo expert minus the mean of the other teachers (nats per unit step).

Under equal weights the credit points to the expert; under the oracle, whose student has learned from the expert,
it points away: the one-step signal depends on the student that the policy made (docs/benchmark.md).

    python scripts/plot_credit.py                         # seed 0, 1,500 steps, docs/img/credit-by-policy.png
    python scripts/plot_credit.py --steps 500 --out runs/credit.png
"""

from __future__ import annotations

import argparse

import gymnasium as gym
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import torch  # noqa: E402
from tqdm.auto import tqdm  # noqa: E402

import kd_gym  # noqa: E402, F401  (registers the env ids)


def credit_trace(env: gym.Env, policy: str, steps: int, seed: int) -> pd.DataFrame:
    """One row per step: ``student_step``, ``expert_top`` (share of rows with a silo expert whose expert has the
    highest credit) and ``expert_margin`` (expert's credit minus the others' mean, averaged over those rows)."""
    base = env.unwrapped
    obs, _ = env.reset(seed=seed)
    rows = []
    for step in tqdm(range(steps), desc=policy, leave=False):
        credit = base.pair_credit()  # (B, K), before acting
        action = base.oracle_weights() if policy == "oracle" else np.ones(env.action_space.shape, np.float32)
        obs, _, terminated, truncated, info = env.step(action)
        expert = info["silo_expert"]  # the batch just trained: the same rows as the credit
        known = expert >= 0
        if not known.any():
            continue
        c, e = credit[known], expert[known]
        own = c[np.arange(len(e)), e]
        others = (c.sum(1) - own) / (c.shape[1] - 1)
        rows.append({"student_step": step, "expert_top": float((c.argmax(1) == e).mean()),
                     "expert_margin": float((own - others).mean())})
        if terminated or truncated:
            break
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--steps", type=int, default=1500, help="student steps per policy")
    parser.add_argument("--seed", type=int, default=0, help="env seed (the same student and batches for each policy)")
    parser.add_argument("--window", type=int, default=50, help="rolling mean over this many steps in the plot")
    parser.add_argument("--out", default="docs/img/credit-by-policy.png", help="the figure")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    env = gym.make("kd_gym/TeacherSelectionLite-v0", episode_steps=args.steps)
    k = env.unwrapped.num_teachers
    traces = {policy: credit_trace(env, policy, args.steps, args.seed) for policy in ("uniform", "oracle")}
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for policy, trace in traces.items():
        smooth = trace.rolling(args.window, min_periods=1).mean()
        axes[0].plot(trace["student_step"], smooth["expert_top"], label=f"taught by {policy}")
        axes[1].plot(trace["student_step"], smooth["expert_margin"], label=f"taught by {policy}")
        print(f"{policy:8s} expert has the highest credit: {trace['expert_top'].mean():.3f} (chance {1 / k:.3f}); "
              f"expert - others: {trace['expert_margin'].mean():+.4f}; by thirds of the episode: "
              + ", ".join(f"{part['expert_top'].mean():.3f} / {part['expert_margin'].mean():+.4f}"
                          for part in (trace.iloc[i * len(trace) // 3:(i + 1) * len(trace) // 3] for i in range(3))))
    axes[0].axhline(1 / k, color="grey", lw=0.8, ls="--", label="chance")
    axes[0].set(xlabel="student step", ylabel="share of rows", title="the silo expert has the highest credit")
    axes[1].axhline(0.0, color="grey", lw=0.8, ls="--")
    axes[1].set(xlabel="student step", ylabel="nats per unit step", title="credit: silo expert - other teachers")
    for ax in axes:
        ax.legend()
    fig.tight_layout()
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

"""How much does each learner get from the student steps it learns on? Test % against student steps learned.

Reads the ``results.csv`` of bench folders run with different ``--train-students`` (train-eval protocol), groups the
rows by agent and ``train_student_steps``, and prints a markdown table (mean ± std over the chosen seeds) and plots one
curve per learning agent; agents that learn nothing (``train_student_steps`` 0: uniform, best_teacher, metagrad,
oracle, ...) are drawn as horizontal reference lines.

    for n in 1 2 4; do kd-gym bench --agents reinforce,ppo,a2c,sac,td3 --train-students $n --seeds 0,1,2 \\
        --no-oracle --out runs/vcurve-$n; done
    python scripts/plot_sample_efficiency.py runs/vcurve-1 runs/vcurve-2 runs/vcurve-4 runs/bench \\
        --seeds 0,1,2 --out docs/img/sample-efficiency.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402


def read_results(folders: list[str], seeds: list[int] | None) -> pd.DataFrame:
    """Every row of the folders' results.csv (the last one of a repeated agent, seed and training budget)."""
    frames = []
    for folder in folders:
        path = Path(folder, "results.csv")
        if not path.exists():
            raise SystemExit(f"{path} does not exist: run `kd-gym bench ... --out {folder}` first")
        frames.append(pd.read_csv(path))
    rows = pd.concat(frames, ignore_index=True)
    if "train_student_steps" not in rows:
        raise SystemExit("results.csv has no train_student_steps column: these are online runs; use train-eval ones")
    if seeds is not None:
        rows = rows[rows["seed"].isin(seeds)]
    return rows.drop_duplicates(["agent", "seed", "train_student_steps"], keep="last")


def summarise(rows: pd.DataFrame) -> pd.DataFrame:
    """Per (agent, train_student_steps): mean and std of the test metric in %, and the number of seeds."""
    table = rows.assign(test=rows["test_metric"] * 100).groupby(["agent", "train_student_steps"])["test"]
    return table.agg(["mean", "std", "count"]).reset_index()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folders", nargs="+", help="bench output folders (their results.csv)")
    parser.add_argument("--seeds", default=None, help="comma-separated seeds to keep (default: all)")
    parser.add_argument("--out", default="runs/sample-efficiency.png", help="where the plot goes")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")] if args.seeds else None
    summary = summarise(read_results(args.folders, seeds))
    learners = summary[summary["train_student_steps"] > 0]
    references = summary[summary["train_student_steps"] == 0]
    if learners.empty:
        raise SystemExit("no learning agent in these folders (every row has train_student_steps 0)")

    budgets = sorted(learners["train_student_steps"].unique())
    print("| agent | " + " | ".join(f"{int(b):,} steps" for b in budgets) + " |")
    print("|---|" + "---|" * len(budgets))
    for agent, group in learners.groupby("agent", sort=False):
        cells = dict(zip(group["train_student_steps"], zip(group["mean"], group["std"], group["count"])))
        print(f"| {agent} | " + " | ".join(
            f"{cells[b][0]:.2f} ± {cells[b][1]:.2f} (n={cells[b][2]})" if b in cells else "-" for b in budgets) + " |")

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for agent, group in learners.groupby("agent", sort=False):
        group = group.sort_values("train_student_steps")
        ax.errorbar(group["train_student_steps"], group["mean"], yerr=group["std"].fillna(0), marker="o", capsize=3,
                    label=agent)
    labels: list[tuple[float, list[str]]] = []  # references within 0.3 points share one label
    for _, row in references.sort_values("mean").iterrows():
        ax.axhline(row["mean"], linestyle="--", linewidth=1, color="gray")
        if labels and row["mean"] - labels[-1][0] < 0.3:
            labels[-1][1].append(row["agent"])
        else:
            labels.append((row["mean"], [row["agent"]]))
    for level, names in labels:
        ax.annotate(", ".join(names), (0.01, level), xycoords=("axes fraction", "data"), textcoords="offset points",
                    xytext=(0, 2), fontsize=8, color="gray")
    ax.set_xticks(budgets)
    ax.set_xlabel("student steps learned (training students x episode steps)")
    ax.set_ylabel("test accuracy of the evaluation students (%)")
    ax.set_title("sample efficiency: mean ± std over seeds")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=120)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()

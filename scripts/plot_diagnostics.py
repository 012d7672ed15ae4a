"""Why does a learner learn or not? Its diagnostics over training, side by side for several bench runs.

Reads the ``train_history.csv`` (train-eval: the agent's training episodes) or else the ``history.csv`` of the cells of
bench folders, and plots per label (mean over its seeds) the columns of
:data:`agents.experiments.plots.DIAGNOSTICS`: the weight instances give their silo's expert (``routing/``, from the
env's privileged ``info["silo_expert"]``), the keep/drop entropy, the advantage's mean and spread, the policy
gradient's norm and the mean keep probability. Prints the mean of each over the last quarter of training.

    python scripts/plot_diagnostics.py paper=runs/i18/paper:reinforce routed=runs/i18/routed:reinforce \\
        --out docs/img/reinforce-diagnostics.png
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from agents.experiments.plots import plot_diagnostics


def read_runs(spec: str) -> tuple[str, list[pd.DataFrame]]:
    """``label=BENCH_OUT:AGENT`` -> (label, the history frames of that agent's cells in BENCH_OUT)."""
    label, sep, where = spec.partition("=")
    out, colon, agent = where.rpartition(":")
    if not sep or not colon or not agent:
        raise SystemExit(f"run {spec!r}: write it as label=BENCH_OUT:AGENT, e.g. paper=runs/bench:reinforce")
    cells = sorted(Path(out, "cells").glob(f"{agent.replace(':', '-')}__*"))
    frames = []
    for cell in cells:
        path = cell / "train_history.csv" if (cell / "train_history.csv").exists() else cell / "history.csv"
        if path.exists():
            frames.append(pd.read_csv(path))
    if not frames:
        raise SystemExit(f"run {spec!r}: no history.csv under {out}/cells/{agent}__*; run the bench first")
    return label, frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("runs", nargs="+", help="label=BENCH_OUT:AGENT, one per line of the plot")
    parser.add_argument("--out", default="runs/diagnostics.png", help="the figure (PNG)")
    parser.add_argument("--title", default="", help="the figure's title")
    args = parser.parse_args()
    histories = dict(read_runs(spec) for spec in args.runs)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    columns = plot_diagnostics(histories, args.out, args.title)
    rows = []
    for label, frames in histories.items():
        row = {"run": label, "seeds": len(frames)}
        for column in columns:
            values = [f[column].iloc[-max(1, len(f) // 4):].mean() for f in frames if column in f]
            row[column] = round(float(pd.Series(values).mean()), 4) if values else None
        rows.append(row)
    header = list(rows[0])
    print("| " + " | ".join(header) + " |\n|" + "---|" * len(header))
    for row in rows:
        print("| " + " | ".join("-" if row.get(h) is None else str(row[h]) for h in header) + " |")
    print(f"\nwrote {args.out}")


if __name__ == "__main__":
    main()

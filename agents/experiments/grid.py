"""A bench grid across machines: the (agent, seed) cells of a bench as a W&B sweep, one cell per run, and the
report that merges finished cells from several places.

- ``kd-gym bench ... --emit-sweep FILE`` writes the grid as a sweep file (:func:`emit_sweep`): ``method: grid`` over
  one parameter, ``cell`` (``AGENT@SEED``), and a command that is the bench's own command line with
  ``--cell=AGENT@SEED`` appended by W&B.
- ``kd-gym bench ... --cell AGENT@SEED`` runs that one cell (:func:`run_cell`) into ``OUT/cells/<agent>__<seed>/``
  and writes its row to ``results.csv`` there, never to ``OUT/results.csv``, so that runs on a shared folder do
  not race.
- ``kd-gym report PATH ... --out DIR`` (:func:`report`) reads the rows of benches' ``results.csv`` files and of
  cell folders, and writes the ``results.md``, ``curves.png`` and ``weights.png`` that a bench of those cells on
  one machine writes (and, over several scenarios, the table aggregated over them).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import pandas as pd
import yaml

from agents.experiments.cells import (  # noqa: F401 (bench_row, parse_cell: public here too)
    RESULTS,
    SWEEP_PARAMETER,
    bench_row,
    cell_config_hash,
    cell_folder,
    grid_cells,
    parse_cell,
    read_results_csv,
    write_atomic,
)
from agents.experiments.cells import split_list as _split
from agents.experiments.sweep_check import check_bench_grid, check_sweep, subcommand_parser  # noqa: F401

DROPPED_FLAGS = ("--emit-sweep", "--cell", "--agents", "--seeds", "--out")
"""flags of the bench command line that the sweep command sets itself (each takes one value)"""


def run_cell(args: argparse.Namespace) -> int:
    """Run the one cell ``args.cell`` of the bench into ``cell_folder(args.out, agent, seed)`` and write its row to
    ``results.csv`` there; a cell already there with the same config hash is not run again. Returns the exit code.

    :raises ValueError: when the cell's agent is not in ``--agents`` or its seed not in ``--seeds``.
    """
    from agents.experiments.common import run_one

    agent, seed = parse_cell(args.cell)
    agents, seeds = _split(args.agents), [int(s) for s in _split(args.seeds)]
    if agent not in agents:
        raise ValueError(f"--cell {args.cell}: agent {agent!r} is not one of --agents {','.join(agents)}; "
                         "name a cell of the bench's grid")
    if seed not in seeds:
        raise ValueError(f"--cell {args.cell}: seed {seed} is not one of --seeds {args.seeds}; "
                         "name a cell of the bench's grid")
    folder = cell_folder(Path(args.out), agent, seed)
    csv, config_hash = folder / RESULTS, cell_config_hash(args, agent)
    rerun = [(agent, seed, config_hash)] if getattr(args, "force", False) else []
    if csv.exists() and config_hash in set(read_results_csv(csv, rerun=rerun)["config_hash"]):
        print(f"cell {agent}@{seed} already done in {csv}", file=sys.stderr)
        return 0
    result = run_one(args, agent, seed, folder)
    row = bench_row(args, result, config_hash)
    write_atomic(csv, pd.DataFrame([row]).to_csv(index=False))
    print(json.dumps({**row, "out": str(folder)}))
    print(f"merge finished cells with: kd-gym report {args.out} --out {args.out}", file=sys.stderr)
    return 0


def _strip_flags(argv: list[str], dropped: tuple[str, ...], options: set[str]) -> list[str]:
    """``argv`` without the flags ``dropped`` (each with its value, as ``--flag value`` or ``--flag=value``, or an
    abbreviation argparse accepted: a prefix of one dropped flag that is no flag of its own)."""
    kept, skip = [], False
    for token in argv:
        if skip:
            skip = False
            continue
        name, has_value, _ = token.partition("=")
        prefix_of = [d for d in dropped if d.startswith(name)] if name.startswith("--") and name not in options else []
        if name in dropped or len(prefix_of) == 1:
            skip = not has_value
            continue
        kept.append(token)
    return kept


def sweep_config(args: argparse.Namespace) -> dict:
    """The W&B sweep of the bench's grid: ``method: grid`` over ``cell`` (every ``AGENT@SEED``), ``metric:
    dev_metric`` (logged by every run; the grid optimises nothing), and the bench's command line (every env, agent
    and task flag as given, ``--agents``, ``--seeds``, ``--out`` explicit, ``--track``) followed by ``${args}``.

    :param args: parsed ``kd-gym bench`` flags, with ``args.argv`` (set by ``kd_gym.cli.main``).
    """
    name = getattr(args, "command", "bench")
    argv = list(getattr(args, "argv", [name]))
    options = {o for action in subcommand_parser(name)._actions for o in action.option_strings}
    flags = _strip_flags(argv[1:], DROPPED_FLAGS, options)
    flags += ["--agents", args.agents, "--seeds", args.seeds, "--out", str(args.out)]
    if "--track" not in flags:
        flags.append("--track")
    return {"program": "kd_gym/cli.py", "method": "grid", "metric": {"name": "dev_metric", "goal": "maximize"},
            "parameters": {SWEEP_PARAMETER: {"values": grid_cells(args)}},
            "command": ["${env}", "${interpreter}", "-m", "kd_gym.cli", name, *flags, "${args}"]}


def emit_sweep(args: argparse.Namespace) -> int:
    """Write :func:`sweep_config` to ``args.emit_sweep``, check it with the sweep checker, print how to run it;
    run no cell. Returns the exit code."""
    config = sweep_config(args)
    path = Path(args.emit_sweep)
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# The (agent, seed) grid of: kd-gym {shlex.join(getattr(args, 'argv', []))}\n"
              f"# {len(config['parameters'][SWEEP_PARAMETER]['values'])} runs, one cell each, into "
              f"{args.out}/cells/; merge them with: kd-gym report {args.out} --out {args.out}\n")
    path.write_text(header + yaml.safe_dump(config, sort_keys=False, width=10_000))
    check_sweep(path)
    print(f"wrote {path} ({len(config['parameters'][SWEEP_PARAMETER]['values'])} cells); run it with\n"
          f"  wandb sweep --project {args.wandb_project} {path}\n  wandb agent <entity>/{args.wandb_project}/<id>   "
          "# on every machine\nthen, with the cell folders gathered under one folder:\n"
          f"  kd-gym report {args.out} --out {args.out}")
    return 0


def _cell_results(folder: Path) -> list[Path]:
    return sorted(folder.glob(f"cells/*/{RESULTS}"))


def result_files(paths: list[str | Path]) -> list[Path]:
    """The ``results.csv`` files behind ``paths``: a file as given; a folder gives its ``results.csv`` (a bench)
    and those of its cells (``cells/*/results.csv``, written by ``--cell`` runs).

    :raises ValueError: naming a path that is neither.
    """
    files = []
    for path in map(Path, paths):
        found = [path] if path.is_file() else ([path / RESULTS] if (path / RESULTS).is_file() else [])
        found += _cell_results(path) if path.is_dir() else []
        if not found:
            raise ValueError(f"{path} is neither a results.csv file nor a folder with results.csv or "
                             f"cells/*/{RESULTS}; pass a bench's --out folder or its results.csv")
        files += [f for f in found if f not in files]
    return files


def _history_path(csv: Path, agent: str, seed: int) -> Path:
    """Where the dev curve of a cell read from ``csv`` lies: beside it for a cell's own results.csv, else in the
    bench folder's ``cells/``."""
    own = cell_folder(csv.parent.parent.parent, agent, seed)
    return csv.parent / "history.csv" if own == csv.parent else cell_folder(csv.parent, agent, seed) / "history.csv"


def read_results(paths: list[str | Path], config_hashes: list[str] | None = None) -> pd.DataFrame:
    """The finished cells of ``paths`` (see :func:`result_files`) as one frame, one row per (scenario, agent, seed,
    config hash) (the first file wins), with ``source`` (the file) and ``history`` (the cell's ``history.csv``).

    :param config_hashes: keep only rows of these configs (``config_hash``); None: all.
    :raises ValueError: when an agent of a scenario has rows of more than one config (a results.csv keeps the rows
        of earlier bench configs), naming them and how to choose.
    """
    frames = []
    for csv in result_files(paths):
        rows = read_results_csv(csv, extra_columns=("source", "history"), runs_cells=False)  # merged: these two
        rows["source"] = str(csv)
        rows["history"] = [str(_history_path(csv, a, int(s))) for a, s in zip(rows["agent"], rows["seed"])]
        frames.append(rows)
    frame = pd.concat(frames, ignore_index=True)
    frame["config_hash"] = frame["config_hash"].astype(str)
    frame["scenario"] = frame["scenario"].fillna("default") if "scenario" in frame else "default"
    if config_hashes:
        frame = frame[frame["config_hash"].isin(config_hashes)]
        if frame.empty:
            raise ValueError(f"no row has config hash {', '.join(config_hashes)}; see the config_hash column")
    frame = frame.drop_duplicates(["scenario", "agent", "seed", "config_hash"]).reset_index(drop=True)
    configs = frame.groupby(["scenario", "agent"], sort=False)["config_hash"].unique()
    mixed = configs[configs.map(len) > 1]
    if len(mixed):
        (scenario, agent), hashes = next(iter(mixed.items()))
        counts = ", ".join(f"{h} ({(frame['config_hash'] == h).sum()} rows, steps "
                           f"{_first(frame[frame['config_hash'] == h], 'steps', '?')})" for h in hashes)
        raise ValueError(f"scenario {scenario!r}, agent {agent!r}: rows of {len(hashes)} bench configs: {counts}; "
                         "a results.csv keeps the rows of earlier configs, so pass --config-hash for the ones to "
                         "report (one per agent)")
    return frame


def _first(rows: pd.DataFrame, column: str, default):
    values = rows[column].dropna() if column in rows else []
    return values.iloc[0] if len(values) else default


def title_of(rows: pd.DataFrame) -> str:
    """The heading a bench of these rows (one scenario) writes, from the columns :func:`bench_row` adds (older rows
    without them: the task's name and the online protocol)."""
    from agents.experiments.report import bench_title

    protocol = {"protocol": _first(rows, "protocol", "online")}
    if protocol["protocol"] != "online":
        protocol.update(train_students=int(_first(rows, "train_students", 0)),
                        eval_students=int(_first(rows, "eval_students", 0)))
    return bench_title(_first(rows, "bench_command", "bench"), _first(rows, "bench_task", _first(rows, "task", "?")),
                       _first(rows, "env", "?"), _first(rows, "scenario", "default"), int(_first(rows, "steps", 0)),
                       protocol)


def in_bench_order(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows of one scenario with agents in the order of the bench's ``--agents`` (its ``bench_agents`` column;
    agents it does not name after them, in order of first appearance), each agent's rows by seed: the order of the
    bench's own results.md, whatever order the files were read in."""
    named = _split(str(_first(rows, "bench_agents", "")))
    order = {agent: i for i, agent in enumerate(named + [a for a in rows["agent"].drop_duplicates() if a not in named])}
    return rows.assign(_order=rows["agent"].map(order)).sort_values(["_order", "seed"], kind="stable").drop(
        columns="_order")


def histories(frame: pd.DataFrame) -> dict[str, list[pd.DataFrame]]:
    """The dev curves of the rows of ``frame`` (its ``history`` column), per agent; cells without one are left out."""
    found: dict[str, list[pd.DataFrame]] = {}
    for agent, path in zip(frame["agent"], frame["history"]):
        if Path(path).exists():
            found.setdefault(agent, []).append(pd.read_csv(path))
    return found


def write_report(frame: pd.DataFrame, out: Path, command: str) -> str:
    """Write ``results.md``, the figures and ``results-merged.csv`` (the rows behind them) for the rows of
    :func:`read_results`; return the markdown.

    One scenario: the bench's own ``results.md``, ``curves.png``, ``weights.png``. Several: a table aggregated over
    scenarios first (:func:`agents.experiments.report.aggregate_report`), then each scenario's tables, with figures
    ``curves-<scenario>.png`` and ``weights-<scenario>.png``.
    """
    from agents.experiments.plots import plot_curves, plot_weights
    from agents.experiments.report import aggregate_report, bench_report

    out.mkdir(parents=True, exist_ok=True)
    scenarios = list(frame["scenario"].drop_duplicates())
    parts = []
    if len(scenarios) > 1:
        parts += [f"# kd-gym report: {len(scenarios)} scenarios", "", aggregate_report(frame)]
    for scenario in scenarios:
        rows = in_bench_order(frame[frame["scenario"] == scenario])
        metric = _first(rows, "metric", "metric")
        one = len(scenarios) == 1
        parts.append(bench_report(rows, command=command if one else None, title=title_of(rows), metric_label=metric,
                                  heading="#" if one else "##"))
        suffix = "" if one else f"-{scenario}"
        found = histories(rows)
        plot_curves(found, out / f"curves{suffix}.png", title=f"dev {metric}, {scenario}")
        plot_weights(found, out / f"weights{suffix}.png")
    if len(scenarios) > 1:
        parts += [f"Command: `{command}`", ""]
    text = "\n".join(parts)
    write_atomic(out / "results.md", text)
    write_atomic(out / "results-merged.csv", frame.to_csv(index=False))
    return text


def report(args: argparse.Namespace) -> int:
    """``kd-gym report``: merge the finished cells of ``args.paths`` and write the bench's tables and figures into
    ``args.out``. Returns the exit code."""
    started = time.perf_counter()
    frame = read_results(args.paths, args.config_hash)
    command = "kd-gym " + shlex.join(getattr(args, "argv", ["report", *map(str, args.paths)]))
    text = write_report(frame, Path(args.out), command)
    print(text)
    print(f"\n{len(frame)} cells from {frame['source'].nunique()} file(s); wrote {args.out}/results.md, "
          f"results-merged.csv and the figures ({time.perf_counter() - started:.0f} s)")
    return 0

"""``kd-gym bench`` and its preset ``kd-gym demo``: agents x seeds on one scenario, resumable, with tables and plots.

Every (agent, seed) cell trains one student for the same number of steps. A finished cell is written to
``results.csv`` at once (atomically), so a killed bench picks up where it stopped: cells already in the file with the
same config hash are not run again. ``demo`` is the same bench with its own defaults and one step first: build the
default teacher pool if it is missing.

With ``--jobs N`` (by default one per CPU core for the lite env on a CPU, :func:`bench_jobs`) the missing cells run
in N worker processes. Each cell is seeded and runs on its own torch threads, so its row is the one the serial run
writes; the rows are written in the serial run's order (agent, then seed) whatever order the cells finish in.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import pickle
import shlex
import sys
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import pandas as pd
from tqdm.auto import tqdm

from agents.experiments.cells import bench_row, cell_config_hash, cell_folder, read_results_csv, write_atomic
from agents.experiments.cells import split_list as _split
from agents.experiments.common import (
    check_env_options,
    env_kwargs_from,
    protocol_kwargs_from,
    run_one,
    set_threads,
)
from kd_gym.cli import task_kwargs_from

BENCH_DEFAULTS = {"agents": "no_kd,uniform,best_teacher,confidence,reinforce,ppo", "seeds": "0,1,2,3,4",
                  "out": "runs/bench", "protocol": "train-eval"}
# reinforce learns over 240,000 student steps (docs/agents.md): a bench's, not a first demo's; the demo shows the
# gold router, which learns online from the labelled rows
DEMO_DEFAULTS = {"agents": "no_kd,uniform,best_teacher,confidence,oracle,gold-router,ppo", "seeds": "0,1,2",
                 "out": "runs/demo", "protocol": "online"}  # online: the first demo stays within 15 minutes
MAX_AUTO_JOBS = 8
"""the most worker processes ``--jobs 0`` starts: each holds its own env (the task's tensors, a student) and torch"""
AUTO_JOBS_MIN_STEPS = 100
"""``--jobs 0`` runs a bench of shorter cells (``--steps``) in this process: a worker takes about 10 s to start
(importing torch, transformers and datasets, building the env), longer than such a cell takes to run"""


def bench_jobs(args: argparse.Namespace, cells: int) -> int:
    """How many worker processes run ``cells`` missing cells: ``--jobs``, or for ``--jobs 0`` (auto), with the lite
    env on a machine without CUDA and ``--steps`` of at least :data:`AUTO_JOBS_MIN_STEPS`, one per CPU core that a
    cell's ``--threads`` (1 by default there) leave free, at most :data:`MAX_AUTO_JOBS`; 1 otherwise (a full student
    uses every thread, or the GPU). Never more than ``cells``."""
    import torch

    jobs = getattr(args, "jobs", 1)  # a Namespace made without the flag runs the cells one after the other
    if jobs == 0:
        on_cpu = args.env == "lite" and not torch.cuda.is_available()  # where set_threads gives a cell 1 thread
        if on_cpu and args.steps >= AUTO_JOBS_MIN_STEPS:
            jobs = min((os.cpu_count() or 1) // max(args.threads, 1), MAX_AUTO_JOBS)
    return max(1, min(jobs, cells))


def _cell_line(agent: str, seed: int, dev: float, test: float, wall_s: float) -> str:
    return f"{agent:>14} seed {seed}: dev {dev:.4f}  test {test:.4f}  ({wall_s:.1f} s)"


def run_bench(args: argparse.Namespace) -> pd.DataFrame:
    """Run the cells of ``args.agents`` x ``args.seeds`` missing from ``args.out/results.csv``; return all its rows.

    The rows already there are checked first (:func:`~agents.experiments.cells.read_results_csv`): a repeated
    cell, a value that is no result or a column kd-gym does not write is an error naming the line, before any cell
    runs. With ``args.force`` the command's cells run again and their rows are replaced.

    :param args: parsed ``kd-gym bench`` (or ``demo``) flags; ``args.jobs`` worker processes run the cells
        (:func:`bench_jobs`; absent: 1, one after the other in this process).
    """
    import gymnasium as gym

    from agents.experiments.run import ENVS

    out = Path(args.out)
    csv = out / "results.csv"
    cells = [(a, int(s), cell_config_hash(args, a)) for a in _split(args.agents) for s in _split(args.seeds)]
    force = getattr(args, "force", False)
    rows = read_results_csv(csv, rerun=cells if force else ()).to_dict("records") if csv.exists() else []
    out.mkdir(parents=True, exist_ok=True)
    done = {(r["agent"], int(r["seed"]), r["config_hash"]) for r in rows}
    todo = [c for c in cells if c not in done]
    print(f"{len(cells)} cells, {len(cells) - len(todo)} already done, {len(todo)} to run", file=sys.stderr)
    if not todo:
        return pd.DataFrame(rows)
    env = gym.make(ENVS[args.env], **env_kwargs_from(args), episode_steps=args.steps)
    jobs = bench_jobs(args, len(todo))
    if jobs > 1:
        env.close()  # it has computed whatever the cache lacked, once, before the workers read it
        del env
        return pd.DataFrame(_run_in_workers(args, todo, jobs, rows, csv))
    for agent, seed, config_hash in tqdm(todo, desc="bench cells", unit="cell"):
        result = run_one(args, agent, seed, cell_folder(out, agent, seed), built_env=env)
        row = bench_row(args, result, config_hash)
        rows.append(row)
        write_atomic(csv, pd.DataFrame(rows).to_csv(index=False))
        tqdm.write(_cell_line(agent, seed, result.dev_metric, result.test_metric, result.wall_s), file=sys.stderr)
    return pd.DataFrame(rows)


_worker_env = None
"""the env of a bench worker process: built for its first cell, reused for the others (as the serial bench does)"""


def _run_cell_in_worker(args: argparse.Namespace, agent: str, seed: int, config_hash: str) -> dict:
    """In a worker process: run cell (agent, seed) and return its ``results.csv`` row."""
    global _worker_env
    import gymnasium as gym

    from agents.experiments.run import ENVS

    if _worker_env is None:
        _worker_env = gym.make(ENVS[args.env], **env_kwargs_from(args), episode_steps=args.steps)
    result = run_one(args, agent, seed, cell_folder(Path(args.out), agent, seed), built_env=_worker_env,
                     progress=False)
    return bench_row(args, result, config_hash)


def _start_worker(args: argparse.Namespace, parent: int) -> None:
    """A worker's start: the threads of a cell from the start (while its env is built), and a watch that ends the
    worker when the bench that started it is gone (killed, it cannot tell its workers; they would run on)."""
    import threading

    set_threads(args)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(2.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="kd-gym-parent-watch").start()


def _picklable(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` without what a worker process does not need and cannot receive (``func``, the command's function)."""
    sendable = argparse.Namespace(**{k: v for k, v in vars(args).items() if k != "func"})
    try:
        pickle.dumps(sendable)
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        raise ValueError(f"the options of this bench cannot be sent to worker processes ({error}); "
                         "run it with --jobs 1") from error
    return sendable


def _run_in_workers(args: argparse.Namespace, todo: list[tuple[str, int, str]], jobs: int, rows: list[dict],
                    csv: Path) -> list[dict]:
    """Run the cells ``todo`` in ``jobs`` worker processes; after each finished cell, rewrite ``csv`` with ``rows``
    (the rows already there) and the finished cells' rows in the order of ``todo``. Returns all the rows.

    When a cell fails, the cells not started yet are cancelled, those running are waited for and written, and a
    ``RuntimeError`` names the failed cell.
    """
    sendable = _picklable(args)
    finished: dict[int, dict] = {}  # index in todo -> row
    failed: tuple[str, int, BaseException] | None = None
    print(f"running them in {jobs} worker processes", file=sys.stderr)
    # spawn, not fork: a forked child of a process that has used torch's thread pools can deadlock
    pool = ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(sendable, os.getpid()))
    bar = tqdm(total=len(todo), desc="bench cells", unit="cell")
    try:
        running: dict[Future, int] = {pool.submit(_run_cell_in_worker, sendable, *cell): i
                                      for i, cell in enumerate(todo)}
        while running:
            completed, _ = wait(running, return_when=FIRST_COMPLETED)
            for future in completed:
                index = running.pop(future)
                agent, seed, _ = todo[index]
                error = future.exception()
                if error is not None:
                    if failed is None:
                        failed = (agent, seed, error)
                        # cancel the cells not started yet; those running finish and are written
                        running = {other: i for other, i in running.items() if not other.cancel()}
                    continue
                row = finished[index] = future.result()
                write_atomic(csv, pd.DataFrame(rows + [finished[i] for i in sorted(finished)]).to_csv(index=False))
                tqdm.write(_cell_line(agent, seed, row["dev_metric"], row["test_metric"], row["wall_s"]),
                           file=sys.stderr)
                bar.update(1)
    finally:  # also on Ctrl-C: no cell starts after this
        pool.shutdown(wait=True, cancel_futures=True)
        bar.close()
    if failed is not None:
        agent, seed, error = failed
        raise RuntimeError(f"bench cell {agent}@{seed} failed: {type(error).__name__}: {error}; {csv} holds the cells "
                           f"that finished ({len(finished)} of the {len(todo)} to run); rerun the same command to run "
                           "the rest") from error
    return rows + [finished[i] for i in sorted(finished)]


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
    if not args.teachers and getattr(args, "command", "bench") == "bench":  # demo prints the whole pool first
        print_headroom(args.task, args.split_seed or 0, task_kwargs_from(args), args.pool or "siloed")
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
    write_atomic(out / "results.md", report)
    histories = _histories(frame, out)
    plot_curves(histories, out / "curves.png", title=f"dev {metric}, {args.scenario}")
    plot_weights(histories, out / "weights.png")
    print(report)
    print(f"\nwrote {out}/results.csv, results.md, curves.png, weights.png ({time.perf_counter() - started:.0f} s)")
    return 0


def print_headroom(task: str, split_seed: int = 0, task_kwargs: dict | None = None, pool: str = "siloed") -> None:
    """Print the headroom verdict of the task's built pool (:mod:`kd_gym.headroom`), before any cell runs; nothing
    where the pool is not built yet or cannot be found (the env then says what to do)."""
    from kd_gym.defaults import default_pool_dir
    from kd_gym.headroom import pool_headroom, verdict_lines
    from kd_gym.prepare.pool_report import pool_manifest
    from kd_gym.tasks import load_task

    try:
        loaded = load_task(task, seed=split_seed, **(task_kwargs or {}))
        folder = default_pool_dir(loaded, pool=pool)
    except (ValueError, FileNotFoundError):
        return
    if (folder / "pool.json").exists():
        print("\n".join(verdict_lines(pool_headroom(pool_manifest(folder, loaded)))), "\n", flush=True)


def ensure_default_pool(task: str, split_seed: int = 0, task_kwargs: dict | None = None, pool: str = "siloed") -> None:
    """Build the default teacher pool of ``task`` if it is not there yet (once; minutes on a CPU); print its
    manifest.

    :param task: a task name, as ``kd-gym teachers build --task`` takes it.
    :param split_seed: the seed of the task's split (the env option ``split_seed``).
    :param task_kwargs: how to read a custom task (the task flags, :class:`kd_gym.tasks.TaskOptions`).
    :param pool: which default pool (the env option ``pool``).
    """
    from kd_gym.defaults import default_pool_dir
    from kd_gym.prepare.pool_build import build_default_pool
    from kd_gym.prepare.pool_report import format_manifest

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

"""``kd-gym bench --jobs N``: cells run in N worker processes give the rows of the cells run one after the other, in
the same order; a cell that fails leaves the finished cells in results.csv and names itself."""

from __future__ import annotations

import argparse
import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from test_cli import tiny_flags

from kd_gym.cli import main

CELLS = [("uniform", 0), ("uniform", 1), ("no_kd", 0), ("no_kd", 1)]  # agent-major, as --agents x --seeds

FAILING_AGENT = '''
from agents.baselines import UniformAgent


class FailsOnSeedOne(UniformAgent):
    """Equal weights, except with seed 1, where its first action fails."""

    name = "fails_on_seed_one"

    def weights(self, obs):
        if self.config.seed == 1:
            raise RuntimeError("this agent fails with seed 1")
        return super().weights(obs)
'''


def test_cells_in_two_workers_are_the_cells_run_one_after_the_other(tiny_env_kwargs, tmp_path):
    # a small SGD rate: the default's solves the tiny task in 6 steps, and every cell would score 100% on dev
    bench = ["bench", "--agents", "uniform,no_kd", "--seeds", "0,1", "--steps", "6", "--no-oracle",
             "--ngram-sgd-lr", "1", *tiny_flags(tiny_env_kwargs)]
    assert main([*bench, "--jobs", "1", "--out", str(tmp_path / "serial")]) == 0
    assert main([*bench, "--jobs", "2", "--out", str(tmp_path / "workers")]) == 0
    serial = pd.read_csv(tmp_path / "serial" / "results.csv")
    workers = pd.read_csv(tmp_path / "workers" / "results.csv")
    assert list(zip(serial["agent"], serial["seed"])) == CELLS
    same = ["agent", "seed", "dev_metric", "test_metric", "eval_test_std", "config_hash"]
    pd.testing.assert_frame_equal(workers[same], serial[same])  # the same rows in the same order
    assert serial["dev_metric"].nunique() > 1  # the cells differ, so equal rows are not a coincidence
    for agent, seed in CELLS:  # and the same dev curves, step by step
        history = f"cells/{agent}__{seed}/history.csv"
        pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "workers" / history),
                                      pd.read_csv(tmp_path / "serial" / history))


def test_a_failing_cell_names_itself_and_leaves_the_finished_cells(tiny_env_kwargs, tmp_path, monkeypatch):
    (tmp_path / "failing_agents.py").write_text(FAILING_AGENT)
    monkeypatch.syspath_prepend(str(tmp_path))  # spawned workers start with the parent's sys.path
    out = tmp_path / "bench"
    with pytest.raises(RuntimeError, match=r"bench cell failing_agents:FailsOnSeedOne@1 failed: RuntimeError: "
                                           r"this agent fails with seed 1; .*results.csv holds the cells that "
                                           r"finished \(1 of the 2 to run\)"):
        main(["bench", "--agents", "failing_agents:FailsOnSeedOne", "--seeds", "0,1", "--steps", "4", "--no-oracle",
              "--protocol", "online", "--jobs", "2", "--out", str(out), *tiny_flags(tiny_env_kwargs)])
    frame = pd.read_csv(out / "results.csv")
    assert list(zip(frame["agent"], frame["seed"])) == [("failing_agents:FailsOnSeedOne", 0)]


def test_auto_jobs_use_the_cores_only_for_lite_cells_on_a_cpu_that_outlast_a_workers_start(monkeypatch):
    import torch

    from agents.experiments.bench import AUTO_JOBS_MIN_STEPS, MAX_AUTO_JOBS, bench_jobs

    monkeypatch.setattr("os.cpu_count", lambda: 64)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)

    def jobs(cells: int, **flags) -> int:
        flags = {"jobs": 0, "env": "lite", "threads": 0, "steps": 1500, **flags}
        return bench_jobs(argparse.Namespace(**flags), cells)

    assert jobs(30) == MAX_AUTO_JOBS
    assert jobs(3) == 3  # no idle worker
    assert jobs(30, threads=16) == 4  # 64 cores, 16 threads a cell
    assert jobs(30, steps=AUTO_JOBS_MIN_STEPS - 1) == 1
    assert jobs(30, env="full") == 1
    assert jobs(30, jobs=2, env="full", steps=4) == 2  # asked for
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert jobs(30) == 1


def test_an_explicit_none_flag_reaches_a_worker_as_none():
    from agents.experiments.common import env_kwargs_from
    from kd_gym.cli import build_parser

    args = build_parser().parse_args(["bench", "--gold-labels", "none"])
    del args.func  # as the bench sends it
    assert env_kwargs_from(pickle.loads(pickle.dumps(args)))["gold_labels"] is None


def _children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (read from /proc)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process table from /proc")
def test_workers_end_when_the_bench_that_started_them_is_killed(tiny_env_kwargs, tmp_path):
    command = [sys.executable, "-m", "kd_gym.cli", "bench", "--agents", "uniform,no_kd", "--seeds", "0",
               "--steps", "100000", "--no-oracle", "--protocol", "online", "--jobs", "2",
               "--out", str(tmp_path / "bench"), *tiny_flags(tiny_env_kwargs)]
    bench = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env={**os.environ, "WANDB_MODE": "disabled"})
    try:
        deadline, workers = time.monotonic() + 120, []
        while time.monotonic() < deadline and len(workers) < 2:  # the pool's workers (and its resource tracker)
            time.sleep(1.0)
            workers = [p for p in _children(bench.pid) if "spawn_main" in Path(f"/proc/{p}/cmdline").read_text()]
        assert len(workers) >= 2, "the bench started no worker processes"
        bench.send_signal(signal.SIGKILL)
        bench.wait()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() for p in workers):
            time.sleep(0.5)
        alive = [p for p in workers if Path(f"/proc/{p}").exists()
                 and Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"]
        assert not alive, f"workers {alive} outlived their bench"
    finally:
        if bench.poll() is None:
            bench.kill()

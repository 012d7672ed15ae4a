"""scripts/bench_vector.py --learn --parts: every part of the gold router's learning is timed inside the run."""

from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _bench_vector(monkeypatch):
    monkeypatch.syspath_prepend(str(ROOT / "scripts"))  # as `python scripts/bench_vector.py` has it: its helpers
    spec = importlib.util.spec_from_file_location("bench_vector", ROOT / "scripts" / "bench_vector.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_learn_parts_times_every_part_over_one_student_and_over_n(monkeypatch):
    bench = _bench_vector(monkeypatch)
    data = bench.tiny_data(n_train=400, n_dev=100)
    steps = 30  # past the router's 20 warm-up steps, so that it routes and updates
    parts = bench.learn_parts([2], {"data": data, "device": "cpu", "episode_steps": steps}, steps)
    assert set(parts) == {0, 2}
    for timings in parts.values():
        assert all(timings[label] > 0 for label in bench.LEARN_PARTS), timings  # each method ran under its timer
        assert sum(timings[label] for label in bench.LEARN_PARTS) <= timings["all"]

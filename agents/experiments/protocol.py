"""The two protocols of a run: how an agent's result is measured.

- ``online`` (the paper's joint training): the agent learns while it trains one student for ``steps`` updates;
  that student is the result.
- ``train-eval`` (how RL benchmarks measure a policy): the agent learns over ``train_students`` students (episodes
  of ``steps`` updates, a fresh student each), then its frozen policy (``predict(obs, deterministic=True)``) trains
  ``eval_students`` fresh students on seeds it never trained on; their mean dev and test metrics are the result and
  the student steps spent learning are reported beside it. Agents that learn nothing (``Agent.learns`` False: the
  fixed weightings) skip the training phase.

Evaluation seeds are disjoint from every training seed: bench seed ``s`` trains on the env seeded with ``s`` (its
first reset; later resets continue that stream) and evaluates on :func:`eval_seeds` ``(s, M)``, the same for every
agent, so a paired comparison between agents compares the same evaluation students.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

PROTOCOLS = ("online", "train-eval")
EVAL_SEED_BASE = 1_000_000
"""evaluation seeds start here (far from the small seeds of training runs)"""


def eval_seeds(seed: int, eval_students: int) -> list[int]:
    """The env seeds of the ``eval_students`` evaluation students of run seed ``seed`` (the same for every agent)."""
    return [EVAL_SEED_BASE + 1000 * seed + j for j in range(eval_students)]


def check_protocol(protocol: str, train_students: int, eval_students: int) -> None:
    """``ValueError`` naming the bad value and what is valid."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not one of {list(PROTOCOLS)}")
    for name, value in (("train_students", train_students), ("eval_students", eval_students)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid; use an integer >= 1 (students)")
    if eval_students > 1000:
        raise ValueError(f"eval_students={eval_students} is more than 1000, the evaluation seeds of one run seed")


def evaluate_policy(agent, monitors: list[gym.Wrapper], steps: int, seeds: list[int]) -> list[dict[str, Any]]:
    """Train one fresh student per seed with the agent's frozen, deterministic policy; nothing is learned.

    :param agent: an :class:`agents.Agent` built on the env the monitors wrap.
    :param monitors: one :class:`~agents.experiments.run.TrainingMonitor` per seed around that env (each records its
        student's dev curve).
    :param steps: student updates per student (the env's ``episode_steps``).
    :param seeds: the env seed of each student's reset.
    :return: per student ``{"seed", "dev_metric", "test_metric"}`` of the student after its last update.
    """
    results = []
    for monitor, seed in zip(monitors, seeds):
        obs, _ = monitor.reset(seed=seed)
        for _ in range(steps):
            obs, _, terminated, truncated, _ = monitor.step(agent.predict(obs, deterministic=True))
            if terminated:
                break
        env = monitor.unwrapped
        results.append({"seed": seed, "dev_metric": env.evaluate("dev")["metric"],
                        "test_metric": env.evaluate("test")["metric"]})
    return results


def summarize_eval(results: list[dict[str, Any]]) -> dict[str, float]:
    """Mean dev and test metrics over the evaluation students, and the test metric's std across them."""
    tests = np.array([r["test_metric"] for r in results])
    return {"dev_metric": float(np.mean([r["dev_metric"] for r in results])), "test_metric": float(tests.mean()),
            "eval_test_std": float(tests.std())}

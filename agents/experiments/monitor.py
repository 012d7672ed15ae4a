"""The recorder of a run: :class:`TrainingMonitor` wraps the env an agent trains a student in and keeps its history.

It sits at the bottom of the harness: the runner (:mod:`~agents.experiments.run`) and the protocols
(:mod:`~agents.experiments.protocol`) both use it, and it imports neither.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from tqdm.auto import tqdm

ENVS = {"lite": "kd_gym/TeacherSelectionLite-v0", "full": "kd_gym/TeacherSelection-v0"}
DevMetrics = Callable[[], dict[str, float]]
"""gives a student's metrics on the env's dev subset now (what ``env.evaluate("dev", subset=True)`` gives)"""


class TrainingMonitor(gym.Wrapper):
    """Records what happens while an agent trains a student, without changing it.

    Every ``eval_interval`` student updates and at the end of the first episode it measures the dev metric on the
    env's fixed dev subset (``env.evaluate("dev", subset=True)``, which changes nothing) and the mean weight per
    teacher since the last record; at the end of the first episode it keeps the student (``env.student_state_dict()``),
    so that the trained student survives a reset by the agent.

    A student stepped elsewhere (a sub-env of a vector env) is recorded by calling :meth:`observe_reset` and
    :meth:`observe_step` with its own reset and steps, and its dev metrics.

    :param env: a TeacherSelection env (wrappers allowed).
    :param eval_interval: student updates between records.
    :param on_record: called with each record (a dict), e.g. to log it to W&B.
    :param progress: a tqdm bar advanced by one per step.
    :param keep_student: keep the student at the end of the first episode (the online protocol evaluates it);
        False for evaluation students, whose metrics are taken when they are done.
    """

    def __init__(self, env: gym.Env, eval_interval: int = 50, on_record=None, progress: tqdm | None = None,
                 keep_student: bool = True) -> None:
        super().__init__(env)
        self.eval_interval = eval_interval
        self.on_record = on_record
        self.progress = progress
        self.keep_student = keep_student
        self.history: list[dict[str, Any]] = []
        self.final_student: dict[str, torch.Tensor] | None = None
        self.first_episode_done = False
        self.steps = 0
        self._weights_sum = np.zeros(env.unwrapped.num_teachers)
        self._reward_sum = 0.0
        self._window = 0
        # per teacher: the summed weight it got on instances of the silo it is the expert of, and their count
        self._expert_sum = np.zeros(env.unwrapped.num_teachers)
        self._expert_count = np.zeros(env.unwrapped.num_teachers)

    def _route(self, weights: np.ndarray, silo_expert: np.ndarray) -> None:
        rows = np.flatnonzero(silo_expert >= 0)
        experts = silo_expert[rows]
        np.add.at(self._expert_sum, experts, weights[rows, experts])
        np.add.at(self._expert_count, experts, 1.0)

    def reset(self, **kwargs):
        obs, info = self.env.reset(**kwargs)
        self.observe_reset(info)
        return obs, info

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.observe_step(reward, terminated, truncated, info)
        return obs, reward, terminated, truncated, info

    def observe_reset(self, info: dict[str, Any], dev: DevMetrics | None = None) -> None:
        """Record a reset (the curve starts at the first one).

        :param info: the reset's info, as the single env gives it.
        :param dev: called when a record is due, gives the student's dev-subset metrics (``{"metric", "loss", ...}``);
            None: ``env.evaluate("dev", subset=True)`` of the wrapped env.
        """
        if not self.history:
            self._record(info, dev)

    def observe_step(self, reward: float, terminated: bool, truncated: bool, info: dict[str, Any],
                     dev: DevMetrics | None = None) -> None:
        """Record a step: its reward and weights (``info["weights"]`` (B, K)) and, when due, the dev metrics
        (``dev`` as in :meth:`observe_reset`)."""
        self.steps += 1
        self._window += 1
        self._reward_sum += reward
        self._weights_sum += info["weights"].mean(0)
        if "silo_expert" in info:  # routing diagnostics: the weight each instance's silo expert got
            self._route(info["weights"], info["silo_expert"])
        if self.progress is not None:
            self.progress.update(1)
        first_episode_ends = (terminated or truncated) and not self.first_episode_done
        if self.steps % self.eval_interval == 0 or first_episode_ends:
            self._record(info, dev)
        if first_episode_ends:
            self.first_episode_done = True
            if self.keep_student:
                self.final_student = self.unwrapped.student_state_dict()

    def _record(self, info: dict[str, Any], dev_metrics: DevMetrics | None) -> None:
        dev = self.unwrapped.evaluate("dev", subset=True) if dev_metrics is None else dev_metrics()
        window = max(self._window, 1)
        record = {"student_step": info["student_steps"], "env_step": self.steps,
                  "dev_metric": dev["metric"], "dev_loss": dev["loss"],
                  "reward": self._reward_sum / window,
                  **{f"weight/{name}": float(w) / window for name, w in zip(self.unwrapped.teacher_names,
                                                                           self._weights_sum)}}
        for key in ("loss", "ce", "kd"):
            if key in info:
                record[f"train/{key}"] = info[key]
        if self._expert_count.any():  # how much of its weight an instance gave its silo's expert (oracle: 1)
            record["routing/expert_weight"] = float(self._expert_sum.sum() / self._expert_count.sum())
            for name, total, count in zip(self.unwrapped.teacher_names, self._expert_sum, self._expert_count):
                if count:
                    record[f"routing/{name}"] = float(total / count)
        self.history.append(record)
        self._weights_sum[:] = 0
        self._expert_sum[:], self._expert_count[:] = 0, 0
        self._reward_sum, self._window = 0.0, 0
        if self.on_record is not None:
            self.on_record(record)

    def state_dict(self) -> dict[str, Any]:
        """The records, the running sums since the last record and the kept student, for a run checkpoint."""
        return {"history": self.history, "steps": self.steps, "weights_sum": self._weights_sum.copy(),
                "reward_sum": self._reward_sum, "window": self._window, "final_student": self.final_student,
                "expert_sum": self._expert_sum.copy(), "expert_count": self._expert_count.copy()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict` (the records so far are not passed to ``on_record`` again)."""
        self.history = list(state["history"])
        self.steps, self._window, self._reward_sum = int(state["steps"]), int(state["window"]), state["reward_sum"]
        self._weights_sum = np.array(state["weights_sum"], dtype=np.float64)
        zeros = np.zeros_like(self._weights_sum)
        self._expert_sum = np.array(state.get("expert_sum", zeros), dtype=np.float64)
        self._expert_count = np.array(state.get("expert_count", zeros), dtype=np.float64)
        self.final_student = state["final_student"]
        self.first_episode_done = self.final_student is not None

"""Train one student under one agent and evaluate it: the job behind ``kd-gym train``, ``bench`` and ``demo``.

It touches the env only through its public surface (``evaluate``, ``student_state_dict``, ``save_student``,
``info``, documented attributes), as any runner could.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
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


@dataclass
class RunResult:
    """What one (agent, seed) run produced; metrics are the task's primary metric (``metric``) in [0, 1]."""

    agent: str
    seed: int
    dev_metric: float
    test_metric: float
    steps: int
    wall_s: float
    task: str
    env: str
    metric: str = "accuracy"
    extra: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        return {"agent": self.agent, "seed": self.seed, "dev_metric": round(self.dev_metric, 6),
                "test_metric": round(self.test_metric, 6), "steps": self.steps, "wall_s": round(self.wall_s, 2),
                "task": self.task, "env": self.env, "metric": self.metric, **self.extra}


def train_student(
    agent_name: str,
    *,
    env: str = "lite",
    steps: int = 1000,
    seed: int = 0,
    env_kwargs: dict[str, Any] | None = None,
    agent_kwargs: dict[str, Any] | None = None,
    out_dir: str | Path | None = None,
    eval_interval: int | None = None,
    on_record=None,
    progress: bool = True,
    built_env: gym.Env | None = None,
    checkpoint_every: int | None = None,
    protocol: str = "online",
    train_students: int = 4,
    eval_students: int = 2,
) -> RunResult:
    """Train one student for ``steps`` updates under agent ``agent_name``; evaluate it on dev and test.

    ``protocol="online"`` (the paper): the agent learns while it trains the student (one episode of ``steps``
    updates); the student at the end of that episode is the one evaluated and saved. ``protocol="train-eval"``: the
    agent learns over ``train_students`` episodes (a fresh student each), then its frozen policy trains
    ``eval_students`` fresh students on unseen seeds; the result is their mean (:mod:`agents.experiments.protocol`).

    :param agent_name: a name :func:`agents.make` knows (``reinforce``, ``single:2``, ``pkg.mod:Class``, ...).
    :param env: "lite" or "full".
    :param steps: student updates (the episode length).
    :param seed: seed of the agent and of the env's first reset (student init, batch order).
    :param env_kwargs: options of the env (fields of ``kd_gym.EnvConfig``); ``episode_steps`` is set to ``steps``.
    :param agent_kwargs: hyperparameters of the agent (fields of its ``Config``).
    :param out_dir: where to write ``result.json``, ``history.csv``, ``agent/`` and ``student.safetensors``.
    :param eval_interval: student updates between records of the dev curve (default: ``steps // 20``).
    :param on_record: called with each record of the dev curve (a dict).
    :param progress: show a progress bar.
    :param built_env: reuse an env already built with ``episode_steps=steps`` (a bench builds one for all cells).
    :param checkpoint_every: checkpoint into ``out_dir`` every this many student updates and, when ``out_dir``
        holds a checkpoint of the same run, resume from it (:mod:`agents.experiments.resume`); None: neither.
        Online runs only: a train-eval run is not checkpointed.
    :param protocol: "online" or "train-eval".
    :param train_students: train-eval: students (episodes of ``steps`` updates) the agent learns over.
    :param eval_students: train-eval: fresh students its frozen policy then trains; the result is their mean.
    """
    import agents
    import kd_gym  # noqa: F401  (registers the env ids)
    from agents.experiments.protocol import check_protocol, eval_seeds, evaluate_policy, summarize_eval
    from agents.experiments.resume import RunCheckpoint, run_config, supports_resume

    if env not in ENVS:
        raise ValueError(f"env must be one of {sorted(ENVS)}, got {env!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r} is invalid; use an integer >= 1 (student updates)")
    check_protocol(protocol, train_students, eval_students)
    interval = eval_interval or max(1, steps // 20)
    checkpoint, saved = None, None
    if protocol == "train-eval" and checkpoint_every is not None:
        print("kd-gym: a train-eval run is not checkpointed (online runs are); it starts afresh if killed",
              file=sys.stderr)
        checkpoint_every = None
    if checkpoint_every is not None:
        if out_dir is None:
            raise ValueError(f"checkpoint_every={checkpoint_every} needs a run folder to write to; pass out_dir")
        config = run_config(agent_name, seed, env, steps, interval, env_kwargs or {}, agent_kwargs or {})
        checkpoint = RunCheckpoint(out_dir, config, checkpoint_every)
        saved = checkpoint.load()  # before anything is built: a checkpoint of another run is an error at the door
    started = time.perf_counter() - (saved["wall_s"] if saved else 0.0)
    base = built_env if built_env is not None else gym.make(ENVS[env], **{**(env_kwargs or {}), "episode_steps": steps})
    if base.unwrapped.config.episode_steps != steps:
        raise ValueError(f"built_env has episode_steps={base.unwrapped.config.episode_steps} but steps={steps}; "
                         f"build it with gym.make(..., episode_steps={steps}) or pass "
                         f"steps={base.unwrapped.config.episode_steps}")
    bar = tqdm(total=steps, initial=saved["step"] if saved else 0, desc=f"{agent_name} seed {seed}", unit="step",
               leave=False, disable=not progress)  # train-eval: the total is set once the agent is built
    made: list = []  # the agent, once built: each record also carries its latest losses (SB3's logger values too)

    def record_with_agent_metrics(record: dict[str, Any]) -> None:
        if made:
            record.update({f"agent/{k}": float(v) for k, v in getattr(made[0], "metrics", {}).items()})
        if on_record is not None:
            on_record(record)

    monitored = TrainingMonitor(base, interval, on_record=record_with_agent_metrics, progress=bar)
    agent = agents.make(agent_name, monitored, **{"seed": seed, **(agent_kwargs or {})})
    made.append(agent)
    save_if_due, resume = None, {}
    if checkpoint is not None and not supports_resume(agent):
        print(f"kd-gym: agent {agent_name!r} is not checkpointed: its learn() takes no 'resume' (see agents.Agent)",
              file=sys.stderr)
    elif checkpoint is not None:
        if saved is not None:
            checkpoint.restore(saved, monitored, agent, seed)
            resume = {"resume": True}

        def save_if_due(local: dict[str, Any]) -> None:
            if checkpoint.due(monitored.steps, steps):
                checkpoint.save(monitored.steps, monitored, agent, monitored, time.perf_counter() - started)

    student_env = monitored.unwrapped
    if protocol == "online":
        agent.learn(steps, callback=save_if_due, **resume)
        if monitored.final_student is not None:
            student_env.load_student_state_dict(monitored.final_student)
        dev, test = student_env.evaluate("dev")["metric"], student_env.evaluate("test")["metric"]
        history, extra = monitored.history, {}
    else:
        learn_steps = train_students * steps if getattr(agent, "learns", True) else 0
        bar.reset(total=learn_steps + eval_students * steps)
        if learn_steps:
            agent.learn(learn_steps)
        seeds = eval_seeds(seed, eval_students)
        monitors = [TrainingMonitor(base, interval, progress=bar, keep_student=False) for _ in seeds]
        evaluated = evaluate_policy(agent, monitors, steps, seeds)
        scores = summarize_eval(evaluated)
        dev, test = scores["dev_metric"], scores["test_metric"]
        history = monitors[0].history  # the dev curve of the frozen policy's first evaluation student
        extra = {"protocol": protocol, "train_student_steps": learn_steps, "eval_students": eval_students,
                 "eval_test_std": round(scores["eval_test_std"], 6)}
    bar.close()
    result = RunResult(agent_name, seed, dev, test, steps, time.perf_counter() - started,
                       student_env.task_name, env, student_env.metric_name, extra=extra, history=history)
    result.extra["agent_metrics"] = {k: float(v) for k, v in getattr(agent, "metrics", {}).items()}
    if out_dir is not None:
        _write_run(Path(out_dir), result, agent, student_env,
                   student=evaluated[-1]["student"] if protocol == "train-eval" else None)
        if protocol == "train-eval" and monitored.history:
            import pandas as pd

            pd.DataFrame(monitored.history).to_csv(Path(out_dir) / "train_history.csv", index=False)
    if checkpoint is not None:
        checkpoint.remove()
    return result


def _write_run(out: Path, result: RunResult, agent, student_env, student: dict[str, torch.Tensor] | None) -> None:
    """``result.json``, ``history.csv``, ``agent/`` and ``student.safetensors`` (the evaluated student: ``student``'s
    weights when given (train-eval: the last evaluation student), else the env's student) in ``out``."""
    import pandas as pd
    from safetensors.torch import save_file

    out.mkdir(parents=True, exist_ok=True)
    (out / "result.json").write_text(json.dumps(result.summary(), indent=2))
    pd.DataFrame(result.history).to_csv(out / "history.csv", index=False)
    agent.save(out / "agent")
    if student is None:
        student_env.save_student(out / "student.safetensors")
    else:  # what StudentTrainer.save writes
        save_file({k: v.contiguous().cpu() for k, v in student.items()}, str(out / "student.safetensors"))

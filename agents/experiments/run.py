"""Train one student under one agent and evaluate it: the job behind ``kd-gym train``, ``bench`` and ``demo``.

It touches the env only through its public surface (``evaluate``, ``student_state_dict``, ``save_student``,
``info``, documented attributes), as any runner could.
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from tqdm.auto import tqdm

from agents.experiments.monitor import ENVS, DevMetrics, TrainingMonitor  # noqa: F401 (public here too)


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
    from agents.experiments.protocol import (
        check_protocol,
        eval_seeds,
        evaluate_policy,
        learn_phase,
        summarize_eval,
    )
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
        learn_steps = agent.learning_student_steps(steps, train_students) if getattr(agent, "learns", True) else 0
        bar.reset(total=learn_steps + eval_students * steps)
        train_phase = learn_phase(agent, monitored, steps, train_students, progress=bar) if learn_steps else "-"
        if learn_steps and hasattr(agent, "student_steps_learned"):  # an agent that keeps its own count
            learn_steps = int(agent.student_steps_learned)
        seeds = eval_seeds(seed, eval_students)
        monitors = [TrainingMonitor(base, interval, progress=bar, keep_student=False) for _ in seeds]
        evaluated = evaluate_policy(agent, monitors, steps, seeds)
        scores = summarize_eval(evaluated)
        dev, test = scores["dev_metric"], scores["test_metric"]
        history = monitors[0].history  # the dev curve of the frozen policy's first evaluation student
        extra = {"protocol": protocol, "train_student_steps": learn_steps, "eval_students": eval_students,
                 "eval_test_std": round(scores["eval_test_std"], 6), "train_phase": train_phase}
    bar.close()
    result = RunResult(agent_name, seed, dev, test, steps, time.perf_counter() - started,
                       student_env.task_name, env, student_env.metric_name, extra=extra, history=history)
    result.extra["learns_from"] = agent.learns_from
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

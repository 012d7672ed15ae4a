"""Resumable runs: a run checkpoints into its folder every N student updates, and the same command run again picks
up from the last checkpoint.

A checkpoint is one file, ``<run folder>/checkpoint.safetensors`` (:func:`agents.checkpoint.save_checkpoint`: data,
never pickle, replaced atomically), holding:

- ``config``: what defines the run's result (agent, seed, env kind, budget, dev-curve interval, env and agent
  options); a command whose config differs is refused, naming the differences;
- ``env``: ``env.unwrapped.state_dict()`` (student, optimizer, random streams, batch order, reward state);
- ``agent`` and ``agent_training``: the agent's :meth:`~agents.Agent.state_dict` and
  :meth:`~agents.Agent.training_state`;
- ``monitor``: the :class:`~agents.experiments.run.TrainingMonitor`'s records and running sums;
- ``step`` and ``wall_s``: student updates done and seconds spent so far.

A killed run loses at most the steps since its last checkpoint. The checkpoint is removed once the run has written
its results. Fixed agents and REINFORCE resume exactly (the same final metrics, records and saved student as an
uninterrupted run); SB3 agents approximately (see :mod:`agents.sb3`).
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

from agents.checkpoint import load_checkpoint, save_checkpoint

CHECKPOINT_FILE = "checkpoint.safetensors"


def _plain(value: Any) -> Any:
    """``value`` as JSON data: containers kept, objects (a Task, a TeacherPool) replaced by their type's name."""
    return json.loads(json.dumps(value, default=lambda obj: f"<{type(obj).__name__}>"))


def run_config(agent: str, seed: int, env: str, steps: int, eval_interval: int, env_kwargs: dict[str, Any],
               agent_kwargs: dict[str, Any]) -> dict[str, Any]:
    """What defines a run's result, as JSON data (the parameters of :func:`~agents.experiments.run.train_student`)."""
    return _plain({"agent": agent, "seed": seed, "env": env, "steps": steps, "eval_interval": eval_interval,
                   "env_kwargs": env_kwargs, "agent_kwargs": agent_kwargs})


def _flat(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    flat: dict[str, Any] = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def config_differences(saved: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``"name: <saved> in the checkpoint, <current> now"`` for every setting that differs (``unset`` if absent)."""
    before, after = _flat(saved), _flat(current)
    return [f"{key}: {before.get(key, 'unset')!r} in the checkpoint, {after.get(key, 'unset')!r} now"
            for key in sorted(set(before) | set(after)) if before.get(key, "unset") != after.get(key, "unset")]


def supports_resume(agent) -> bool:
    """Whether ``agent.learn`` can continue a checkpoint (takes ``resume``; agents built on :class:`agents.Agent`'s
    loop helpers do; a plug-in that overrides ``learn(total_steps, callback)`` does not, and runs unchecked)."""
    return "resume" in inspect.signature(agent.learn).parameters


class RunCheckpoint:
    """The checkpoint of one run (see the module docstring).

    :param folder: the run folder.
    :param config: the run's :func:`run_config`.
    :param every: student updates between checkpoints (>= 1).
    """

    def __init__(self, folder: str | Path, config: dict[str, Any], every: int) -> None:
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"checkpoint_every={every!r} is invalid; use an integer >= 1 (student updates between "
                             "checkpoints)")
        self.path = Path(folder) / CHECKPOINT_FILE
        self.config, self.every = config, every

    def load(self) -> dict[str, Any] | None:
        """The saved state to resume from, or None when the folder has no checkpoint.

        :raises ValueError: when the checkpoint was made by another config (naming each difference) or is damaged.
        """
        if not self.path.exists():
            return None
        saved = load_checkpoint(self.path)
        differences = config_differences(saved.get("config", {}), self.config)
        if differences:
            raise ValueError(f"the checkpoint {self.path} (step {saved.get('step', '?')} of "
                             f"{saved.get('config', {}).get('steps', '?')}) was made by another command: "
                             f"{'; '.join(differences)}. Rerun with its settings to resume it, or choose another "
                             f"run folder (--out), or delete the checkpoint to start over")
        return saved

    def save(self, step: int, env, agent, monitor, wall_s: float) -> None:
        """Write the run's state after ``step`` student updates (atomically: the previous checkpoint stays valid
        until this one is complete). Call it from ``agent.learn``'s callback, where ``agent.loop`` is current.

        :raises RuntimeError: when the agent's loop has not counted ``step`` steps (a ``learn`` that takes
            ``resume`` but does not keep :attr:`agents.Agent.loop`): its checkpoint could not be resumed.
        """
        if agent.loop.step != step:
            raise RuntimeError(f"agent {type(agent).__name__} cannot be checkpointed: its loop counts "
                               f"{agent.loop.step} steps after {step}; its learn() must keep agent.loop (use "
                               "Agent._observation / _advance, see agents.Agent)")
        save_checkpoint(self.path, {
            "config": self.config, "step": step, "wall_s": wall_s, "env": env.unwrapped.state_dict(),
            "agent": agent.state_dict(), "agent_training": agent.training_state(), "monitor": monitor.state_dict(),
        })

    def due(self, step: int, total_steps: int) -> bool:
        """Whether a checkpoint is due after ``step`` updates (every ``every``; not after the last one, whose state
        goes into the run's results)."""
        return step % self.every == 0 and step < total_steps

    @staticmethod
    def restore(saved: dict[str, Any], monitor, agent, seed: int) -> None:
        """Put a loaded checkpoint back into a freshly built monitor (wrapping the env) and agent, ready for
        ``agent.learn(total_steps, resume=True)``.

        The env is reset once through its wrappers first, as Gymnasium's order checks require (the monitor's records
        are restored before, so that the reset records nothing), then overwritten with the saved state.
        """
        monitor.load_state_dict(saved["monitor"])
        monitor.reset(seed=seed)
        monitor.unwrapped.load_state_dict(saved["env"])
        agent.load_state_dict(saved["agent"])
        agent.load_training_state(saved["agent_training"])

    def remove(self) -> None:
        """Delete the checkpoint (once the run's results are written)."""
        self.path.unlink(missing_ok=True)

"""The interface every agent implements, and the loop that runs a non-learning policy on the env."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np

from agents.checkpoint import save_state


@dataclasses.dataclass
class AgentConfig:
    """Hyperparameters shared by every agent (subclasses add their own fields; each becomes a CLI flag)."""

    seed: int = 0
    """seed of the agent's randomness and of the first env reset"""


class Agent:
    """Maps observations to teacher weights and (for learning agents) learns from rewards.

    :param env: a TeacherSelection environment (wrappers allowed); its action space is the agent's output.
    :param kwargs: fields of the agent's ``Config`` dataclass.
    """

    Config: ClassVar[type[AgentConfig]] = AgentConfig
    name: ClassVar[str] = "agent"

    def __init__(self, env: gym.Env, **kwargs: Any) -> None:
        fields = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise TypeError(f"agent {self.name!r} got unknown hyperparameter(s) {unknown}; it accepts {sorted(fields)}")
        self.config = self.Config(**kwargs)
        self.env = env
        self.unwrapped = env.unwrapped
        self.rng = np.random.default_rng(self.config.seed)

    # -- the interface
    def predict(self, obs: dict[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        """The action (B, K) for one observation."""
        raise NotImplementedError

    def learn(self, total_steps: int, callback=None) -> Agent:
        """Run ``total_steps`` env steps (student updates), learning as it goes; ``callback(locals())`` each step.

        The base implementation runs the fixed policy :meth:`predict` without learning.
        """
        obs, _ = self.env.reset(seed=self.config.seed)
        for step in range(total_steps):
            action = self.predict(obs)
            obs, reward, terminated, truncated, info = self.env.step(action)
            if callback is not None and callback(locals()) is False:
                break
            if (terminated or truncated) and step < total_steps - 1:  # keep the trained student after the last step
                obs, _ = self.env.reset()
        return self

    def state_dict(self) -> dict[str, Any]:
        """Learned state: tensors, arrays, numbers, strings, bytes, lists and dicts (empty for fixed policies)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def save(self, path: str | Path) -> Path:
        """Save to a folder as data: ``agent.json`` (class and hyperparameters) and ``state.safetensors`` +
        ``state.json`` (:mod:`agents.checkpoint`); nothing in it runs code when loaded with :func:`agents.load`."""
        folder = Path(path)
        folder.mkdir(parents=True, exist_ok=True)
        spec = {"class": f"{type(self).__module__}:{type(self).__qualname__}", "name": self.name,
                "config": dataclasses.asdict(self.config)}
        (folder / "agent.json").write_text(json.dumps(spec, indent=2, default=str))
        save_state(folder, self.state_dict())
        return folder

    # -- helpers for subclasses
    @property
    def batch_shape(self) -> tuple[int, int]:
        """(B, K) of the env."""
        return tuple(self.env.action_space.shape)  # type: ignore[return-value]

    @property
    def select_mode(self) -> bool:
        return isinstance(self.env.action_space, gym.spaces.MultiBinary)

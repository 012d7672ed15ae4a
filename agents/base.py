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
class LoopState:
    """Where :meth:`Agent.learn` is: with the env's and the agent's state, what a checkpoint needs to go on."""

    step: int = 0
    """env steps (student updates) done by this learn() so far"""
    obs: dict[str, np.ndarray] | None = None
    """the observation the next action answers (None before the first reset)"""
    needs_reset: bool = True
    """the env must be reset before the next step: at the start, and after a step that ended an episode"""
    episodes: int = 0
    """env resets done; the first is seeded with the agent's seed"""


@dataclasses.dataclass
class AgentConfig:
    """Hyperparameters shared by every agent (subclasses add their own fields; each becomes a CLI flag)."""

    seed: int = 0
    """seed of the agent's randomness and of the first env reset"""


class Agent:
    """Maps observations to teacher weights and (for learning agents) learns from rewards.

    State, in two parts, both data (tensors, arrays, numbers, strings, bytes, lists, dicts; see
    :mod:`agents.checkpoint`):

    - :meth:`state_dict`: what the agent has learned (a policy's weights, its optimizer, normalisation statistics);
      :meth:`save` / :func:`agents.load` keep this part, enough to act as it learned to.
    - :meth:`training_state`: where :meth:`learn` is, to continue it exactly: the loop's position (:class:`LoopState`:
      steps done, the current observation, whether the env needs a reset), the agent's random streams and whatever
      its learning rule holds between steps (REINFORCE: its open window of steps, its running metrics).

    A run checkpoint is these two and the env's ``env.unwrapped.state_dict()``, taken from ``learn``'s callback
    (where ``self.loop`` is up to date). To continue: build the same env and agent, reset the env once (as any
    Gymnasium wrapper requires), ``env.unwrapped.load_state_dict(...)``, :meth:`load_state_dict`,
    :meth:`load_training_state`, then ``learn(total_steps, resume=True)``: it runs the remaining
    ``total_steps - loop.step`` steps from the restored observation, without resetting the env, and (for the fixed
    agents and REINFORCE) gives what the uninterrupted ``learn(total_steps)`` would have given, exactly.

    :param env: a TeacherSelection environment (wrappers allowed); its action space is the agent's output.
    :param kwargs: fields of the agent's ``Config`` dataclass.
    """

    Config: ClassVar[type[AgentConfig]] = AgentConfig
    name: ClassVar[str] = "agent"
    learns: ClassVar[bool] = True
    """False for a policy that learns nothing from rewards (the fixed weightings): the train-eval protocol then
    skips its training phase, which would only cost student steps."""
    learns_from: ClassVar[str] = "the env's reward"
    """What the agent's learning signal is, for the results tables: the env's return (the student's progress),
    student credit, gold credit (teacher correctness), or nothing (a fixed weighting)."""
    pure_predict: ClassVar[bool] = False
    """True when ``predict(obs, deterministic=True)`` is a function of ``obs`` and the learned state alone: it reads
    nothing from the env, draws no random numbers and changes nothing. The train-eval protocol then trains its
    evaluation students at once in a vector env, asking for one student's action after another's
    (:func:`agents.experiments.protocol.evaluate_policy`)."""

    def __init__(self, env: gym.Env, **kwargs: Any) -> None:
        fields = {f.name for f in dataclasses.fields(self.Config)}
        unknown = sorted(set(kwargs) - fields)
        if unknown:
            raise TypeError(f"agent {self.name!r} got unknown hyperparameter(s) {unknown}; it accepts {sorted(fields)}")
        self.config = self.Config(**kwargs)
        self.env = env
        self.unwrapped = env.unwrapped
        self.rng = np.random.default_rng(self.config.seed)
        #: the position of :meth:`learn` (see the class docstring)
        self.loop = LoopState()

    # -- the interface
    def predict(self, obs: dict[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        """The action (B, K) for one observation."""
        raise NotImplementedError

    def learn(self, total_steps: int, callback=None, resume: bool = False) -> Agent:
        """Run ``total_steps`` env steps (student updates), learning as it goes; ``callback(locals())`` after each
        step (``step``: its index from 0, ``reward``, ``info``, ``self``, ...); returning False stops.

        The first reset is seeded with the agent's seed; an episode that ends is followed by a reset, except after
        the last step (the trained student stays). The base implementation runs :meth:`predict` without learning.

        :param resume: continue the learn() whose :meth:`training_state` was loaded (see the class docstring)
            instead of starting afresh.
        """
        self._begin(total_steps, resume)
        while self.loop.step < total_steps:
            action = self.predict(self._observation())
            obs, reward, terminated, truncated, info = self.env.step(action)
            step = self._advance(obs, terminated, truncated)
            if callback is not None and callback(locals()) is False:
                break
        return self

    def learn_over(self, envs: gym.vector.VectorEnv, steps: int, callback=None) -> Agent:
        """Learn over the N students of a vector env at once: ``envs.num_envs`` episodes of ``steps`` updates, each
        vector step one batched update of every student and one policy update over all their instances;
        ``callback(locals())`` after each vector step. The first reset is seeded with the agent's seed (sub-env n
        gets seed + n). Not checkpointed.

        :raises NotImplementedError: for an agent that learns over one student at a time (the base class), with
            :meth:`why_not_learn_over`.
        """
        raise NotImplementedError(self.why_not_learn_over())

    def learning_student_steps(self, steps: int, students: int) -> int:
        """Student steps that :meth:`learn_over` over ``students`` students of ``steps`` updates spends (the
        train-eval protocol reports it): ``students * steps``, unless the agent sets its own budget."""
        return students * steps

    def why_not_learn_over(self) -> str | None:
        """Why :meth:`learn_over` is not available; None where it is."""
        return f"agent {self.name!r} learns over one student at a time (it has no learn_over)"

    # -- the loop's position, for learn() implementations
    def _begin(self, total_steps: int, resume: bool) -> None:
        """Start learn(): a fresh :class:`LoopState`, or (``resume``) the loaded one, checked against the budget."""
        if not resume:
            self.loop = LoopState()
        elif self.loop.step > total_steps:
            raise ValueError(f"cannot resume: the loaded training state has done {self.loop.step} steps, more than "
                             f"total_steps={total_steps}; pass the total_steps it was started with")

    def _observation(self) -> dict[str, np.ndarray]:
        """The observation to act on, resetting the env first when the loop needs it."""
        if self.loop.needs_reset:
            seed = self.config.seed if self.loop.episodes == 0 else None
            self.loop.obs, _ = self.env.reset(seed=seed)
            self.loop.needs_reset, self.loop.episodes = False, self.loop.episodes + 1
        return self.loop.obs  # type: ignore[return-value]

    def _advance(self, obs: dict[str, np.ndarray], terminated: bool, truncated: bool) -> int:
        """Record a step taken; returns its index (from 0)."""
        self.loop.step += 1
        self.loop.obs, self.loop.needs_reset = obs, bool(terminated or truncated)
        return self.loop.step - 1

    # -- state
    def state_dict(self) -> dict[str, Any]:
        """Learned state: tensors, arrays, numbers, strings, bytes, lists and dicts (empty for fixed policies)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass

    def training_state(self) -> dict[str, Any]:
        """The state of :meth:`learn` beyond :meth:`state_dict`: the loop's position and the agent's random stream
        (subclasses add what their learning rule holds between steps)."""
        return {"loop": dataclasses.asdict(self.loop), "rng": self.rng.bit_generator.state}

    def load_training_state(self, state: dict[str, Any]) -> None:
        """Put back a :meth:`training_state`; then ``learn(total_steps, resume=True)`` continues it."""
        self.loop = LoopState(**state["loop"])
        self.rng.bit_generator.state = state["rng"]

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

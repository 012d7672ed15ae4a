"""Rewards: a registry of small classes, so that a user adds one without editing the package.

A reward is made once per environment and called after a student update whenever a reward is due: after every
update, or, for an ``interval`` reward, every ``reward_interval`` updates and at the episode's last update (the
env returns 0 in between and says which steps were measured in ``info["reward_measured"]``)::

    @register_reward("my_reward")
    class MyReward(Reward):
        def __call__(self, env, loss):
            return -float(loss.kd)

    gymnasium.make("kd_gym/TeacherSelectionLite-v0", reward="my_reward")
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np

from kd_gym.losses import KDLoss


class Reward:
    """Base class. ``reset(env)`` at every episode start; ``__call__(env, loss) -> float`` when a reward is due.

    ``env`` is the unwrapped :class:`~kd_gym.env.TeacherSelectionEnv` (its ``dev_metrics()``, ``config``, ...);
    ``loss`` is the :class:`~kd_gym.losses.KDLoss` of the update just made.

    :cvar interval: False: due after every update; True: due every ``reward_interval`` updates and at the end of
        the episode (for costly measurements such as a dev evaluation).
    """

    interval: ClassVar[bool] = False

    def before_update(self, env, weights) -> None:  # noqa: B027 - optional hook
        """Called with the validated (B, K) weights just before the student's update (e.g. to measure a reference)."""

    def state_dict(self) -> dict:
        """What the reward remembers between calls (plain values), for checkpoints; default: its attributes."""
        return {key: value for key, value in vars(self).items() if isinstance(value, (bool, int, float, str))}

    def load_state_dict(self, state: dict) -> None:
        vars(self).update(state)

    def reset(self, env) -> None:  # noqa: B027 - optional hook
        pass

    def __call__(self, env, loss: KDLoss) -> float:
        raise NotImplementedError


REWARDS: dict[str, type[Reward] | Callable[[], Reward]] = {}


def register_reward(name: str) -> Callable[[type[Reward]], type[Reward]]:
    """Class decorator: make a :class:`Reward` available as ``reward=name``."""

    def decorate(cls: type[Reward]) -> type[Reward]:
        REWARDS[name] = cls
        return cls

    return decorate


def make_reward(reward: str | Reward) -> Reward:
    """A reward instance from a registered name or an instance."""
    if isinstance(reward, Reward):
        return reward
    if reward not in REWARDS:
        raise ValueError(f"unknown reward {reward!r}; registered rewards: {sorted(REWARDS)} "
                         "(add one with kd_gym.rewards.register_reward)")
    return REWARDS[reward]()


class _IntervalReward(Reward):
    """Measures a dev quantity when due (every ``reward_interval`` updates and at the episode's end); the reward is
    its improvement since the last measurement."""

    interval = True

    def measure(self, env) -> float:
        raise NotImplementedError

    def reset(self, env) -> None:
        self.last = self.measure(env)

    def __call__(self, env, loss: KDLoss) -> float:
        value = self.measure(env)
        reward, self.last = value - self.last, value
        return reward


@register_reward("dev_delta")
class DevDelta(_IntervalReward):
    """Change of the student's dev metric, in percentage points, since the last measurement."""

    def measure(self, env) -> float:
        return 100.0 * env.dev_metrics()["metric"]


@register_reward("dev_loss_delta")
class DevLossDelta(_IntervalReward):
    """Decrease of the student's dev CE loss (nats) since the last measurement."""

    def measure(self, env) -> float:
        return -env.dev_metrics()["loss"]


@register_reward("neg_ce")
class NegCE(Reward):
    """RL-KD's first reward: minus the student's CE against the gold labels on the batch just trained."""

    def __call__(self, env, loss: KDLoss) -> float:
        return -loss.ce.item()


@register_reward("neg_ce_kd")
class NegCEKD(Reward):
    """RL-KD's second reward: minus (CE + the KD term) of the student on the batch just trained."""

    def __call__(self, env, loss: KDLoss) -> float:
        return -(loss.ce + loss.kd).item()


@register_reward("dev_loss_paired")
class DevLossPaired(Reward):
    """A paired (common-random-numbers) reward: the student's dev CE after a reference update with equal weights on
    the same batch, from the same student and with the same dropout, minus its dev CE after the agent's update
    (nats; > 0 when the agent's weights did better than equal weights on this step). The batch, the student's
    trajectory and the dev subset are shared by both sides, so their noise cancels. Measured every step; costs one
    extra update and two dev-subset evaluations per step (see docs/env.md)."""

    def before_update(self, env, weights) -> None:
        reference = np.ones_like(weights)
        self.reference_loss = env.lookahead_dev(reference)["loss"]

    def __call__(self, env, loss: KDLoss) -> float:
        return self.reference_loss - env.dev_metrics()["loss"]

"""Rewards: a registry of small classes, so that a user adds one without editing the package.

A reward is made once per environment and called after every student update::

    @register_reward("my_reward")
    class MyReward(Reward):
        def __call__(self, env, loss):
            return -float(loss.kd)

    gymnasium.make("kd_gym/TeacherSelectionLite-v0", reward="my_reward")
"""

from __future__ import annotations

from collections.abc import Callable

from kd_gym.losses import KDLoss


class Reward:
    """Base class. ``reset(env)`` at every episode start; ``__call__(env, loss) -> float`` after every update.

    ``env`` is the unwrapped :class:`~kd_gym.env.TeacherSelectionEnv` (its ``trainer``, ``dev_metrics()``,
    ``config``); ``loss`` is the :class:`~kd_gym.losses.KDLoss` of the update just made.
    """

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
    """Measures a dev quantity every ``reward_interval`` updates; the reward is its improvement since the last."""

    def measure(self, env) -> float:
        raise NotImplementedError

    def reset(self, env) -> None:
        self.last = self.measure(env)

    def __call__(self, env, loss: KDLoss) -> float:
        if env.trainer.steps % env.config["reward_interval"] != 0:
            return 0.0
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

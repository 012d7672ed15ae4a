"""Flat views of the TeacherSelection environments, for RL code written for one vector in and one vector out.

CleanRL's ``ppo_continuous_action.py``, RL Zoo's ``MlpPolicy`` and Stable-Baselines3's ``check_env`` expect a 1-D
``Box`` observation and a 1-D ``Box`` action. ``kd_gym/TeacherSelectionFlat-v0`` (full student) and
``kd_gym/TeacherSelectionLiteFlat-v0`` (lite student) are the same decision problem as the ``Dict`` envs, seen
through :func:`flatten`:

- observation: ``Box((N,), float32)``, the ``Dict`` observation flattened by
  :class:`gymnasium.wrappers.FlattenObservation`: its parts in the ``Dict``'s (alphabetical) key order, each
  flattened row-major: ``instance_features`` (B * S), ``student_logits`` (B * C), ``teacher_features`` (B * K * P),
  ``teacher_logits`` (B * K * C); :func:`observation_layout` gives each part's slice and shape.
- action (``action_type="weights"``): ``Box(-1, 1, (B * K,), float32)``; element ``i * K + k`` is instance i's
  weight of teacher k, mapped affinely: ``weight = (action + 1) / 2``, so -1 -> 0, 0 -> 0.5, 1 -> 1. Values outside
  [-1, 1] give weights outside [0, 1], which the env clips, as it clips ``Dict``-env weights. A symmetric [-1, 1]
  Box is what Stable-Baselines3 and CleanRL's Gaussian policies expect.
- action (``action_type="select"``): ``MultiBinary(B * K)``, element ``i * K + k`` keeps (1) or drops (0) teacher k
  on instance i.

Reward, episode, ``info`` and every option (the fields of :class:`~kd_gym.config.EnvConfig`, through
``gymnasium.make(flat_id, **options)``) are those of the ``Dict`` env. See docs/outside-clients.md.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces


def observation_layout(space: spaces.Dict) -> dict[str, tuple[slice, tuple[int, ...]]]:
    """Where each part of a ``Dict`` observation lies in its flattened vector: name -> (slice, shape), in the
    order of :func:`gymnasium.spaces.flatten` (the ``Dict``'s key order)."""
    layout, start = {}, 0
    for name, part in space.spaces.items():
        size = int(np.prod(part.shape))
        layout[name] = (slice(start, start + size), tuple(part.shape))
        start += size
    return layout


class FlatActions(gym.ActionWrapper):
    """A 1-D action for a TeacherSelection env whose action is (B, K).

    ``weights`` envs: ``Box(-1, 1, (B * K,))`` -> weights ``(action + 1) / 2`` of shape (B, K); ``select`` envs:
    ``MultiBinary(B * K)`` -> (B, K). Element ``i * K + k`` belongs to instance i and teacher k (row-major).

    :param env: an env whose action space is ``Box(0, 1, (B, K))`` or ``MultiBinary((B, K))``.
    """

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.action_space
        if not isinstance(space, (spaces.Box, spaces.MultiBinary)) or len(space.shape) != 2:
            raise TypeError(f"FlatActions needs a (B, K) Box or MultiBinary action space, got {space}; wrap a "
                            "TeacherSelection env (kd_gym/TeacherSelection-v0 or kd_gym/TeacherSelectionLite-v0)")
        self.weights_shape: tuple[int, int] = tuple(space.shape)  # type: ignore[assignment]
        size = int(np.prod(self.weights_shape))
        self.select = isinstance(space, spaces.MultiBinary)
        self.action_space = spaces.MultiBinary(size) if self.select else spaces.Box(-1.0, 1.0, (size,), np.float32)

    def _expected(self) -> str:
        """What a flat action is, for error messages."""
        values = "0 (drop) or 1 (keep)" if self.select else "finite values in [-1, 1]"
        return (f"({self.action_space.shape[0]},) = B * K for (B, K) = {self.weights_shape} of {values}, element "
                "i * K + k for instance i and teacher k")

    def action(self, action: Any) -> np.ndarray:
        """Flat action (B * K,) -> the env's (B, K) weights in [0, 1] (or 0/1 selection).

        :raises ValueError: for an action that is not numeric, not of shape (B * K,) (a (B, K) array is not
            reshaped: it is the ``Dict`` env's action, whose values mean something else), or not finite; naming
            the value and what a flat action is.
        """
        try:
            array = np.asarray(action, dtype=np.float32)
        except (TypeError, ValueError) as error:
            raise ValueError(f"flat action {action!r:.80} is not numeric ({error}); expected {self._expected()}") from None
        if array.shape != self.action_space.shape:
            hint = ""
            if array.shape == self.weights_shape:
                hint = ("; a (B, K) array is the Dict env's action (weights in [0, 1]): flatten it with "
                        "env.to_action(weights), which also maps weights to [-1, 1]") if not self.select else (
                        "; a (B, K) array is the Dict env's action: flatten it with env.to_action(selection)")
            raise ValueError(f"flat action has shape {array.shape}; expected {self._expected()}{hint}")
        if not np.isfinite(array).all():
            bad = np.flatnonzero(~np.isfinite(array))
            instance, teacher = divmod(int(bad[0]), self.weights_shape[1])
            raise ValueError(f"flat action holds {len(bad)} NaN or infinite value(s), the first {array[bad[0]]} at "
                             f"element {bad[0]} (instance {instance}, teacher {teacher}); expected {self._expected()}")
        array = array.reshape(self.weights_shape)
        return array if self.select else (array + 1.0) / 2.0

    def to_action(self, weights: Any) -> np.ndarray:
        """(B, K) weights in [0, 1] (or 0/1 selection) -> the flat action (B * K,) that gives them."""
        array = np.asarray(weights, dtype=np.float32)
        if array.shape != self.weights_shape:
            raise ValueError(f"weights have shape {array.shape}; expected (B, K) = {self.weights_shape}")
        flat = array.reshape(-1)
        return flat.astype(np.int8) if self.select else 2.0 * flat - 1.0


def flatten(env: gym.Env) -> gym.Env:
    """``env`` (a TeacherSelection env with a ``Dict`` observation) with a 1-D observation and a 1-D action."""
    return FlatActions(gym.wrappers.FlattenObservation(env))


def make_flat_env(**options: Any) -> gym.Env:
    """The entry point of the flat ids: a :class:`~kd_gym.env.TeacherSelectionEnv` built from ``options`` (fields
    of :class:`~kd_gym.config.EnvConfig`), flattened by :func:`flatten`."""
    from kd_gym.env import TeacherSelectionEnv

    return flatten(TeacherSelectionEnv(**options))

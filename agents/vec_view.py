"""The VecEnv view through which Stable-Baselines3 agents see a TeacherSelection env (see :mod:`agents.sb3`)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env import VecEnv

from agents.state import PerTeacherState

OBS_BOUND = 50.0  # the env's FEATURE_BOUND and LOGIT_BOUND


class InstanceVecEnv(VecEnv):
    """One TeacherSelection env seen as many sub-envs (see the module docstring).

    :param env: a TeacherSelection env (wrappers allowed); it is stepped once per ``step``.
    :param view: ``"teacher"``: B*K sub-envs, one per (instance, teacher), observing the RL-KD state ``s_ik``
        (:mod:`agents.state`) plus a one-hot teacher id and acting for that teacher alone; ``"instance"``: B sub-envs,
        one per instance, observing ``[instance_features | teacher_features | teacher_logits | student_logits]``
        (flattened) and acting for its K teachers.
    """

    VIEWS = ("teacher", "instance")

    def __init__(self, env: gym.Env, view: str = "teacher") -> None:
        if view not in self.VIEWS:
            raise ValueError(f"view must be one of {self.VIEWS}, got {view!r}")
        self.env, self.view = env, view
        obs_space = env.observation_space
        b, k, p = obs_space["teacher_features"].shape
        s, c = obs_space["instance_features"].shape[1], obs_space["student_logits"].shape[1]
        self.batch_size, self.num_teachers = b, k
        self.select = isinstance(env.action_space, spaces.MultiBinary)
        if view == "teacher":
            self.state = PerTeacherState(obs_space, env.unwrapped.config.temperature)
            size, per_env, num_envs = self.state.size + k, 1, b * k
        else:
            size, per_env, num_envs = s + k * p + k * c + c, k, b
        observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, (size,), np.float32)
        action_space = spaces.MultiBinary(per_env) if self.select else spaces.Box(-1.0, 1.0, (per_env,), np.float32)
        self.last_step: dict[str, Any] = {}
        #: the real env's latest observation (after a done step: the next episode's first), for checkpoints
        self.env_obs: dict[str, np.ndarray] | None = None
        self._actions: np.ndarray | None = None
        super().__init__(num_envs, observation_space, action_space)

    def instance_obs(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(num_envs, size) float32: one row per sub-env (instance-major, then teacher, in the teacher view)."""
        b = obs["instance_features"].shape[0]
        if self.view == "teacher":
            states = self.state(obs)  # (B, K, d)
            ids = np.broadcast_to(np.eye(self.num_teachers), (b, self.num_teachers, self.num_teachers))
            return np.concatenate([states, ids], axis=-1).reshape(b * self.num_teachers, -1).astype(np.float32)
        return np.concatenate([obs["instance_features"], obs["teacher_features"].reshape(b, -1),
                               obs["teacher_logits"].reshape(b, -1), obs["student_logits"]], axis=1).astype(np.float32)

    def env_action(self, actions: np.ndarray) -> np.ndarray:
        """The env's (B, K) action from the sub-envs' actions."""
        actions = np.asarray(actions).reshape(self.batch_size, self.num_teachers)
        if self.select:
            return actions.astype(np.int8)
        return ((np.clip(actions, -1.0, 1.0) + 1.0) / 2.0).astype(np.float32)

    def reset(self) -> np.ndarray:
        options = self._options[0] or None
        obs, info = self.env.reset(seed=self._seeds[0], options=options)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [info for _ in range(self.num_envs)]
        self.env_obs = obs
        return self.instance_obs(obs)

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        action = self.env_action(self._actions)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.last_step = {"action": action, "reward": reward, "terminated": terminated, "truncated": truncated,
                          "info": info}
        done = terminated or truncated  # SB3 bootstraps through a time limit flagged below
        self.env_obs = obs
        flat = self.instance_obs(obs)
        infos = [dict(info) for _ in range(self.num_envs)]
        if done:
            for i, instance_info in enumerate(infos):
                instance_info["terminal_observation"] = flat[i]
                instance_info["TimeLimit.truncated"] = truncated and not terminated
            flat = self.reset()
        rewards = np.full(self.num_envs, reward, dtype=np.float32)
        return flat, rewards, np.full(self.num_envs, done), infos

    def close(self) -> None:
        pass  # the env belongs to the caller

    def _count(self, indices) -> int:
        return len(list(self._get_indices(indices)))

    def _get_indices(self, indices):
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else indices

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [self.env.get_wrapper_attr(attr_name)] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        self.env.set_wrapper_attr(attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        result = self.env.get_wrapper_attr(method_name)(*method_args, **method_kwargs)  # once: one real env
        return [result] * self._count(indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices=None) -> list[bool]:
        return [is_wrapped(self.env, wrapper_class)] * self._count(indices)

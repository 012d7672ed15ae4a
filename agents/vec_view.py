"""The VecEnv through which Stable-Baselines3 agents see a TeacherSelection env (see :mod:`agents.sb3`): SB3's
``VecEnv`` API over kd_gym's per-instance env (:class:`kd_gym.routing.TeacherRoutingVectorEnv`), which computes the
views, the action map and every reward."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

from kd_gym.routing import TeacherRoutingVectorEnv

#: the adapter's earlier names of two reward tiers, still accepted (agents/hyperparams/*.yml, saved configs)
TIER_ALIASES = {"env": "return", "gold": "gold_credit"}


class InstanceVecEnv(VecEnv):
    """One TeacherSelection env seen as many SB3 sub-envs: the per-instance env of kd_gym, with SB3's conventions
    (``reset`` gives the observation alone; ``step_wait`` gives ``(obs, rewards, dones, infos)``, a list of dicts
    with ``terminal_observation`` and ``TimeLimit.truncated`` where an episode ended).

    :param env: a TeacherSelection env (wrappers allowed), a vector env of N of them
        (:class:`~kd_gym.vector.TeacherSelectionVectorEnv`; N times the sub-envs, student-major), or an SB3
        ``DummyVecEnv`` of one TeacherSelection env (RL Zoo's ``vec_env_wrapper``, docs/outside-clients.md). It is
        stepped once per ``step``; a student whose episode ends is reset at once.
    :param view: ``"teacher"``: B*K sub-envs, one per (instance, teacher), observing the RL-KD state ``s_ik`` plus a
        one-hot teacher id and acting for that teacher alone; ``"instance"``: B sub-envs, one per instance, observing
        every observation column of it; ``"router"``: B sub-envs observing what the instance shows without its gold
        label (:class:`~kd_gym.views.LabelFreeView`) (:mod:`kd_gym.views`).
    :param instance_reward: the reward tier of each sub-env (:mod:`kd_gym.credit`): ``"return"`` (alias ``"env"``):
        the env's reward; ``"student_credit"``: the instance's first-order share of the student's dev-loss change
        (needs an env made with ``credit=True``); ``"gold_credit"`` (alias ``"gold"``): on a labelled instance, how
        much likelier the chosen mixture makes its gold label than equal weights, 0 on the transfer rows.
    """

    VIEWS = ("teacher", "instance", "router")
    REWARDS = ("return", "student_credit", "gold_credit", *TIER_ALIASES)

    def __init__(self, env: gym.Env | gym.vector.VectorEnv | VecEnv, view: str = "teacher",
                 instance_reward: str = "return") -> None:
        if view not in self.VIEWS:
            raise ValueError(f"view must be one of {self.VIEWS}, got {view!r}")
        if instance_reward not in self.REWARDS:
            raise ValueError(f"instance_reward must be one of {self.REWARDS}, got {instance_reward!r}")
        if isinstance(env, VecEnv):  # RL Zoo hands its DummyVecEnv of the env it made
            if not isinstance(env, DummyVecEnv) or env.num_envs != 1:
                raise ValueError(f"InstanceVecEnv takes an SB3 DummyVecEnv of one TeacherSelection env (RL Zoo's "
                                 f"n_envs: 1), got {type(env).__name__} with num_envs={env.num_envs}; the per-instance "
                                 "view makes one sub-env per instance itself")
            env = env.envs[0]
        self.env, self.view = env, view
        self.instance_reward = TIER_ALIASES.get(instance_reward, instance_reward)
        #: the per-instance env this adapter shows to SB3
        self.routing = TeacherRoutingVectorEnv(env, view, self.instance_reward)
        self.vector, self.students = self.routing.vector, self.routing.students
        self.batch_size, self.num_teachers, self.select = (self.routing.batch_size, self.routing.num_teachers,
                                                           self.routing.select)
        self._actions: np.ndarray | None = None
        super().__init__(self.routing.num_envs, self.routing.single_observation_space,
                         self.routing.single_action_space)

    @property
    def last_step(self) -> dict[str, Any]:
        """The real env's last step: ``action``, ``reward``, ``terminated``, ``truncated``, ``info``."""
        return self.routing.last_step

    @property
    def env_obs(self) -> dict[str, np.ndarray] | None:
        """The real env's latest observation (after a done step: the next episode's first), for checkpoints."""
        return self.routing.env_obs

    @env_obs.setter
    def env_obs(self, obs: dict[str, np.ndarray] | None) -> None:
        self.routing.env_obs = obs

    def instance_obs(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(num_envs, size) float32: one row per sub-env (instance-major, then teacher, in the teacher view)."""
        return self.routing.observe(obs)

    def env_action(self, actions: np.ndarray) -> np.ndarray:
        """The env's (B, K) action (a vector env's: (N, B, K)) from the sub-envs' actions."""
        return self.routing.to_env_action(actions)

    def reset(self) -> np.ndarray:
        obs, _ = self.routing.reset(seed=self._seeds[0], options=self._options[0] or None)
        self._reset_seeds()
        self._reset_options()
        self.reset_infos = [{} for _ in range(self.num_envs)]
        return obs

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self):
        obs, rewards, terminated, truncated, info = self.routing.step(self._actions)
        dones = terminated | truncated  # SB3 bootstraps through a time limit flagged below
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        for i in np.flatnonzero(dones):
            infos[i]["terminal_observation"] = info["final_obs"][i]
            infos[i]["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
            infos[i]["episode"] = info["final_info"][i]["episode"]  # SB3's ep_info_buffer (RL Zoo's ep_rew_mean)
        return obs, rewards.astype(np.float32), dones, infos

    def close(self) -> None:
        pass  # the env belongs to the caller

    def _count(self, indices) -> int:
        return len(list(self._get_indices(indices)))

    def _get_indices(self, indices):
        if indices is None:
            return range(self.num_envs)
        return [indices] if isinstance(indices, int) else indices

    def _attr(self, name: str) -> Any:
        return getattr(self.env, name) if self.vector else self.env.get_wrapper_attr(name)

    def get_attr(self, attr_name: str, indices=None) -> list[Any]:
        return [self._attr(attr_name)] * self._count(indices)

    def set_attr(self, attr_name: str, value: Any, indices=None) -> None:
        if self.vector:
            setattr(self.env, attr_name, value)
        else:
            self.env.set_wrapper_attr(attr_name, value)

    def env_method(self, method_name: str, *method_args, indices=None, **method_kwargs) -> list[Any]:
        result = self._attr(method_name)(*method_args, **method_kwargs)  # once: one real env
        return [result] * self._count(indices)

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices=None) -> list[bool]:
        return [not self.vector and is_wrapped(self.env, wrapper_class)] * self._count(indices)

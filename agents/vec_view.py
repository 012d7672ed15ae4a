"""The VecEnv view through which Stable-Baselines3 agents see a TeacherSelection env (see :mod:`agents.sb3`)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.env_util import is_wrapped
from stable_baselines3.common.vec_env import VecEnv

from agents.state import LabelFreeView, PerTeacherState

OBS_BOUND = 50.0  # the env's FEATURE_BOUND and LOGIT_BOUND


class InstanceVecEnv(VecEnv):
    """One TeacherSelection env seen as many sub-envs (see the module docstring).

    :param env: a TeacherSelection env (wrappers allowed), or a vector env of N of them
        (:class:`~kd_gym.vector.TeacherSelectionVectorEnv`); it is stepped once per ``step``. A vector env's N students
        are N times the sub-envs (student-major); a student whose episode ends is reset at once (``reset_mask``), so
        SB3 sees its next episode's first observation with the done flag, as from a single env.
    :param view: ``"teacher"``: B*K sub-envs, one per (instance, teacher), observing the RL-KD state ``s_ik``
        (:mod:`agents.state`) plus a one-hot teacher id and acting for that teacher alone; ``"instance"``: B sub-envs,
        one per instance, observing ``[instance_features | teacher_features | teacher_logits | student_logits]``
        (flattened) and acting for its K teachers; ``"router"``: B sub-envs, one per instance, observing what it
        shows without its gold label (:class:`~agents.state.LabelFreeView`: the label-free instance features, the
        embedding included, and every teacher's log-probabilities) and acting for its K teachers.
    :param instance_reward: ``"env"``: every sub-env gets the env's reward; ``"gold"``: sub-envs of a labelled instance
        get that instance's gold credit (:meth:`gold_credit`), the others 0.
    """

    VIEWS = ("teacher", "instance", "router")
    REWARDS = ("env", "gold")

    def __init__(self, env: gym.Env, view: str = "teacher", instance_reward: str = "env") -> None:
        if view not in self.VIEWS:
            raise ValueError(f"view must be one of {self.VIEWS}, got {view!r}")
        if instance_reward not in self.REWARDS:
            raise ValueError(f"instance_reward must be one of {self.REWARDS}, got {instance_reward!r}")
        self.env, self.view, self.instance_reward = env, view, instance_reward
        base = env.unwrapped
        self._labelled_column = base.instance_feature_names.index("labelled")
        self._ce_column = base.teacher_feature_names.index("teacher_ce")
        #: a vector env of N students (else one env: N = 1)
        self.vector = isinstance(env, gym.vector.VectorEnv)
        self.students = env.num_envs if self.vector else 1
        obs_space = env.single_observation_space if self.vector else env.observation_space
        env_action_space = env.single_action_space if self.vector else env.action_space
        b, k, p = obs_space["teacher_features"].shape
        s, c = obs_space["instance_features"].shape[1], obs_space["student_logits"].shape[1]
        self.batch_size, self.num_teachers = b, k
        self.select = isinstance(env_action_space, spaces.MultiBinary)
        if view == "teacher":
            self.state = PerTeacherState(obs_space, base.config.temperature)
            size, per_env, num_envs = self.state.size + k, 1, b * k
        elif view == "router":
            self.state = LabelFreeView(base.instance_feature_names, k, c)
            size, per_env, num_envs = self.state.size, k, b
        else:
            size, per_env, num_envs = s + k * p + k * c + c, k, b
        observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, (size,), np.float32)
        action_space = spaces.MultiBinary(per_env) if self.select else spaces.Box(-1.0, 1.0, (per_env,), np.float32)
        self.last_step: dict[str, Any] = {}
        #: the real env's latest observation (after a done step: the next episode's first), for checkpoints
        self.env_obs: dict[str, np.ndarray] | None = None
        self._actions: np.ndarray | None = None
        super().__init__(num_envs * self.students, observation_space, action_space)

    def _flat(self, obs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """A vector env's (N, B, ...) observation as one of N * B instances; a single env's as it is."""
        return {key: value.reshape(-1, *value.shape[2:]) for key, value in obs.items()} if self.vector else obs

    def instance_obs(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(num_envs, size) float32: one row per sub-env (instance-major, then teacher, in the teacher view)."""
        obs = self._flat(obs)
        b = obs["instance_features"].shape[0]
        if self.view == "teacher":
            states = self.state(obs)  # (B, K, d)
            ids = np.broadcast_to(np.eye(self.num_teachers), (b, self.num_teachers, self.num_teachers))
            return np.concatenate([states, ids], axis=-1).reshape(b * self.num_teachers, -1).astype(np.float32)
        if self.view == "router":
            return self.state(obs).numpy()
        return np.concatenate([obs["instance_features"], obs["teacher_features"].reshape(b, -1),
                               obs["teacher_logits"].reshape(b, -1), obs["student_logits"]], axis=1).astype(np.float32)

    def gold_credit(self, obs: dict[str, np.ndarray], action: np.ndarray) -> np.ndarray:
        """(B,) the gold credit of the action on each instance of the batch it was taken on: on a labelled instance,
        how much likelier the gold label is under the mixture the action chose than under equal weights,
        ``log(sum_k w_k p_k(y) / sum_k w_k) - log(mean_k p_k(y))`` with ``p_k(y) = exp(-teacher_ce)`` (an empty
        selection counts as equal weights: 0); 0 on the transfer rows, whose label is hidden. A per-instance reward
        that the action alone decides (a contextual bandit: use ``gamma=0``); beyond the paper."""
        obs = self._flat(obs)
        p = np.exp(-obs["teacher_features"][..., self._ce_column].astype(np.float64))  # (B, K)
        w = action.reshape(p.shape).astype(np.float64)
        total = w.sum(-1)
        mixture = np.where(total > 0, (w * p).sum(-1) / np.maximum(total, 1e-12), p.mean(-1))
        credit = np.log(np.maximum(mixture, 1e-30)) - np.log(np.maximum(p.mean(-1), 1e-30))
        return np.where(obs["instance_features"][:, self._labelled_column] > 0.5, credit, 0.0).astype(np.float32)

    def env_action(self, actions: np.ndarray) -> np.ndarray:
        """The env's (B, K) action (a vector env's: (N, B, K)) from the sub-envs' actions."""
        shape = (self.students, self.batch_size, self.num_teachers) if self.vector else (self.batch_size, self.num_teachers)
        actions = np.asarray(actions).reshape(shape)
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
        if self.vector:
            return self._step_students()
        action = self.env_action(self._actions)
        acted_on = self.env_obs
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
        if self.instance_reward == "gold":
            per_instance = self.gold_credit(acted_on, action)
            rewards = np.repeat(per_instance, self.num_envs // self.batch_size)
        else:
            rewards = np.full(self.num_envs, reward, dtype=np.float32)
        return flat, rewards, np.full(self.num_envs, done), infos

    def _step_students(self):
        """:meth:`step_wait` on a vector env: every student's reward and done go to its own sub-envs; the students
        whose episode ended are reset at once."""
        action = self.env_action(self._actions)
        acted_on = self.env_obs
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.last_step = {"action": action, "reward": reward, "terminated": terminated, "truncated": truncated,
                          "info": info}
        per_student = self.num_envs // self.students
        done = np.logical_or(terminated, truncated)
        flat = self.instance_obs(obs)
        infos: list[dict[str, Any]] = [{} for _ in range(self.num_envs)]
        if done.any():
            for i in np.flatnonzero(np.repeat(done, per_student)):
                student = i // per_student
                infos[i]["terminal_observation"] = flat[i]
                infos[i]["TimeLimit.truncated"] = bool(truncated[student] and not terminated[student])
            obs, _ = self.env.reset(options={"reset_mask": done})
            flat = self.instance_obs(obs)
        self.env_obs = obs
        if self.instance_reward == "gold":
            rewards = np.repeat(self.gold_credit(acted_on, action), per_student // self.batch_size)
        else:
            rewards = np.repeat(np.asarray(reward, dtype=np.float32), per_student)
        return flat, rewards, np.repeat(done, per_student), infos

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

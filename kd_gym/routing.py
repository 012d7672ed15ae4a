"""The per-instance env: one sub-env per instance of a student's batch, all sharing the student(s).

    envs = gymnasium.make_vec("kd_gym/TeacherRoutingLite-v0", num_envs=32, vectorization_mode="vector_entry_point")

This is the interface for RL code that expects one vector in, one vector out and a reward per decision (CleanRL,
RL Zoo, SB3). ``num_envs`` = students x B: sub-env ``j`` is instance ``j % B`` of student ``j // B``'s batch (in the
``teacher`` view, K sub-envs per instance). One ``step`` is one KD update of every student: the B sub-envs of a
student answer together, and the student trains on the (B, K) weights they give.

- observation: ``Box((size,), float32)``, the instance's row of a :mod:`kd_gym.views` view (``view=``): ``router``
  (default: what it shows without its gold label: its label-free features, the embedding, every teacher's
  log-probabilities), ``instance`` (every observation column of the instance), ``teacher`` (RL-KD's state of one
  (instance, teacher) pair plus a one-hot teacher id).
- action: ``Box(-1, 1, (K,), float32)``, the instance's K weights mapped by ``weight = (a + 1) / 2`` (values outside
  [-1, 1] are clipped first); one number in the ``teacher`` view; ``MultiBinary`` with ``action_type="select"``.
- reward (``instance_reward=``, the reward tiers of :mod:`kd_gym.credit`): ``return``: the env's reward of the
  sub-env's student (default ``dev_delta``: an episode's return is the final student's dev gain); ``student_credit``:
  the instance's first-order share of the student's dev-loss change under the weights it chose; ``gold_credit``: on a
  labelled instance, how much likelier the chosen mixture makes its gold label than equal weights (teacher
  correctness, not student progress). The registered ids fix the tier (docs/outside-clients.md).
- episodes: a student's episode (``episode_steps`` updates, a time limit) ends for all its sub-envs at once; they
  reset in the same step (``AutoresetMode.SAME_STEP``, the semantics CleanRL's scripts were written for):
  ``info["final_obs"]`` holds their last observations and ``info["final_info"]`` (an object array, one dict or None
  per sub-env) their episode statistics ``{"episode": {"r", "l", "t"}}``, as CleanRL reads them.

``gymnasium.make`` on a per-instance id raises an error that says to call ``make_vec``.
"""

from __future__ import annotations

import time
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from kd_gym.credit import TIERS
from kd_gym.views import VIEWS, InstanceView, LabelFreeView, PerTeacherState


def refuse_single_env(**options: Any) -> gym.Env:
    """The ``gym.make`` entry point of the per-instance ids: an error that says what to call instead."""
    raise gym.error.Error(
        "the per-instance ids (kd_gym/TeacherRouting*-v0) are vector envs, one sub-env per instance of a student's "
        "batch, all sharing one student: make them with gymnasium.make_vec(id, num_envs=B, "
        "vectorization_mode='vector_entry_point') (num_envs = students x B); for one env that acts for a whole batch "
        "use gymnasium.make('kd_gym/TeacherSelectionLite-v0') or its flat id kd_gym/TeacherSelectionLiteFlat-v0")


def make_routing_env(num_envs: int = 1, students: int = 1, view: str = "router", instance_reward: str = "return",
                     **options: Any) -> TeacherRoutingVectorEnv:
    """The vector entry point of the per-instance ids.

    :param num_envs: students x B (router and instance views) or students x B x K (teacher view): B, the batch size,
        follows from it unless ``batch_size`` is given too (then they must agree).
    :param students: N students trained at once; N > 1 steps them as one batched computation (the lite vector env,
        :mod:`kd_gym.vector`).
    :param view: ``router`` | ``instance`` | ``teacher`` (:mod:`kd_gym.views`).
    :param instance_reward: the reward tier: ``return`` | ``student_credit`` | ``gold_credit`` (:mod:`kd_gym.credit`).
    :param options: fields of :class:`~kd_gym.config.EnvConfig`, as for ``gymnasium.make``.
    """
    from kd_gym.env import TeacherSelectionEnv
    from kd_gym.vector import TeacherSelectionVectorEnv

    _check_choices(view, instance_reward)
    for name, value in (("num_envs", num_envs), ("students", students)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid; use an integer >= 1")
    if num_envs % students:
        raise ValueError(f"num_envs={num_envs} is not a multiple of students={students}: num_envs is students x B, "
                         f"e.g. num_envs={students * 32} for B = 32")
    if view != "teacher":  # the teacher view's K sub-envs per instance are known once the pool is loaded
        batch_size = num_envs // students
        if options.setdefault("batch_size", batch_size) != batch_size:
            raise ValueError(f"num_envs={num_envs} with students={students} means batch_size={batch_size}, but "
                             f"batch_size={options['batch_size']} was given; pass num_envs=students x batch_size "
                             f"({students * options['batch_size']})")
    if instance_reward == "student_credit":
        if students > 1:
            raise NotImplementedError(
                "instance_reward='student_credit' over students > 1: the batched vector env does not compute the "
                "student credit of its stacked students; use students=1 (one make_vec call per student), or wrap "
                "gymnasium.make_vec('kd_gym/TeacherSelectionLite-v0', num_envs=N, vectorization_mode='sync', "
                "credit=True) in kd_gym.routing.TeacherRoutingVectorEnv(envs, view, 'student_credit')")
        if options.get("credit") is False:
            raise ValueError("instance_reward='student_credit' needs credit=True (the env computes the credit); "
                             "leave credit out or pass credit=True")
        options["credit"] = True
    if students > 1:
        if options.get("student", "lite") != "lite":
            raise NotImplementedError(f"students={students} with student={options['student']!r}: only lite students "
                                      "are batched; for the full student use students=1")
        env: gym.Env | VectorEnv = TeacherSelectionVectorEnv(num_envs=students, **options)
    else:
        env = TeacherSelectionEnv(**options)
    routing = TeacherRoutingVectorEnv(env, view, instance_reward, owns_env=True)
    if routing.num_envs != num_envs:
        raise ValueError(f"num_envs={num_envs}, but the teacher view of {students} student(s) with batch_size="
                         f"{env.unwrapped.batch_size} and K = {env.unwrapped.num_teachers} teachers has "
                         f"{routing.num_envs} sub-envs; pass num_envs={routing.num_envs}")
    return routing


def _check_choices(view: str, instance_reward: str) -> None:
    if view not in VIEWS:
        raise ValueError(f"view={view!r} is invalid; use one of {VIEWS}")
    if instance_reward not in TIERS:
        raise ValueError(f"instance_reward={instance_reward!r} is invalid; use one of {TIERS} (docs/env.md, "
                         "'Reward tiers')")


class TeacherRoutingVectorEnv(VectorEnv):
    """A TeacherSelection env (one student) or a vector env of N lite students, seen as one sub-env per instance
    (see the module docstring).

    :param env: a TeacherSelection env (wrappers allowed), a :class:`~kd_gym.vector.TeacherSelectionVectorEnv`, or
        any gymnasium vector env of TeacherSelection envs (e.g. ``make_vec(..., vectorization_mode="sync")``). It is
        stepped once per ``step``; a student whose episode ends is reset in the same step.
    :param view: ``router`` | ``instance`` | ``teacher`` (:mod:`kd_gym.views`).
    :param instance_reward: ``return`` | ``student_credit`` (the env must compute it: ``credit=True``) |
        ``gold_credit``.
    :param owns_env: close ``env`` when this env is closed.
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, env: gym.Env | VectorEnv, view: str = "router", instance_reward: str = "return",
                 owns_env: bool = False) -> None:
        _check_choices(view, instance_reward)
        self.env, self.view, self.instance_reward, self._owns_env = env, view, instance_reward, owns_env
        #: whether ``env`` is a vector env of N students (else one env: N = 1)
        self.vector = isinstance(env, VectorEnv)
        base = env.unwrapped if not self.vector else env
        config = base.config if hasattr(base, "config") else env.get_attr("config")[0]
        if instance_reward == "student_credit" and not config.credit:
            raise ValueError("instance_reward='student_credit' needs an env that computes the credit: make it with "
                             "credit=True (kd-gym train / bench: --credit; RL Zoo: --env-kwargs credit:True)")
        self.students = env.num_envs if self.vector else 1
        obs_space = env.single_observation_space if self.vector else env.observation_space
        env_action_space = env.single_action_space if self.vector else env.action_space
        b, k, _ = obs_space["teacher_features"].shape
        c = obs_space["student_logits"].shape[1]
        self.batch_size, self.num_teachers = b, k
        self.select = isinstance(env_action_space, spaces.MultiBinary)
        if view == "teacher":
            self._view: Any = PerTeacherState(obs_space, config.temperature)
            size, per_instance, action_size = self._view.size + k, k, 1
        elif view == "router":
            names = base.instance_feature_names if hasattr(base, "instance_feature_names") else (
                env.get_attr("instance_feature_names")[0])
            self._view = LabelFreeView(names, k, c)
            size, per_instance, action_size = self._view.size, 1, k
        else:
            self._view = InstanceView(obs_space)
            size, per_instance, action_size = self._view.size, 1, k
        #: sub-envs per instance: K in the teacher view, else 1
        self.per_instance = per_instance
        self.num_envs = self.students * b * per_instance
        self.single_observation_space = spaces.Box(-self._view.bound, self._view.bound, (size,), np.float32)
        self.single_action_space = (spaces.MultiBinary(action_size) if self.select
                                    else spaces.Box(-1.0, 1.0, (action_size,), np.float32))
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        #: the wrapped env's latest observation (after an episode's end: the next episode's first)
        self.env_obs: dict[str, np.ndarray] | None = None
        #: the wrapped env's last step: ``action`` (its (B, K) or (N, B, K) weights), ``reward``, ``terminated``,
        #: ``truncated``, ``info``
        self.last_step: dict[str, Any] = {}
        self._returns = np.zeros(self.num_envs)
        self._lengths = np.zeros(self.num_envs, dtype=np.int64)
        self._starts = np.full(self.num_envs, time.perf_counter())

    # -- the maps between the wrapped env and the sub-envs
    def observe(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(num_envs, size) float32: one row per sub-env (student, then instance, then teacher in the teacher view)
        from the wrapped env's ``Dict`` observation ((B, ...) or, for N students, (N, B, ...))."""
        if self.vector:
            obs = {key: value.reshape(-1, *value.shape[2:]) for key, value in obs.items()}
        if self.view == "teacher":
            states = self._view(obs)  # (rows, K, d)
            rows, k = states.shape[0], self.num_teachers
            ids = np.broadcast_to(np.eye(k), (rows, k, k))
            return np.concatenate([states, ids], axis=-1).reshape(rows * k, -1).astype(np.float32)
        return self._view(obs)

    def to_env_action(self, actions: Any) -> np.ndarray:
        """The wrapped env's action, (B, K) or (N, B, K), from the sub-envs' (num_envs, K) (or (num_envs, 1))
        actions: ``(clip(a, -1, 1) + 1) / 2`` (0/1 kept in select mode)."""
        shape = (self.batch_size, self.num_teachers)
        array = np.asarray(actions)
        if array.size != self.num_envs * int(np.prod(self.single_action_space.shape)):
            raise ValueError(f"actions have shape {array.shape}; expected (num_envs, {self.single_action_space.shape[0]}) "
                             f"= ({self.num_envs}, {self.single_action_space.shape[0]})")
        array = array.reshape((self.students, *shape) if self.vector else shape)
        if self.select:
            return array.astype(np.int8)
        return ((np.clip(array, -1.0, 1.0) + 1.0) / 2.0).astype(np.float32)

    def _per_sub_env(self, values: Any) -> np.ndarray:
        """A per-student (scalar or (N,)) or per-instance ((B,) or (N, B)) value, one per sub-env."""
        values = np.asarray(values).reshape(-1)
        return np.repeat(values, self.num_envs // len(values))

    # -- the Gymnasium vector API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Reset every student (``options`` go to the wrapped env, e.g. ``{"keep_student": True}``); ``seed`` seeds
        the wrapped env (a vector env's student n gets ``seed + n``)."""
        if seed is not None:
            super().reset(seed=int(seed))
        obs, info = self.env.reset(seed=seed, options=options)
        self.env_obs = obs
        self._returns[:], self._lengths[:], self._starts[:] = 0.0, 0, time.perf_counter()
        return self.observe(obs), {}

    def step(self, actions: Any):
        """One KD update of every student with the weights its sub-envs chose; students whose episode ended are
        reset in this step (their sub-envs return the next episode's first observation)."""
        action = self.to_env_action(actions)
        obs, reward, terminated, truncated, info = self.env.step(action)
        self.last_step = {"action": action, "reward": reward, "terminated": terminated, "truncated": truncated,
                          "info": info}
        if self.instance_reward == "return":
            rewards = self._per_sub_env(reward)
        else:
            rewards = self._per_sub_env(info[self.instance_reward])
        self._returns += rewards
        self._lengths += 1
        terminated, truncated = self._per_sub_env(terminated), self._per_sub_env(truncated)
        infos: dict[str, Any] = {"env_reward": self._per_sub_env(reward)}
        for key in ("gold_credit", "student_credit"):
            if key in info:
                infos[key] = self._per_sub_env(info[key])
        if "dev_metric" in info:
            infos["dev_metric"] = self._per_sub_env(info["dev_metric"])
            if "_dev_metric" in info:
                infos["_dev_metric"] = self._per_sub_env(info["_dev_metric"])
        done = terminated | truncated
        observation = self.observe(obs)
        if done.any():
            infos["final_obs"], infos["_final_obs"] = np.where(done[:, None], observation, np.float32(0.0)), done
            final = np.full(self.num_envs, None, dtype=object)
            now = time.perf_counter()
            for j in np.flatnonzero(done):
                final[j] = {"episode": {"r": float(self._returns[j]), "l": int(self._lengths[j]),
                                        "t": round(now - self._starts[j], 6)}}
            infos["final_info"], infos["_final_info"] = final, done
            self._returns[done], self._lengths[done], self._starts[done] = 0.0, 0, now
            if self.vector:
                students_done = done.reshape(self.students, -1)[:, 0]
                obs, _ = self.env.reset(options={"reset_mask": students_done})
            else:
                obs, _ = self.env.reset()
            observation = self.observe(obs)
        self.env_obs = obs
        return observation, rewards, terminated, truncated, infos

    def close_extras(self, **kwargs: Any) -> None:
        if self._owns_env:
            self.env.close()

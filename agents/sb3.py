"""PPO, A2C, SAC and TD3 from Stable-Baselines3 through one adapter: a VecEnv view of the TeacherSelection env.

:class:`~agents.vec_view.InstanceVecEnv` is SB3's ``VecEnv`` API over kd_gym's per-instance env
(:class:`kd_gym.routing.TeacherRoutingVectorEnv`, the env behind ``kd_gym/TeacherRoutingLite-v0``, which computes the
views and every reward); it shows one TeacherSelection env as many SB3 sub-environments that share one policy:

- ``view="teacher"``, as in RL-KD: B*K sub-envs, one per (instance, teacher). Sub-env (i, k) observes the
  paper's state ``s_ik`` (:mod:`agents.state`: the instance's shared features, teacher k's own features and softened
  prediction, the student's prediction) plus a one-hot teacher id, and decides teacher k's weight (or keep/drop)
  for instance i. The network is shared across instances and teachers, so what it learns about "a teacher that is
  wrong on this instance" carries over between teachers.
- ``view="instance"``: B sub-envs, one per instance, observing ``[features[i] | teacher_logits[i] | student_logits[i]]``
  and answering for its K teachers.
- ``view="router"``: B sub-envs, one per instance, observing what the instance shows without its gold label
  (:class:`~agents.state.LabelFreeView`, the view of REINFORCE's router: label-free features, the embedding, every
  teacher's log-probabilities) and answering for its K teachers.

The reward of a sub-env (``instance_reward``, a reward tier of :mod:`kd_gym.credit`, docs/env.md): ``"return"``
(alias ``"env"``), the env's reward, the same for every sub-env (one student's progress, shared by all B*K or B
decisions that made it); ``"student_credit"``, each instance's first-order share of the student's dev-loss change
under the weights it chose (the env must be made with ``credit=True``); or ``"gold_credit"`` (alias ``"gold"``), each
labelled instance's gold credit, how much likelier its gold label is under the mixture its action chose than under
equal weights (0 on the transfer rows): teacher correctness, not student progress. The per-instance tiers are
contextual bandits (gamma 0), beyond the paper. Both come from the yml entry (``view``, ``instance_reward``: keys of
this adapter, not SB3 keywords) unless the Config sets them; on the lite env PPO's default is ``router`` + ``gold``
(agents/hyperparams/ppo.yml), the others' ``teacher`` + ``env``.

``step_wait`` assembles the (B, K) action and steps the real env once (one student update). Either way the policy
sees one instance at a time and works for any B. (Measured on the noisy-teacher test scenario with the env reward,
PPO learned to drop the wrong teacher on 6 of 6 seeds in the teacher view and on at most 2 of 6 in the instance view,
with the same budget.)

Units: SB3 counts one timestep per sub-env step, so one env step (student update) is B*K (teacher view) or B
(instance and router views) SB3 timesteps.
``learn(total_steps)`` runs exactly ``total_steps`` env steps (a callback stops SB3 there). In the hyperparameter
files (``agents/hyperparams/<algo>.yml``, RL Zoo layout) ``n_steps``, ``train_freq`` and ``learning_starts`` count
env steps; ``batch_size`` and ``buffer_size`` count SB3 transitions (one per sub-env and step).

Actions: in ``weights`` mode the sub-env's action space is ``Box(-1, 1, (n,))``, n = 1 (teacher view) or K
(instance and router views): SB3's recommended symmetric range, so a Gaussian policy starts at weight 0.5 instead
of half its samples clipped to 0; mapped to weights by ``(a + 1) / 2``. In ``select`` mode it is ``MultiBinary(n)`` (PPO, A2C).

Normalisation: the raw observation mixes CEs, 0/1 flags and logits up to +-50, and the rewards (dev-loss or
dev-metric deltas) are tiny; with the yml key ``normalize`` (RL Zoo's: ``true`` or a dict of ``VecNormalize``
keywords) the SB3 model sees ``VecNormalize(InstanceVecEnv)``: observations standardised with a running mean / std
(updated while learning, frozen in :meth:`SB3Agent.predict`, which applies the same standardisation) and, with
``norm_reward``, rewards divided by a running std of the discounted return. The statistics are part of
``state_dict``. The Config fields ``normalize_obs`` / ``normalize_reward`` override the yml.

Resuming (``learn(total_steps, resume=True)`` after :meth:`SB3Agent.load_training_state`, see
:class:`~agents.base.Agent`) is approximate: the networks, their optimizers, the VecNormalize statistics and SB3's
step and update counters (so its learning-rate schedule and target-network updates) continue from the checkpoint,
and the env continues exactly, without a reset; the rollout being collected (PPO, A2C), the replay buffer (SAC,
TD3) and SB3's random streams (torch's and numpy's global generators, which SB3 samples actions from) start afresh.
A resumed SB3 run is a run of the same budget, but not bit-identical to an uninterrupted one.
"""

from __future__ import annotations

import copy
import dataclasses
import io
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import yaml
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.logger import Logger, make_output_format
from stable_baselines3.common.noise import NormalActionNoise
from stable_baselines3.common.save_util import load_from_zip_file, recursive_setattr
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from agents.base import Agent
from agents.sb3_config import (
    NOT_SB3,
    RENAMED,
    OnPolicyConfig,
    PPOConfig,
    SACConfig,
    SB3Config,
    TD3Config,
    load_hyperparams,
    within_rollout,
)
from agents.vec_view import InstanceVecEnv


class _LearnCallback(BaseCallback):
    """Counts env steps, stops SB3 after ``total_steps``, copies SB3's logged losses into ``agent.metrics`` and calls
    the user's ``callback(locals)`` once per env step."""

    def __init__(self, agent: SB3Agent, total_steps: int, callback=None) -> None:
        super().__init__()
        self.agent, self.total_steps, self.user_callback = agent, total_steps, callback
        self.start = agent.loop.step  # env steps done before this model.learn() (> 0 when resuming)
        model = agent.model
        # Env steps per SB3 collection phase: SB3 stops by itself at a phase boundary; inside a phase we stop it
        # (the partial phase is then not trained on).
        self.phase = model.n_steps if hasattr(model, "n_steps") and not hasattr(model, "train_freq") else (
            model.train_freq.frequency if model.train_freq.unit.value == "step" else 1)

    def _copy_metrics(self) -> None:
        for key, value in self.model.logger.name_to_value.items():
            if key.startswith("train/") and isinstance(value, (int, float, np.number)):
                self.agent.metrics[key.removeprefix("train/")] = float(value)

    def _on_step(self) -> bool:
        loop = self.agent.loop  # InstanceVecEnv resets the env by itself when an episode ends: no reset pending
        loop.step, loop.obs, loop.needs_reset = loop.step + 1, self.agent.vec_env.env_obs, False
        self._copy_metrics()
        if self.user_callback is not None:
            local = {"self": self.agent, "step": loop.step - 1, **self.agent.vec_env.last_step}
            if self.user_callback(local) is False:
                return False
        return loop.step < self.total_steps or (loop.step - self.start) % self.phase == 0

    def _on_rollout_end(self) -> None:
        self._copy_metrics()

    def _on_training_end(self) -> None:
        self._copy_metrics()


class _StopAfter(BaseCallback):
    """:meth:`SB3Agent.learn_over`'s callback: stops SB3 after ``steps`` vector steps (inside a collection phase,
    the partial phase is not trained on) and calls the user's ``callback(locals)`` after each."""

    def __init__(self, agent: SB3Agent, steps: int, callback=None) -> None:
        super().__init__()
        self.agent, self.steps, self.user_callback, self.done = agent, steps, callback, 0

    def _on_step(self) -> bool:
        self.done += 1
        if self.user_callback is not None and self.user_callback({"self": self.agent, "step": self.done - 1}) is False:
            return False
        return self.done < self.steps


_RMS = ("obs_rms", "ret_rms")


class SB3Agent(Agent):
    """An SB3 algorithm on the per-instance view :class:`InstanceVecEnv` of the env.

    :param env: a TeacherSelection env.
    :param kwargs: fields of the agent's ``Config``; None fields come from the hyperparameter file.
    """

    algorithm: ClassVar[type[BaseAlgorithm]]
    supports_select: ClassVar[bool] = True
    pure_predict = True  # SB3's deterministic predict, with the VecNormalize statistics frozen
    Config = SB3Config

    def __init__(self, env: gym.Env, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        if self.select_mode and not self.supports_select:
            raise ValueError(f"agent {self.name!r} needs continuous actions but the env has action_type='select'; "
                             "use action_type='weights' or a selector that supports it ('ppo', 'a2c', 'reinforce')")
        spec = getattr(self.env, "spec", None) or getattr(self.unwrapped, "spec", None)
        params = load_hyperparams(self.name, spec.id if spec else None, self.config.hyperparams_file or None)
        #: the adapter's view and per-instance reward: the Config's, else the yml's (keys of this adapter, not SB3's)
        view, instance_reward = params.pop("view", "teacher"), params.pop("instance_reward", "env")
        self.view = self.config.view or view
        self.instance_reward = self.config.instance_reward or instance_reward
        self.vec_env = InstanceVecEnv(env, self.view, self.instance_reward)
        self.metrics: dict[str, float] = {}
        self._episode_starts = np.ones(self.vec_env.num_envs, dtype=bool)  # for a resumed learn() (training_state)
        self.hyperparams = self._hyperparams(params)
        self._normalize = normalize = self.hyperparams.pop("normalize")
        #: VecNormalize around ``vec_env`` (what the model learns on), or None
        self.normalizer = VecNormalize(self.vec_env, **normalize) if normalize else None
        self.model = self.algorithm(env=self.model_env, seed=self.config.seed, device=self.config.policy_device,
                                    verbose=self.config.verbose, **within_rollout(self.hyperparams,
                                                                                   self.vec_env.num_envs))
        if not self.hyperparams.get("tensorboard_log"):  # SB3's default logger leaves an empty /tmp/SB3-* folder
            outputs = [make_output_format("stdout", "")] if self.config.verbose >= 1 else []
            self.model.set_logger(Logger(folder=None, output_formats=outputs))

    @property
    def learns_from(self) -> str:  # type: ignore[override]
        """What the agent learns from: its sub-envs' reward tier (results tables print it)."""
        return {"return": "the env's reward", "student_credit": "student credit (per instance)",
                "gold_credit": "gold credit (the labelled rows' gold labels)"}[self.vec_env.instance_reward]

    @property
    def model_env(self) -> VecEnv:
        """The VecEnv the SB3 model steps: ``VecNormalize(vec_env)`` or ``vec_env``."""
        return self.normalizer if self.normalizer is not None else self.vec_env

    def _normalize_kwargs(self, params: dict[str, Any]) -> dict[str, Any]:
        """VecNormalize keywords from the yml's ``normalize`` (bool or dict) and the Config overrides; {} for none."""
        normalize = params.pop("normalize", False)
        if isinstance(normalize, str):  # RL Zoo also writes it as a string: "{'norm_obs': True, ...}"
            normalize = yaml.safe_load(normalize.replace("True", "true").replace("False", "false"))
        kwargs = dict(normalize) if isinstance(normalize, dict) else ({} if normalize else None)
        overrides = {"norm_obs": self.config.normalize_obs, "norm_reward": self.config.normalize_reward}
        overrides = {key: value for key, value in overrides.items() if value is not None}
        if kwargs is None:
            if not any(overrides.values()):
                return {}
            kwargs = {"norm_obs": False, "norm_reward": False}
        kwargs.update(overrides)
        kwargs.setdefault("gamma", params.get("gamma", 0.99))  # the return whose std scales the rewards
        if not (kwargs.get("norm_obs", True) or kwargs.get("norm_reward", True)):
            return {}
        return kwargs

    def _hyperparams(self, params: dict[str, Any]) -> dict[str, Any]:
        """SB3 keywords: the yml entry for the env id (``params``), overridden by the Config fields that are set."""
        params.pop("n_timesteps", None)  # RL Zoo keys that are not SB3 keywords
        normalize = self._normalize_kwargs(params)
        params.setdefault("policy", "MlpPolicy")
        for field in dataclasses.fields(self.config):
            value = getattr(self.config, field.name)
            if field.name not in NOT_SB3 and value is not None:
                params[RENAMED.get(field.name, field.name)] = value
        policy_kwargs = dict(params.pop("policy_kwargs", None) or {})
        if self.config.net_arch:
            policy_kwargs["net_arch"] = [int(size) for size in self.config.net_arch.split(",")]
        if getattr(self.config, "log_std_init", None) is not None and not self.select_mode:
            policy_kwargs["log_std_init"] = self.config.log_std_init
        params["policy_kwargs"] = policy_kwargs
        b = self.vec_env.num_envs
        if "learning_starts" in params:  # env steps -> SB3 timesteps
            params["learning_starts"] = int(params["learning_starts"]) * b
        action_noise_std = params.pop("action_noise_std", None)
        if getattr(self.config, "action_noise_std", None) is not None:
            action_noise_std = self.config.action_noise_std
        if action_noise_std:
            dims = self.vec_env.action_space.shape[0]
            params["action_noise"] = NormalActionNoise(np.zeros(dims), float(action_noise_std) * np.ones(dims))
        params["normalize"] = normalize
        return params

    def predict(self, obs: dict[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        instance_obs = self.vec_env.instance_obs(obs)
        if self.normalizer is not None:  # the learned statistics, frozen: normalize_obs never updates them
            instance_obs = self.normalizer.normalize_obs(instance_obs)
        actions, _ = self.model.predict(instance_obs, deterministic=deterministic)
        return self.vec_env.env_action(actions)

    def learn(self, total_steps: int, callback=None, resume: bool = False) -> SB3Agent:
        """Run ``total_steps`` env steps of SB3's ``learn``; ``callback(locals())`` after each step. ``resume``:
        continue a loaded :meth:`training_state`, approximately (see the module docstring)."""
        self._begin(total_steps, resume)
        remaining = total_steps - self.loop.step
        if remaining <= 0:
            return self
        resuming = resume and self.loop.obs is not None
        if resuming:
            self._continue_from(self.loop.obs)
        else:
            self.vec_env.seed(self.config.seed)  # the first reset of learn() uses the agent's seed, like the base loop
        self.model.learn(total_timesteps=remaining * self.vec_env.num_envs, reset_num_timesteps=not resuming,
                         callback=_LearnCallback(self, total_steps, callback))
        return self

    def learn_over(self, envs, steps: int, callback=None) -> SB3Agent:
        """Learn over the N students of the vector env ``envs`` at once (see :meth:`Agent.learn_over`): SB3 steps
        :class:`InstanceVecEnv` over ``envs`` (N times the sub-envs: one batched student step gives SB3 N * B or
        N * B * K transitions) for ``steps`` vector steps. SB3 sizes its buffers by the number of sub-envs, so this
        runs on a model built for the N students that starts from this agent's networks, optimizers, step counters
        and VecNormalize statistics, and hands them back when it stops."""
        view = InstanceVecEnv(envs, self.view, self.instance_reward)
        normalizer = VecNormalize(view, **self._normalize) if self.normalizer is not None else None
        if normalizer is not None:
            for name in _RMS:
                setattr(normalizer, name, copy.deepcopy(getattr(self.normalizer, name)))
        model = self.algorithm(env=normalizer or view, seed=self.config.seed, device=self.config.policy_device,
                               verbose=self.config.verbose, **self._students_hyperparams(envs.num_envs))
        model.set_logger(self.model.logger)
        model.set_parameters(self.model.get_parameters(), exact_match=True, device=self.config.policy_device)
        model.num_timesteps, model._n_updates = self.model.num_timesteps, self.model._n_updates
        view.seed(self.config.seed)
        model.learn(total_timesteps=steps * view.num_envs, callback=_StopAfter(self, steps, callback),
                    reset_num_timesteps=False)
        self.model.set_parameters(model.get_parameters(), exact_match=True, device=self.config.policy_device)
        self.model.num_timesteps, self.model._n_updates = model.num_timesteps, model._n_updates
        if normalizer is not None:
            for name in _RMS:
                setattr(self.normalizer, name, getattr(normalizer, name))
        for key, value in model.logger.name_to_value.items():
            if key.startswith("train/") and isinstance(value, (int, float, np.number)):
                self.metrics[key.removeprefix("train/")] = float(value)
        return self

    def why_not_learn_over(self) -> str | None:
        return None

    def _students_hyperparams(self, students: int) -> dict[str, Any]:
        """The SB3 keywords for a model over N students: ``learning_starts`` (SB3 timesteps) scaled by N."""
        params = {key: value for key, value in self.hyperparams.items() if key != "normalize"}
        if "learning_starts" in params:
            params["learning_starts"] = params["learning_starts"] * students
        return within_rollout(params, students * self.vec_env.num_envs)

    def _continue_from(self, obs: dict[str, np.ndarray]) -> None:
        """Make SB3's next ``learn(reset_num_timesteps=False)`` act on ``obs`` instead of resetting the env. These
        attributes are what SB3's own ``_setup_learn`` sets on a reset."""
        raw = self.vec_env.instance_obs(obs)
        self.vec_env.env_obs = obs
        if self.normalizer is not None:
            self.normalizer.old_obs = raw
            self.model._last_original_obs = raw  # what off-policy algorithms store in their replay buffer
            self.model._last_obs = self.normalizer.normalize_obs(raw)
        else:
            self.model._last_obs = raw
        self.model._last_episode_starts = np.asarray(self._episode_starts, dtype=bool)

    def state_dict(self) -> dict[str, Any]:
        """The SB3 model as the bytes of SB3's own zip (``model.save``: policy, optimizers, hyperparameters) and the
        VecNormalize running statistics (``normalizer``: mean, var and count of the observation and return stats;
        kept as arrays because ``VecNormalize.save`` pickles, and checkpoints must not run code when loaded)."""
        buffer = io.BytesIO()
        self.model.save(buffer)
        state: dict[str, Any] = {"sb3_zip": buffer.getvalue()}
        if self.normalizer is not None:
            state["normalizer"] = {f"{name}.{stat}": np.array(getattr(getattr(self.normalizer, name), stat))
                                   for name in _RMS for stat in ("mean", "var", "count")}
        return state

    def training_state(self) -> dict[str, Any]:
        """The loop (:class:`~agents.base.Agent`), the latest SB3 metrics, SB3's step and update counters, whether
        each sub-env starts an episode at the next step, and VecNormalize's running discounted returns."""
        model = self.model
        starts = model._last_episode_starts
        state = {**super().training_state(), "metrics": dict(self.metrics), "num_timesteps": int(model.num_timesteps),
                 "n_updates": int(model._n_updates),
                 "episode_starts": np.asarray(starts if starts is not None else np.ones(self.vec_env.num_envs), bool)}
        if self.normalizer is not None:
            state["normalizer_returns"] = np.array(self.normalizer.returns)
        return state

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        self.metrics = dict(state["metrics"])
        self.model.num_timesteps, self.model._n_updates = int(state["num_timesteps"]), int(state["n_updates"])
        self._episode_starts = np.asarray(state["episode_starts"], dtype=bool)
        if self.normalizer is not None and "normalizer_returns" in state:
            self.normalizer.returns = np.array(state["normalizer_returns"], dtype=np.float64)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` into this agent's model. Only the zip's tensors are read (SB3's
        ``load_from_zip_file(load_data=False)``, which loads with ``weights_only=True``); its pickled ``data`` part
        is never deserialised: the hyperparameters come from this agent's Config, as when it was saved."""
        if self.normalizer is not None and "normalizer" in state:
            for key, value in state["normalizer"].items():
                name, stat = key.split(".")
                value = np.array(value, dtype=np.float64)
                setattr(getattr(self.normalizer, name), stat, float(value) if stat == "count" else value)
        _, params, variables = load_from_zip_file(io.BytesIO(state["sb3_zip"]), device=self.config.policy_device,
                                                  load_data=False)
        self.model.set_parameters(params, exact_match=True, device=self.config.policy_device)
        for name, value in (variables or {}).items():  # e.g. SAC's log_ent_coef
            recursive_setattr(self.model, f"{name}.data", value.data)


class PPOAgent(SB3Agent):
    """PPO (Schulman et al., 2017) on the per-instance view; hyperparameters in ``agents/hyperparams/ppo.yml``."""

    name = "ppo"
    algorithm = PPO
    Config = PPOConfig


class A2CAgent(SB3Agent):
    """A2C (Mnih et al., 2016) on the per-instance view; hyperparameters in ``agents/hyperparams/a2c.yml``."""

    name = "a2c"
    algorithm = A2C
    Config = OnPolicyConfig


class SACAgent(SB3Agent):
    """SAC (Haarnoja et al., 2018) on the per-instance view (``weights`` mode only)."""

    name = "sac"
    algorithm = SAC
    Config = SACConfig
    supports_select = False


class TD3Agent(SB3Agent):
    """TD3 (Fujimoto et al., 2018) on the per-instance view (``weights`` mode only)."""

    name = "td3"
    algorithm = TD3
    Config = TD3Config
    supports_select = False

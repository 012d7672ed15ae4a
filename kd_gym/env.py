"""The TeacherSelection environments: one step = one mini-batch of B training instances.

At each step the agent sees B instances (features, teacher logits, student logits), answers with per-instance
teacher weights (B, K) (or the paper's keep/drop selection), the student makes one KD update with those weights,
and the reward says how much the student improved. See docs/env.md for every option, shape and unit.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from kd_gym.data import KDData, build_full_data, build_lite_data
from kd_gym.features import FEATURE_BOUND, feature_names, instance_features
from kd_gym.losses import KDLoss
from kd_gym.rewards import make_reward
from kd_gym.scenarios import apply_scenario
from kd_gym.student import FullStudent, LiteStudent, StudentTrainer

LOGIT_BOUND = 50.0
STUDENTS = ("lite", "full")
ACTION_TYPES = ("weights", "select")


def default_config() -> dict[str, Any]:
    """Every option of the environment with its default; pass any of them to ``gymnasium.make`` as keywords."""
    return {
        # -- data and teachers
        "task": "tweets",            # task name (see kd_gym.tasks.load_task) or a Task
        "task_kwargs": {},           # extra keywords for load_task (data_files, text_column, ...)
        "split_seed": 0,             # seed of the train/dev/test split (fixed across episodes and agents)
        "teachers": None,            # None: the default pool of the task; or hub ids / folders / a TeacherPool
        "max_length": 64,            # max tokens per input (teachers, encoder, full student)
        "cache_dir": None,           # cache root for logits and embeddings (default $KD_GYM_HOME)
        "scenario": "default",       # "default", "noisy-teacher" or "specialists" (see kd_gym.scenarios)
        "data": None,                # a prebuilt KDData (skips task/teachers/encoder); for tests and custom setups
        # -- student
        "student": "lite",           # "lite" (MLP over frozen sentence embeddings) or "full" (transformer)
        "student_checkpoint": None,  # full: encoder to take the first layers of; lite: sentence encoder (None: MiniLM)
        "student_layers": 2,         # full student: transformer layers kept
        "lite_hidden": 128,          # lite student: hidden units of the MLP head
        "lr": None,                  # AdamW learning rate (None: 1e-3 lite, 1e-4 full)
        "weight_decay": 0.01,
        "alpha": 0.5,                # weight of the gold-label CE in the KD loss
        "temperature": 2.0,          # KD temperature T
        "device": "auto",            # "auto" = CUDA when available
        "precision": "auto",         # "auto": bf16 autocast on CUDA; on CPU fp32 for the student, bf16 for teacher and
                                     # encoder inference where the CPU has native bf16 (part of the cache key)
        # -- decision problem
        "batch_size": 32,            # B, instances per step
        "episode_steps": 200,        # student updates per episode
        "action_type": "weights",    # "weights": Box(0, 1, (B, K)); "select": MultiBinary((B, K))
        "reward": "dev_delta",       # a name registered in kd_gym.rewards, or a Reward instance
        "reward_interval": 10,       # dev_delta / dev_loss_delta: measure every this many steps (reward 0 between)
        "reward_scale": 1.0,         # multiplies every reward
        "dev_subset": 500,           # dev instances used for rewards (fixed subset, kept on the device)
        "include_representation": False,  # append the student's pooled representation to the features
    }


def _build_data(config: dict[str, Any]) -> tuple[KDData, Any]:
    """The KDData and the student model of a config (loads task, pool and caches)."""
    from kd_gym.embeddings import SentenceEncoder
    from kd_gym.pool_build import default_pool, minilm_path
    from kd_gym.tasks import Task, load_task
    from kd_gym.teachers import TeacherPool

    task = config["task"]
    if not isinstance(task, Task):
        task = load_task(task, seed=config["split_seed"], **config["task_kwargs"])
    common = {"cache_dir": config["cache_dir"], "max_length": config["max_length"], "device": config["device"],
              "precision": config["precision"]}
    teachers = config["teachers"]
    if teachers is None:
        pool = default_pool(task.name, **common)
    elif isinstance(teachers, TeacherPool):
        pool = teachers
    else:
        pool = TeacherPool(teachers, **common)
    checkpoint = config["student_checkpoint"] or minilm_path()
    if config["student"] == "lite":
        data = build_lite_data(task, pool, SentenceEncoder(checkpoint, **common))
        return data, None
    model = FullStudent(checkpoint, task.num_labels, config["student_layers"])
    return build_full_data(task, pool, model.tokenizer, config["max_length"]), model


class TeacherSelectionEnv(gym.Env):
    """Multi-teacher KD as an MDP: choose per-instance teacher weights; reward = the student's progress.

    Observation (``Dict``): ``features`` (B, F) float32 in [-50, 50] (names in ``feature_names``);
    ``teacher_logits`` (B, K, C) and ``student_logits`` (B, C), float32 clipped to [-50, 50].
    Action: ``weights`` (B, K) in [0, 1] (clipped; rows normalised inside the loss; an all-zero row learns from the
    gold label alone) or ``select`` (B, K) in {0, 1}. One step = one student update on B training instances.

    :param config: any keys of :func:`default_config`.
    """

    metadata = {"render_modes": []}

    def __init__(self, **config: Any) -> None:
        unknown = sorted(set(config) - set(default_config()))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; valid options: {sorted(default_config())}")
        self.config = {**default_config(), **config}
        cfg = self.config
        if cfg["student"] not in STUDENTS:
            raise ValueError(f"student must be one of {STUDENTS}, got {cfg['student']!r}")
        if cfg["action_type"] not in ACTION_TYPES:
            raise ValueError(f"action_type must be one of {ACTION_TYPES}, got {cfg['action_type']!r}")
        for key in ("batch_size", "episode_steps", "reward_interval", "dev_subset"):
            if int(cfg[key]) < 1:
                raise ValueError(f"{key} must be >= 1, got {cfg[key]!r}")

        data, full_model = (cfg["data"], None) if cfg["data"] is not None else _build_data(cfg)
        data = apply_scenario(cfg["scenario"], data)
        if cfg["data"] is not None and cfg["student"] == "full":
            from kd_gym.pool_build import minilm_path

            full_model = FullStudent(cfg["student_checkpoint"] or minilm_path(), data.num_labels, cfg["student_layers"])
        if cfg["student"] == "lite":
            input_size = data.splits["train"].inputs["embeddings"].shape[1]
            model = LiteStudent(input_size, data.num_labels, cfg["lite_hidden"])
            lr = cfg["lr"] or 1e-3
        else:
            model, lr = full_model, cfg["lr"] or 1e-4
        self.trainer = StudentTrainer(
            model, data, lr=lr, weight_decay=cfg["weight_decay"], alpha=cfg["alpha"],
            temperature=cfg["temperature"], device=cfg["device"], precision=cfg["precision"],
        )
        self.teacher_names = list(data.teacher_names)
        self.label_names = list(data.task.label_names)
        self.batch_size, self.num_teachers, self.num_labels = cfg["batch_size"], data.num_teachers, data.num_labels
        representation = model.representation_size if cfg["include_representation"] else 0
        self.feature_names = feature_names(self.teacher_names, representation)

        b, k, c, f = self.batch_size, self.num_teachers, self.num_labels, len(self.feature_names)
        self.observation_space = spaces.Dict({
            "features": spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (b, f), np.float32),
            "teacher_logits": spaces.Box(-LOGIT_BOUND, LOGIT_BOUND, (b, k, c), np.float32),
            "student_logits": spaces.Box(-LOGIT_BOUND, LOGIT_BOUND, (b, c), np.float32),
        })
        self.action_space = (spaces.Box(0.0, 1.0, (b, k), np.float32) if cfg["action_type"] == "weights"
                             else spaces.MultiBinary((b, k)))
        self.reward_fn = make_reward(cfg["reward"])
        dev_size = len(data.splits["dev"])
        # A fixed dev subset for rewards, the same for every episode, seed and agent.
        self.dev_indices = np.sort(np.random.default_rng(cfg["split_seed"]).permutation(dev_size)[: cfg["dev_subset"]])
        self._order = np.empty(0, dtype=np.int64)
        self._cursor = 0
        self._t = 0
        self._batch: dict | None = None
        self._logits: torch.Tensor | None = None
        self._last_dev: dict[str, float] | None = None

    # -- data stream
    def _next_indices(self) -> np.ndarray:
        if self._cursor + self.batch_size > len(self._order):  # a new epoch over the train split
            self._order = self.np_random.permutation(len(self.trainer.split("train")))
            self._cursor = 0
        indices = self._order[self._cursor : self._cursor + self.batch_size]
        self._cursor += self.batch_size
        return indices

    def _load_batch(self) -> None:
        self._batch = self.trainer.split("train").batch(self._next_indices())
        # The forward pass made for the observation keeps its graph and is reused by the update in step().
        self._logits, self._representation = self.trainer.forward(self._batch, grad=True)

    def _get_obs(self) -> dict[str, np.ndarray]:
        batch = self._batch
        representation = self._representation if self.config["include_representation"] else None
        features = instance_features(batch["teacher_logits"], self._logits, batch["labels"], batch["lengths"],
                                     self.config["temperature"], representation)
        parts = {"features": features,
                 "teacher_logits": batch["teacher_logits"].clamp(-LOGIT_BOUND, LOGIT_BOUND),
                 "student_logits": self._logits.detach().clamp(-LOGIT_BOUND, LOGIT_BOUND)}
        # one device-to-host copy for the whole observation, then views into it
        flat = torch.cat([part.float().reshape(-1) for part in parts.values()]).cpu().numpy()
        obs, start = {}, 0
        for name, part in parts.items():
            obs[name] = flat[start : start + part.numel()].reshape(part.shape)
            start += part.numel()
        return obs

    def _get_info(self, loss: KDLoss | None = None, weights: np.ndarray | None = None) -> dict[str, Any]:
        info: dict[str, Any] = {"step": self._t, "student_steps": self.trainer.steps}
        if self._last_dev is not None:
            info["dev_metric"] = self._last_dev["metric"]
            info["dev_loss"] = self._last_dev["loss"]
        if loss is not None:
            values = torch.stack([loss.loss.detach(), loss.ce.detach(), loss.kd.detach()]).tolist()  # one device sync
            info.update(loss=values[0], ce=values[1], kd=values[2])
        if weights is not None:
            total = weights.sum(1, keepdims=True)
            info["weights"] = np.divide(weights, total, out=np.zeros_like(weights), where=total > 0)
        return info

    # -- the API
    def dev_metrics(self) -> dict[str, float]:
        """The student's metrics on the fixed dev subset (``metric`` = the task's primary metric, ``loss``)."""
        self._last_dev = self.trainer.evaluate("dev", self.dev_indices)
        return self._last_dev

    def oracle_weights(self) -> np.ndarray:
        """(B, K) the scenario's oracle weights for the current batch (privileged: for reference rows only)."""
        if self._batch is None or "oracle_weights" not in self._batch:
            raise ValueError(f"scenario {self.config['scenario']!r} has no oracle weighting "
                             "(noisy-teacher and specialists have one)")
        return self._batch["oracle_weights"].cpu().numpy()

    def evaluate(self, split: str = "dev") -> dict[str, float]:
        """The student's metrics on a whole split ("dev" or "test"); for reports, never for rewards."""
        return self.trainer.evaluate(split)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode: a fresh student (same init for the same seed) unless ``options={"keep_student": True}``."""
        super().reset(seed=seed)
        if not (options or {}).get("keep_student", False):
            self.trainer.reset(seed=int(self.np_random.integers(2**31 - 1)))
        self._order, self._cursor, self._t = np.empty(0, dtype=np.int64), 0, 0
        self._last_dev = None
        self.reward_fn.reset(self)
        self._load_batch()
        return self._get_obs(), self._get_info()

    def _validate_action(self, action: Any) -> np.ndarray:
        expected = (self.batch_size, self.num_teachers)
        array = np.asarray(action, dtype=np.float32)
        if array.shape != expected:
            raise ValueError(f"action has shape {array.shape}; expected (batch_size, num_teachers) = {expected} "
                             f"for teachers {self.teacher_names}")
        if not np.isfinite(array).all():
            raise ValueError(f"action holds {int((~np.isfinite(array)).sum())} NaN or infinite values; expected "
                             f"finite weights in [0, 1] of shape (batch_size, num_teachers) = {expected}")
        if self.config["action_type"] == "select":
            if not np.isin(array, (0.0, 1.0)).all():
                raise ValueError("action_type='select' expects 0/1 (drop/keep) per teacher; got other values")
            return array
        return np.clip(array, 0.0, 1.0)  # out-of-range weights are clipped, as documented

    def step(self, action: Any):
        if self._batch is None:
            raise RuntimeError("call reset() before step()")
        weights = self._validate_action(action)
        loss = self.trainer.train_step(self._batch, weights, logits=self._logits)
        reward = self.config["reward_scale"] * float(self.reward_fn(self, loss))
        self._t += 1
        terminated = self._t >= self.config["episode_steps"]
        info = self._get_info(loss, weights)
        self._load_batch()
        return self._get_obs(), reward, terminated, False, info

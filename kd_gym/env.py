"""The TeacherSelection environments: one step = one mini-batch of B training instances.

At each step the agent sees B instances (teacher and instance features, teacher logits, student logits), answers with per-instance
teacher weights (B, K) (or the paper's keep/drop selection), the student makes one KD update with those weights,
and the reward says how much the student improved. See docs/env.md for every option, shape and unit.
"""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces

from kd_gym.config import EnvConfig, default_config
from kd_gym.credit import gold_credit_of_rows
from kd_gym.data import KDData
from kd_gym.defaults import pool_silos
from kd_gym.env_setup import build_data, build_student
from kd_gym.features import (
    FEATURE_BOUND,
    TEACHER_FEATURES,
    assemble_features,
    instance_feature_names,
    row_features,
    student_columns,
)
from kd_gym.losses import KDLoss
from kd_gym.regime import default_oracle, student_regime
from kd_gym.rewards import make_reward
from kd_gym.scenarios import apply_scenario
from kd_gym.student import StudentTrainer

LOGIT_BOUND = 50.0
RESET_OPTIONS = ("keep_student",)
DEV_SUBSET = "dev_subset"  # the trainer's name for the reward's fixed dev rows


def validate_weights(action: Any, axes: tuple[str, ...], expected: tuple[int, ...], teacher_names: list[str],
                     action_type: str, ignore: np.ndarray | None = None) -> np.ndarray:
    """The action as float32 weights of shape ``expected`` (named ``axes``), checked: numeric, of that shape,
    finite, 0/1 in ``select`` mode; weights are clipped to [0, 1]. ``ValueError`` naming what was wrong.

    :param ignore: (N,) bool over the first axis: rows set to 0 before the checks (a vector env's resetting sub-envs).
    """
    plural = len(axes) == 3  # a vector env's (num_envs, batch_size, num_teachers) actions
    noun, is_, has, holds = ("actions", "are", "have", "hold") if plural else ("action", "is", "has", "holds")
    shape = f"({', '.join(axes)}) = {expected}"
    try:
        array = np.asarray(action, dtype=np.float32)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{noun} {action!r:.80} {is_} not numeric ({error}); expected an array of shape {shape} "
                         "with values in [0, 1]") from error
    if array.shape != expected:
        raise ValueError(f"{noun} {has} shape {array.shape}; expected {shape} for teachers {teacher_names}")
    if ignore is not None:
        array = np.where(ignore[:, None, None], np.float32(0.0), array)
    if not np.isfinite(np.add.reduce(array, axis=None)) and not np.isfinite(array).all():  # finite sum: all finite
        raise ValueError(f"{noun} {holds} {int((~np.isfinite(array)).sum())} NaN or infinite values; expected "
                         f"finite weights in [0, 1] of shape {shape}")
    if action_type == "select":
        other = (array != 0.0) & (array != 1.0)
        if np.count_nonzero(other):
            bad = array[other][:3].tolist()
            raise ValueError(f"action_type='select' expects 0/1 (drop/keep) per teacher; got values like {bad}")
        return array
    return np.clip(array, 0.0, 1.0)  # out-of-range weights are clipped, as documented


class TeacherSelectionEnv(gym.Env):
    """Multi-teacher KD as an MDP: choose per-instance teacher weights; reward = the student's progress.

    Observation (``Dict`` of float32 ``Box``es, all clipped to [-50, 50]):

    - ``teacher_features`` (B, K, P): what is known about teacher k on instance i (columns
      ``teacher_feature_names``: its CE on the gold label, entropy, correctness, KL to the student);
    - ``instance_features`` (B, S): what belongs to instance i (columns ``instance_feature_names``: teacher
      agreement, student CE and entropy, length, optionally the student's representation);
    - ``teacher_logits`` (B, K, C) and ``student_logits`` (B, C).

    Action: ``weights`` (B, K) in [0, 1] (clipped; rows normalised inside the loss; an all-zero row learns from the
    gold label alone) or ``select`` (B, K) in {0, 1}. One step = one student update on B training instances. The
    end of the ``episode_steps`` budget is a time limit: ``truncated=True``, ``terminated=False``.

    :param options: fields of :class:`~kd_gym.config.EnvConfig` (see docs/env.md).
    """

    metadata = {"render_modes": []}

    def __init__(self, **options: Any) -> None:
        valid = default_config()
        unknown = sorted(set(options) - set(valid))
        if unknown:
            raise TypeError(f"unknown option(s) {unknown}; valid options: {sorted(valid)} (see kd_gym.EnvConfig)")
        #: the options of this env (an :class:`~kd_gym.config.EnvConfig`)
        self.config = cfg = EnvConfig(**options).validate()
        data, trained, pool_dir = (cfg.data, None, None) if cfg.data is not None else build_data(cfg)
        data = apply_scenario(cfg.scenario, data)
        rows = np.arange(len(data.splits["train"]))
        if trained is not None:  # the student learns only from rows no teacher saw
            rows = np.flatnonzero([h not in trained for h in data.task.row_hashes("train")])
        data = student_regime(data, rows, cfg.gold_labels, cfg.split_seed)
        if torch.isnan(data.splits["train"].teacher_logits).any():  # a pool's skipped rows (TeacherPool.skip_rows)
            raise ValueError("the teachers have no logits (NaN) on some of the student's rows: they were skipped as "
                             "rows the teachers were trained on, but this env does not exclude those rows; build the "
                             "env from the pool folder (teachers=FOLDER) or make the pool with skip_rows=()")
        #: the privileged weighting of the oracle row: "gold", "silo", ... (kd_gym.regime), or "scenario" (its own)
        self.oracle_kind = "scenario"
        self._silo_expert: np.ndarray | None = None
        if data.splits["train"].oracle_weights is None:  # the default scenario: a privileged oracle (kd_gym.regime)
            train = data.splits["train"]
            silos = pool_silos(pool_dir, data.task) if pool_dir is not None and cfg.oracle != "gold" else None
            train.oracle_weights, self.oracle_kind = default_oracle(
                cfg.oracle, train.teacher_logits, train.labels, None if silos is None else (silos[0][rows], silos[1]))
            if silos is not None and any(silo is not None for silo in silos[1]):  # for info["silo_expert"]
                expert = {silo: k for k, silo in enumerate(silos[1]) if silo is not None}
                self._silo_expert = np.array([expert.get(silo, -1) for silo in silos[0][rows]], dtype=np.int64)
        if cfg.batch_size > len(data.splits["train"]):
            raise ValueError(f"batch_size={cfg.batch_size} is larger than the train split ({len(data.splits['train'])} "
                             "rows); use a batch_size of at most the train split's size")
        model, lr = build_student(cfg, data)
        self.trainer = StudentTrainer(
            model, data, lr=lr, weight_decay=cfg.weight_decay, alpha=cfg.alpha, temperature=cfg.temperature,
            device=cfg.device, precision=cfg.precision,
        )
        #: teacher names, in the order of the K axis
        self.teacher_names: list[str] = list(data.teacher_names)
        #: class names, in the order of the C axis
        self.label_names: list[str] = list(data.task.label_names)
        #: the task's name and its primary metric ("accuracy", "f1" or "matthews_correlation")
        self.task_name, self.metric_name = data.task.name, data.task.metric
        self.batch_size, self.num_teachers, self.num_labels = cfg.batch_size, data.num_teachers, data.num_labels
        self.reward_interval, self.episode_steps = cfg.reward_interval, cfg.episode_steps
        representation = model.representation_size if cfg.include_representation else 0
        if cfg.include_embedding and "embeddings" not in data.splits["train"].inputs:
            raise ValueError("include_embedding=True, but the data's inputs have no 'embeddings' (the frozen sentence "
                             f"embeddings; inputs: {sorted(data.splits['train'].inputs)}): build the data with "
                             "include_embedding=True, or pass include_embedding=False")
        embedding = data.splits["train"].inputs["embeddings"].shape[1] if cfg.include_embedding else 0
        #: names of the P columns of ``teacher_features`` and of the S columns of ``instance_features``
        self.teacher_feature_names: list[str] = list(TEACHER_FEATURES)
        self.instance_feature_names: list[str] = instance_feature_names(representation, embedding)

        b, k, c = self.batch_size, self.num_teachers, self.num_labels
        p, n_instance = len(self.teacher_feature_names), len(self.instance_feature_names)
        self.observation_space = spaces.Dict({
            "teacher_features": spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (b, k, p), np.float32),
            "instance_features": spaces.Box(-FEATURE_BOUND, FEATURE_BOUND, (b, n_instance), np.float32),
            "teacher_logits": spaces.Box(-LOGIT_BOUND, LOGIT_BOUND, (b, k, c), np.float32),
            "student_logits": spaces.Box(-LOGIT_BOUND, LOGIT_BOUND, (b, c), np.float32),
        })
        self.action_space = (spaces.Box(0.0, 1.0, (b, k), np.float32) if cfg.action_type == "weights"
                             else spaces.MultiBinary((b, k)))
        self.reward_fn = make_reward(cfg.reward)
        train = self.trainer.split("train")
        # the student-independent part of every row's observation, once: a step gathers its rows
        self._rows = row_features(train.teacher_logits, train.labels, train.lengths, cfg.temperature, train.labelled,
                                  train.inputs["embeddings"] if cfg.include_embedding else None)
        dev_size = len(data.splits["dev"])
        #: the fixed dev subset of rewards: the same for every episode, seed and agent
        self.dev_indices = np.sort(np.random.default_rng(cfg.split_seed).permutation(dev_size)[: cfg.dev_subset])
        # the reward's dev rows, gathered once: every reward, lookahead and credit reads this split whole
        self.trainer.data.splits[DEV_SUBSET] = self.trainer.split("dev").select(self.dev_indices)
        self._order = np.empty(0, dtype=np.int64)
        self._cursor = 0
        self._t = 0
        self._batch: dict | None = None
        self._batch_indices = np.empty(0, dtype=np.int64)
        self._rng_before_batch: dict[str, torch.Tensor] = {}
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

    def _load_batch(self, indices: np.ndarray | None = None) -> None:
        self._batch_indices = self._next_indices() if indices is None else indices
        self._rng_before_batch = self.trainer.rng_state()  # a checkpoint replays this batch's dropout exactly
        self._batch = self.trainer.batch("train", self._batch_indices)
        rows = torch.as_tensor(self._batch_indices, device=self._batch["labels"].device)
        self._batch["teacher_probs"] = self._rows.teacher_probs[rows]  # for the loss and the observation's KL
        # The forward pass made for the observation keeps its graph and is reused by the update in step().
        self._logits, self._representation = self.trainer.forward(self._batch, grad=True)

    def _get_obs(self, loss: KDLoss | None = None) -> tuple[dict[str, np.ndarray], np.ndarray | None]:
        """The observation of the current batch and, given the last update's ``loss``, its host copy: (3 + B * K,)
        the loss, CE and KD means and the weights as the loss used them (what ``info`` reports), from the same single
        device-to-host copy as what the observation needs from the student."""
        batch, indices = self._batch, self._batch_indices
        parts = [student_columns(self._logits, batch["teacher_probs"], self.config.temperature)]
        if self.config.include_representation:
            parts.append(self._representation.detach())
        student = torch.cat(parts, dim=1) if len(parts) > 1 else parts[0]
        loss_parts = None
        if loss is None:
            host = student.cpu().numpy()
        else:  # the student's columns, then the loss parts and the weights: one copy
            flat = torch.cat([student.reshape(-1), loss.loss.detach().view(1), loss.ce.detach().view(1),
                              loss.kd.detach().view(1), loss.weights.reshape(-1)]).cpu().numpy()
            host, loss_parts = flat[: student.numel()].reshape(student.shape), flat[student.numel() :]
        k, c = self.num_teachers, self.num_labels
        representation = host[:, k + 2 * c :] if self.config.include_representation else None
        teacher_features, instance_features, teacher_logits = assemble_features(self._rows, indices, host,
                                                                                representation)
        return {"teacher_features": teacher_features,
                "instance_features": instance_features,
                "teacher_logits": teacher_logits,
                "student_logits": np.clip(host[:, k + c : k + 2 * c], -LOGIT_BOUND, LOGIT_BOUND)}, loss_parts

    def _get_info(self, loss_parts: np.ndarray | None = None, rows: np.ndarray | None = None) -> dict[str, Any]:
        """``info``; after an update, ``loss_parts`` from :meth:`_get_obs` and the ``rows`` it trained on (default:
        the current batch's)."""
        rows = self._batch_indices if rows is None else rows
        info: dict[str, Any] = {"step": self._t, "student_steps": self.trainer.steps}
        if self._last_dev is not None:
            info["dev_metric"] = self._last_dev["metric"]
            info["dev_loss"] = self._last_dev["loss"]
        if loss_parts is not None:
            info.update(loss=float(loss_parts[0]), ce=float(loss_parts[1]), kd=float(loss_parts[2]))
            # each row normalised as the loss used it
            info["weights"] = loss_parts[3:].reshape(self.batch_size, self.num_teachers)
            if self._silo_expert is not None:  # privileged, for diagnostics (the routing plots), never for acting
                info["silo_expert"] = self._silo_expert[rows]
        return info

    # -- what agents and runners may read
    @property
    def student_steps(self) -> int:
        """Student updates since the student was last made fresh (kept across ``keep_student`` resets)."""
        return self.trainer.steps

    @property
    def student_data(self) -> KDData:
        """The :class:`~kd_gym.data.KDData` the student learns from: the task, the teachers' cached logits and the
        student's rows after the scenario and the gold-label regime. Pass it as ``data=`` to more envs of the same
        run so that they share the loaded tensors instead of reading the cache again."""
        return self.trainer.data

    def dev_metrics(self) -> dict[str, float]:
        """The student's metrics on the fixed dev subset (``metric`` = the task's primary metric, ``loss``); the
        values reported in ``info["dev_metric"]`` / ``info["dev_loss"]`` from then on."""
        self._last_dev = self.trainer.evaluate(DEV_SUBSET)
        return self._last_dev

    def evaluate(self, split: str = "dev", subset: bool = False) -> dict[str, float]:
        """The student's metrics on ``split`` ("dev" or "test"; ``subset=True``: the reward's dev subset), without
        changing anything; for reports, never for rewards."""
        if split not in ("dev", "test"):
            raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
        return self.trainer.evaluate(DEV_SUBSET if subset and split == "dev" else split)

    def lookahead_dev(self, weights: np.ndarray) -> dict[str, float]:
        """The student's metrics on the reward's dev subset after a trial update on the current batch with
        ``weights`` (B, K), from the current student and with the same dropout as the real update; changes nothing.
        Costs one extra update and one dev-subset evaluation (what the paired reward pays per step)."""
        metrics = self.trainer.lookahead(self._batch, self._validate_action(weights), DEV_SUBSET, None,
                                         rng_state=self._rng_before_batch)
        # The trial restored the weights in place, which invalidates the batch's saved graph: redo its forward pass
        # (same random stream, so the same dropout and the same logits).
        self.trainer.set_rng_state(self._rng_before_batch)
        self._logits, self._representation = self.trainer.forward(self._batch, grad=True)
        return metrics

    def pair_credit(self) -> np.ndarray:
        """(B, K) first-order credit of each (instance, teacher) pair of the current batch, before any action: how
        fast a gradient step on instance i's distillation term toward teacher k alone would lower the student's loss
        on the reward's dev subset (nats per unit step; positive helps). What ``info["credit"]`` reports after a
        step with ``credit=True``, available here before acting (meta-gradient agents weight teachers by it). Costs
        one dev-subset backward pass and one double-backward over the batch; changes nothing."""
        if self._batch is None:
            raise RuntimeError("call reset() before pair_credit()")
        return self.trainer.pair_credit(self._batch, None, DEV_SUBSET).cpu().numpy()

    def teacher_dev_metrics(self) -> list[float]:
        """Each teacher's primary metric on the whole dev split (from the cached logits), in teacher order."""
        return self.trainer.data.teacher_metrics("dev")

    @property
    def has_oracle(self) -> bool:
        """Whether an oracle weighting is defined (always, since the default scenario has the gold-label one)."""
        return self.trainer.split("train").oracle_weights is not None

    def oracle_weights(self) -> np.ndarray:
        """(B, K) the oracle weights for the current batch: the scenario's own, or in the default scenario the
        gold-label oracle of :mod:`kd_gym.regime` (privileged: it reads hidden labels; for reference rows only)."""
        if not self.has_oracle or self._batch is None:
            raise ValueError("no oracle weighting: call reset() first")
        return self._batch["oracle_weights"].cpu().numpy()

    def student_state_dict(self) -> dict[str, torch.Tensor]:
        """The student now (weights, optimizer moments, random stream, step count) as tensors."""
        return self.trainer.state_dict()

    def load_student_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        """Put back a student saved with :meth:`student_state_dict` (e.g. the best or final one, for evaluation)."""
        self.trainer.load_state_dict(state)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the episode exactly where it is (a checkpoint): the student, the episode
        step, the batch order and position, the current batch, the env's RNG, the reward's state. Tensors, arrays
        and plain values only."""
        if self._batch is None:
            raise RuntimeError("call reset() before state_dict(): there is no episode to save yet")
        student = {**self.trainer.state_dict(), **self._rng_before_batch}
        return {"student": student, "t": self._t, "order": self._order.copy(), "cursor": self._cursor,
                "batch_indices": np.asarray(self._batch_indices).copy(),
                "np_random": self.np_random.bit_generator.state, "reward": self.reward_fn.state_dict(),
                "last_dev": self._last_dev}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from a :meth:`state_dict`: the next ``step`` gives what it gave after the state was taken."""
        if self._batch is None:
            self.reset()  # creates np_random; everything it draws is overwritten below
        self.trainer.load_state_dict(state["student"])
        self._t, self._cursor = int(state["t"]), int(state["cursor"])
        self._order = np.asarray(state["order"], dtype=np.int64)
        self.np_random.bit_generator.state = state["np_random"]
        self.reward_fn.load_state_dict(state["reward"])
        self._last_dev = state["last_dev"]
        self._load_batch(np.asarray(state["batch_indices"], dtype=np.int64))

    def save_student(self, path) -> None:
        """Write the student's weights to ``path`` (safetensors)."""
        self.trainer.save(path)

    # -- the Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode: a fresh student (same init for the same seed) unless ``options={"keep_student": True}``."""
        options = dict(options or {})
        unknown = sorted(set(options) - set(RESET_OPTIONS))
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; valid options: {list(RESET_OPTIONS)}")
        super().reset(seed=seed)
        if not options.get("keep_student", False):
            self.trainer.reset(seed=int(self.np_random.integers(2**31 - 1)))
        self._order, self._cursor, self._t = np.empty(0, dtype=np.int64), 0, 0
        self._last_dev = None
        self.reward_fn.reset(self)
        self._load_batch()
        return self._get_obs()[0], self._get_info()

    def _validate_action(self, action: Any) -> np.ndarray:
        return validate_weights(action, ("batch_size", "num_teachers"), (self.batch_size, self.num_teachers),
                                self.teacher_names, self.config.action_type)

    def _gold_credit(self, weights: np.ndarray) -> np.ndarray:
        """(B,) the gold credit of ``weights`` on the current batch (:func:`kd_gym.credit.gold_credit`)."""
        return gold_credit_of_rows(self._rows.gold_likelihood, self._rows.labelled, self._batch_indices, weights)

    def step(self, action: Any):
        if self._batch is None:
            raise RuntimeError("call reset() before step()")
        weights = self._validate_action(action)
        rows, gold = self._batch_indices, self._gold_credit(weights)  # host work next to the action's check
        # first order, before the update: each pair's and each instance's credit (docs/env.md, "Reward tiers")
        credit = self.trainer.credit(self._batch, weights, None, DEV_SUBSET) if self.config.credit else None
        self.reward_fn.before_update(self, weights)
        loss = self.trainer.train_step(self._batch, weights, logits=self._logits)
        self._t += 1
        truncated = self._t >= self.episode_steps  # the budget is a time limit, not a terminal state
        measured = not self.reward_fn.interval or self._t % self.reward_interval == 0 or truncated
        reward = self.config.reward_scale * float(self.reward_fn(self, loss)) if measured else 0.0
        self._load_batch()
        obs, loss_parts = self._get_obs(loss)
        info = self._get_info(loss_parts, rows)
        info["reward_measured"] = measured
        info["gold_credit"] = gold
        if credit is not None:
            info["credit"], info["student_credit"] = (part.cpu().numpy() for part in credit)
        return obs, reward, False, truncated, info

"""A vector env of lite students: N independent TeacherSelection episodes stepped as one batched computation.

    envs = gymnasium.make_vec("kd_gym/TeacherSelectionLite-v0", num_envs=16, vectorization_mode="vector_entry_point")

Sub-env n is the single lite env reset with seed ``seed + n``: the same batches, the same student, the same
observations, rewards and infos (up to float32 rounding in reductions), but the N students' forward and backward
passes, AdamW updates, observation features and dev-subset evaluations are each one batched computation
(:mod:`kd_gym.student_stack`: the mlp or the n-gram lite student), with one device-to-host copy per vector step.
Autoreset follows Gymnasium's default, ``AutoresetMode.NEXT_STEP``. See docs/env.md, "Vectorized students".
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from gymnasium.utils import seeding
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

from kd_gym.credit import gold_credit_of_rows
from kd_gym.env import LOGIT_BOUND, TeacherSelectionEnv, validate_weights
from kd_gym.features import assemble_features, row_features, student_columns
from kd_gym.losses import KDLoss
from kd_gym.rewards import REWARDS
from kd_gym.student_stack import stacked_kd_loss, stacked_students

#: rewards the vector env computes for all students at once
SUPPORTED_REWARDS = ("dev_delta", "dev_loss_delta", "neg_ce", "neg_ce_kd")
INTERVAL_REWARDS = ("dev_delta", "dev_loss_delta")
_USE_SYNC = "use gymnasium.make_vec(..., vectorization_mode='sync'), which steps single envs one after another"


def _reward_name(reward: Any) -> str:
    """The registered name of a built-in reward given by name or as an instance of its class."""
    name = reward if isinstance(reward, str) else next(
        (key for key, cls in REWARDS.items() if type(reward) is cls), repr(reward))
    if name not in SUPPORTED_REWARDS:
        raise NotImplementedError(f"reward={name!r} is not computed by the vector env, which supports "
                                  f"{list(SUPPORTED_REWARDS)}; for other rewards {_USE_SYNC}")
    return name


class TeacherSelectionVectorEnv(VectorEnv):
    """N lite TeacherSelection envs with independent students, stepped as one batched computation.

    Observations, actions, rewards and flags are the single env's with a leading (N,) axis
    (``single_observation_space`` and ``single_action_space`` are the single env's spaces); ``info`` is a dict of
    (N, ...) arrays with a boolean mask ``_key`` saying which sub-envs report ``key`` (Gymnasium's convention).

    ``reset(seed=s)`` seeds sub-env n with ``s + n`` (or a list of N seeds); ``reset(options={"keep_student": True})``
    keeps the students; ``options={"reset_mask": mask}`` resets only the sub-envs where the (N,) bool mask is True.
    After a sub-env reports ``truncated``, the next ``step`` resets it (its action is ignored, its reward is 0) and
    returns its first observation (``AutoresetMode.NEXT_STEP``).

    Not supported (``NotImplementedError``): the full student, ``credit=True``, rewards other than
    :data:`SUPPORTED_REWARDS`; for those, ``gymnasium.make_vec(..., vectorization_mode="sync")``.

    :param num_envs: N >= 1.
    :param options: fields of :class:`~kd_gym.config.EnvConfig`, as for the single env.
    """

    metadata = {"autoreset_mode": AutoresetMode.NEXT_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, **options: Any) -> None:
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r} is invalid; use an integer >= 1")
        if options.get("student", "lite") != "lite":
            raise NotImplementedError(f"student={options['student']!r}: the vector env batches lite students only; "
                                      f"for the full student {_USE_SYNC}")
        if options.get("credit", False):
            raise NotImplementedError(
                "credit=True: the vector env does not compute the pair credit nor the student credit (info['credit'], "
                "info['student_credit']) of its stacked students; for one student use the single env (or the "
                f"per-instance env with students=1); for N students {_USE_SYNC}")
        self.reward_name = _reward_name(options.get("reward", "dev_delta"))
        single = TeacherSelectionEnv(**options)  # checks the options, builds the data once, gives the architecture
        trainer = single.trainer
        #: the options of every sub-env (an :class:`~kd_gym.config.EnvConfig`)
        self.config = cfg = single.config
        self.num_envs = n = num_envs
        self.single_observation_space, self.single_action_space = single.observation_space, single.action_space
        self.observation_space = batch_space(single.observation_space, n)
        self.action_space = batch_space(single.action_space, n)
        for name in ("teacher_names", "label_names", "task_name", "metric_name", "batch_size", "num_teachers",
                     "num_labels", "reward_interval", "episode_steps", "teacher_feature_names",
                     "instance_feature_names", "dev_indices"):
            setattr(self, name, getattr(single, name))
        self.device, self.task = trainer.device, trainer.data.task
        #: the N students, stacked
        self.students = stacked_students(trainer.model, n, lr=trainer.lr, weight_decay=trainer.weight_decay,
                                            grad_clip=trainer.grad_clip, device=trainer.device, dtype=trainer.dtype)
        self._splits = trainer.data.splits
        self._train = train = self._splits["train"]
        # the student-independent part of every row's observation, once (as the single env): a step gathers rows
        self._rows = row_features(train.teacher_logits, train.labels, train.lengths, cfg.temperature, train.labelled,
                                  train.inputs["embeddings"] if cfg.include_embedding else None)
        self._dev = self._splits["dev"].select(self.dev_indices)  # the reward's fixed dev rows
        self._host_dev_labels = self._dev.labels.cpu().numpy()
        self._interval = self.reward_name in INTERVAL_REWARDS
        # per sub-env state
        self._np_randoms: list[np.random.Generator | None] = [None] * n
        # (N, rows) each sub-env's epoch order over the train rows and its position in it; a cursor of `rows`
        # (nothing left) makes the next batch draw a new order, as the single env's empty order does
        self._orders = np.zeros((n, len(train)), dtype=np.int64)
        self._cursors = np.full(n, len(train), dtype=np.int64)
        self._batch_offsets = np.arange(self.batch_size)
        self._t = np.zeros(n, dtype=np.int64)
        self._indices = np.zeros((n, self.batch_size), dtype=np.int64)
        self._last_dev = np.zeros((n, 2))  # dev metric, dev loss of the last measurement
        self._has_dev = np.zeros(n, dtype=bool)
        self._last_value = np.zeros(n)  # what the interval reward measured last
        self._autoreset = np.zeros(n, dtype=bool)
        self._batch: dict[str, torch.Tensor] | None = None
        self._masks: torch.Tensor | None = None
        self._logits: torch.Tensor | None = None

    # -- per sub-env bookkeeping (host)
    def _next_indices(self, envs: np.ndarray) -> None:
        """Move the sub-envs ``envs`` ((N,) bool) to their next B train rows (``self._indices``): each its own epoch
        order, drawn from its own generator when the last one is used up (as the single env), gathered at once."""
        rows = self._orders.shape[1]
        for env in np.flatnonzero(envs & (self._cursors + self.batch_size > rows)):  # a new epoch: rare
            self._orders[env] = self._np_randoms[env].permutation(rows)
            self._cursors[env] = 0
        chosen = np.flatnonzero(envs)
        self._indices[chosen] = self._orders[chosen[:, None], self._cursors[chosen, None] + self._batch_offsets]
        self._cursors[chosen] += self.batch_size

    def _start_episodes(self, envs: np.ndarray, keep_student: bool) -> None:
        for env in np.flatnonzero(envs):
            if not keep_student:
                self.students.reset(int(env), int(self._np_randoms[env].integers(2**31 - 1)))
            self._cursors[env], self._t[env] = self._orders.shape[1], 0  # a new order at the first batch
            self._has_dev[env] = False

    # -- the batched computation
    def _gather(self) -> dict[str, torch.Tensor]:
        """Every sub-env's current batch, (N, B, ...) tensors on the device (index_select: one pass per tensor)."""
        n, b = self._indices.shape
        rows = torch.as_tensor(self._indices.reshape(-1), device=self.device)
        train, k, c = self._train, self.num_teachers, self.num_labels
        pick = (lambda t, *shape: torch.index_select(t, 0, rows).view(n, b, *shape))  # noqa: E731
        key = self.students.input_key
        batch = {key: pick(train.inputs[key], *train.inputs[key].shape[1:]), "labels": pick(train.labels),
                 "teacher_logits": pick(train.teacher_logits, k, c), "teacher_probs": pick(self._rows.teacher_probs, k, c)}
        if train.labelled is not None:
            batch["labelled"] = pick(train.labelled)
        return batch

    def _advance(self, fresh: np.ndarray, measure: np.ndarray, loss: KDLoss | None) -> dict[str, np.ndarray]:
        """Measure the dev subset for the sub-envs ``measure``, give the sub-envs ``fresh`` their next batch, run
        the students' forward pass on every sub-env's batch, and copy to the host, at once, what the observation,
        the rewards and the info need.

        :param fresh: (N,) bool, sub-envs that move to a new batch (the others redo their batch with its masks).
        :param measure: (N,) bool, sub-envs whose dev metrics are measured now.
        :param loss: the update's loss parts, (N,) each, or None.
        :return: host arrays: ``student`` (N * B, K + 2C [+ H]) the students' columns of the observation
            (:func:`~kd_gym.features.student_columns` [and the representation]), ``loss`` (N, 3) and ``weights``
            (N, B, K, normalised) when given,
            ``dev_predictions`` (n, M) and ``dev_loss`` (n,) for the n measured sub-envs.
        """
        n, b, c = self.num_envs, self.batch_size, self.num_labels
        parts: dict[str, torch.Tensor] = {}
        measured = np.flatnonzero(measure)
        if measured.size:
            logits = self.students.predict(self._dev.inputs[self.students.input_key], None if measured.size == n else measured)
            labels = self._dev.labels.repeat(len(measured))
            parts["dev_loss"] = F.cross_entropy(logits.reshape(-1, c), labels, reduction="none").view(
                len(measured), -1).mean(1)
            parts["dev_predictions"] = logits.argmax(-1).float()
        self._next_indices(fresh)
        self._batch = batch = self._gather()
        self._masks = self.students.dropout_masks(b, None if fresh.all() else fresh)
        logits, representation = self.students.forward(batch[self.students.input_key], self._masks, train=True)
        self._logits = logits.requires_grad_()  # the loss's input: step() takes its gradient
        # what the observation needs from the students, for all N * B rows; the rest is gathered on the host
        rows, k = n * b, self.num_teachers
        student = [student_columns(logits.view(rows, c), batch["teacher_probs"].view(rows, k, c),
                                   self.config.temperature)]
        if self.config.include_representation:
            student.append(representation.reshape(rows, -1))
        parts = {"student": torch.cat(student, dim=1) if len(student) > 1 else student[0], **parts}
        if loss is not None:
            parts["loss"] = torch.stack([loss.loss.detach(), loss.ce, loss.kd], dim=1)
            parts["weights"] = loss.weights
        flat = torch.cat([t.reshape(-1).float() for t in parts.values()]).cpu().numpy()  # the one host copy
        host, start = {}, 0
        for key, tensor in parts.items():
            host[key] = flat[start : start + tensor.numel()].reshape(tensor.shape)
            start += tensor.numel()
        for i, env in enumerate(measured):
            metrics = self.task.compute_metrics(host["dev_predictions"][i].astype(np.int64), self._host_dev_labels)
            self._last_dev[env] = metrics["metric"], float(host["dev_loss"][i])
            self._has_dev[env] = True
        return host

    def _observation(self, host: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The observation of every sub-env from the host copy of the students' columns (the single env's
        assembly, on N * B rows)."""
        n, b, k, c = self.num_envs, self.batch_size, self.num_teachers, self.num_labels
        indices, student = self._indices.reshape(-1), host["student"]
        representation = student[:, k + 2 * c :] if self.config.include_representation else None
        teacher, instance, teacher_logits = assemble_features(self._rows, indices, student, representation)
        return {"teacher_features": teacher.reshape(n, b, *teacher.shape[1:]),
                "instance_features": instance.reshape(n, b, -1),
                "teacher_logits": teacher_logits.reshape(n, b, k, c),
                "student_logits": np.clip(student[:, k + c : k + 2 * c], -LOGIT_BOUND, LOGIT_BOUND).reshape(n, b, c)}

    def _measure_value(self, envs: np.ndarray) -> np.ndarray:
        """What the interval reward measures on the sub-envs ``envs`` (from the last dev measurement)."""
        if self.reward_name == "dev_delta":
            return 100.0 * self._last_dev[envs, 0]
        return -self._last_dev[envs, 1]

    def _info(self, envs: np.ndarray) -> dict[str, np.ndarray]:
        """The keys every sub-env in ``envs`` reports (the single env's reset info), dict-of-arrays with masks."""
        dev = envs & self._has_dev
        info = {"step": np.where(envs, self._t, 0), "_step": envs.copy(),
                "student_steps": np.where(envs, self.students.steps, 0), "_student_steps": envs.copy()}
        if dev.any():
            info.update(dev_metric=np.where(dev, self._last_dev[:, 0], 0.0), _dev_metric=dev,
                        dev_loss=np.where(dev, self._last_dev[:, 1], 0.0), _dev_loss=dev.copy())
        return info

    # -- the Gymnasium vector API
    def reset(self, *, seed: int | list[int | None] | None = None, options: dict | None = None):
        """Reset every sub-env (or those of ``options["reset_mask"]``): a fresh student unless
        ``options={"keep_student": True}``. ``seed``: None, an int s (sub-env n gets s + n) or N seeds."""
        options = dict(options or {})
        mask = options.pop("reset_mask", None)
        unknown = sorted(set(options) - {"keep_student"})
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; valid options: ['keep_student', 'reset_mask']")
        n = self.num_envs
        if mask is None:
            mask = np.ones(n, dtype=bool)
        elif not (isinstance(mask, np.ndarray) and mask.dtype == np.bool_ and mask.shape == (n,) and mask.any()):
            raise ValueError(f"options['reset_mask'] must be a bool numpy array of shape ({n},) with a True value; "
                             f"got {mask!r:.80}")
        if self._logits is None and not mask.all():
            raise RuntimeError("the first reset() must reset every sub-env; pass no reset_mask")
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [None if seed is None else int(seed) + i for i in range(n)]
            if seed is not None:
                super().reset(seed=int(seed))
        else:
            seeds = list(seed)
            if len(seeds) != n:
                raise ValueError(f"got {len(seeds)} seeds for num_envs={n}; pass one seed per sub-env, or an int")
        for env in np.flatnonzero(mask):
            if seeds[env] is not None or self._np_randoms[env] is None:
                self._np_randoms[env], _ = seeding.np_random(seeds[env])
        self._start_episodes(mask, keep_student=bool(options.get("keep_student", False)))
        self._autoreset[mask] = False
        host = self._advance(mask, mask if self._interval else np.zeros(n, dtype=bool), None)
        self._last_value[mask] = self._measure_value(mask) if self._interval else 0.0
        return self._observation(host), self._info(mask)

    def _validate_actions(self, actions: Any, active: np.ndarray) -> np.ndarray:
        """The checked (N, B, K) weights; the action of a resetting sub-env (``active`` False) is ignored."""
        return validate_weights(actions, ("num_envs", "batch_size", "num_teachers"),
                                (self.num_envs, self.batch_size, self.num_teachers), self.teacher_names,
                                self.config.action_type, ignore=~active)

    def step(self, actions: Any):
        """One KD update of every student that is not being reset, then every sub-env's next batch."""
        if self._batch is None:
            raise RuntimeError("call reset() before step()")
        resetting = self._autoreset.copy()
        stepping = ~resetting
        weights = self._validate_actions(actions, stepping)
        batch, cfg = self._batch, self.config
        loss = stacked_kd_loss(self._logits, batch["teacher_logits"], torch.as_tensor(weights, device=self.device),
                               batch["labels"], alpha=cfg.alpha, temperature=cfg.temperature,
                               labelled=batch.get("labelled"), teacher_probs=batch["teacher_probs"])
        (grad,) = torch.autograd.grad(loss.loss.sum(), self._logits)  # student n's loss: its own logits only
        self.students.update(grad)  # resetting students are updated too, then drawn afresh below
        self._t[stepping] += 1
        truncated = stepping & (self._t >= self.episode_steps)  # a time limit, never a terminal state
        if self._interval:
            measured = stepping & ((self._t % self.reward_interval == 0) | truncated)
        else:
            measured = stepping.copy()
        acted_on = self._indices  # the rows of the batch just trained on (_advance overwrites them in place)
        gold = gold_credit_of_rows(self._rows.gold_likelihood, self._rows.labelled, acted_on, weights)
        self._start_episodes(resetting, keep_student=False)
        everyone = np.ones(self.num_envs, dtype=bool)
        host = self._advance(everyone, (measured | resetting) if self._interval else ~everyone, loss)
        rewards = np.zeros(self.num_envs)
        if self._interval:
            value = self._measure_value(measured)
            rewards[measured] = value - self._last_value[measured]
            self._last_value[measured] = value
            self._last_value[resetting] = self._measure_value(resetting)
        else:
            ce, kd = host["loss"][:, 1], host["loss"][:, 2]
            rewards[measured] = (-ce if self.reward_name == "neg_ce" else -(ce + kd))[measured]
        rewards *= cfg.reward_scale
        info = self._info(everyone)
        if stepping.any():
            values = np.where(stepping[:, None], host["loss"].astype(np.float64), 0.0)
            # weights: normalised as the loss used them (a resetting sub-env's action was zeroed: its rows are 0)
            info.update(loss=values[:, 0], ce=values[:, 1], kd=values[:, 2], weights=host["weights"],
                        reward_measured=measured, gold_credit=np.where(stepping[:, None], gold, np.float32(0.0)),
                        **{f"_{key}": stepping.copy()
                           for key in ("loss", "ce", "kd", "weights", "reward_measured", "gold_credit")})
        self._autoreset = truncated
        return self._observation(host), rewards, np.zeros(self.num_envs, dtype=bool), truncated, info

    # -- what agents and runners may read
    @property
    def student_steps(self) -> np.ndarray:
        """(N,) updates of each student since it was last drawn."""
        return self.students.steps.copy()

    @torch.no_grad()
    def evaluate(self, split: str = "dev", subset: bool = False) -> list[dict[str, float]]:
        """Each student's metrics on ``split`` ("dev" or "test"; ``subset=True``: the reward's dev subset), as the
        single env's ``evaluate`` gives them, one dict per sub-env; changes nothing."""
        if split not in ("dev", "test"):
            raise ValueError(f"split must be 'dev' or 'test', got {split!r}")
        tensors = self._dev if subset and split == "dev" else self._splits[split]
        logits = self.students.predict(tensors.inputs[self.students.input_key])
        labels, host_labels = tensors.labels, tensors.labels.cpu().numpy()
        losses = [F.cross_entropy(student, labels).item() for student in logits]
        predictions = logits.argmax(-1).cpu().numpy()
        return [{**self.task.compute_metrics(p, host_labels), "loss": loss} for p, loss in zip(predictions, losses)]

    def student_state_dict(self, env: int) -> dict[str, torch.Tensor]:
        """Sub-env ``env``'s student weights, with the keys of ``LiteStudent.state_dict()``."""
        return self.students.state_dict(env)

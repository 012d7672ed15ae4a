"""Meta-gradient teacher weighting: per-instance teacher weights from how well each teacher's distillation
gradient aligns with the gradient of the dev loss, recomputed at every step. No RL, nothing learned: the rival
that a learning agent has to beat.

Learning to reweight (Ren et al., "Learning to Reweight Examples for Robust Deep Learning", ICML 2018,
"L2RW"), mapped onto kd-gym:
- L2RW weighs each training example by how much one small gradient step on it would lower the validation loss.
  To first order, that is the dot product of the example's gradient with the validation gradient, clipped at 0
  and normalised over the batch. Here the examples are (instance, teacher) pairs.
  ``env.unwrapped.pair_credit()`` gives, for the current batch and before acting, ``c_ik``: the first-order
  decrease of the reward's dev-subset loss from a gradient step on instance i's distillation term toward
  teacher k (nats per unit step; positive helps; docs/env.md, "Per-pair credit").
- score: ``s_ik = (1 - smoothing) * c_ik + smoothing * m_k``, where ``m_k`` is a running mean (EMA, decay
  ``smoothing_decay``) of teacher k's batch-mean credit over the current student's steps. It trades per-pair
  detail for less noise. ``smoothing=0`` (the default) is L2RW's per-example rule.
- weights, ``rule="relu"`` (L2RW): ``w_ik = max(s_ik, 0) / sum_k max(s_ik, 0)``. L2RW normalises over the
  batch. The env normalises each instance's row itself, so only the ratios within a row count, and whether the
  row is all zero. ``rule="softmax"``: ``w_ik = softmax_k(s_ik / (weight_temperature * sigma))``, with sigma
  the std of the scores over the batch's B * K pairs, so the temperature has no unit.
- fallback, under either rule: an instance none of whose teachers has a positive score. ``"zero"``: an
  all-zero row. A labelled row then learns from its gold label alone; a transfer row (gold label hidden)
  contributes nothing, as a negative-alignment example does in L2RW (:mod:`kd_gym.losses`). ``"uniform"``:
  every teacher. ``"best"``: all weight on the highest score.
- ``select`` mode: keep the teachers with a positive score; fallback rows as above (``"uniform"`` keeps all,
  ``"best"`` keeps the highest score).

Cost per step: one ``pair_credit()``, which is one forward and backward pass on the reward's dev subset, one
forward pass on the batch and one double-backward over it.

``predict(obs)`` reads the credit of the batch the env it was built on is about to train on. Call it on that
env's current observation (as :meth:`Agent.learn` and the bench's evaluation loop do), never on a stored or
foreign one. Calling it again on the same observation gives the same action, computes nothing new and does not
advance the running means.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from agents.base import Agent, AgentConfig

RULES = ("relu", "softmax")
FALLBACKS = ("zero", "uniform", "best")


@dataclasses.dataclass
class MetaGradientConfig(AgentConfig):
    rule: str = "relu"
    """credit to weights: 'relu' (L2RW: positive scores, normalised per instance) or 'softmax'"""
    weight_temperature: float = 1.0
    """rule='softmax': temperature, in units of the std of the batch's scores (smaller: sharper)"""
    smoothing: float = 0.0
    """score = (1 - smoothing) * pair credit + smoothing * its teacher's running mean credit"""
    smoothing_decay: float = 0.9
    """decay per step of each teacher's running mean credit (an EMA over the current student's batches)"""
    fallback: str = "zero"
    """an instance with no positive score: 'zero' (gold label alone; transfer row: none), 'uniform', 'best'"""


class MetaGradientAgent(Agent):
    """Per-instance teacher weights from the env's per-pair credit (L2RW, Ren et al. 2018); see the module
    docstring.

    It learns nothing (:meth:`state_dict` is empty, ``learns`` is False): the base class's :meth:`Agent.learn`
    loop runs it, calling :meth:`predict` once per step. Its running means (``smoothing`` > 0) follow the
    current student: they restart at every fresh student (``env.unwrapped.student_steps == 0``) and are part
    of :meth:`training_state`, not of a saved agent.

    :param env: a TeacherSelection env (wrappers allowed) whose ``env.unwrapped`` has ``pair_credit()``.
    :param kwargs: fields of :class:`MetaGradientConfig`.
    """

    name = "metagrad"
    learns_from = "student credit, greedily (no learning)"
    Config = MetaGradientConfig
    learns = False

    def __init__(self, env, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        cfg = self.config
        if cfg.rule not in RULES:
            raise ValueError(f"metagrad: rule={cfg.rule!r} is not one of {list(RULES)}")
        if cfg.fallback not in FALLBACKS:
            raise ValueError(f"metagrad: fallback={cfg.fallback!r} is not one of {list(FALLBACKS)}")
        if not cfg.weight_temperature > 0:
            raise ValueError(f"metagrad: weight_temperature={cfg.weight_temperature} must be > 0 (e.g. 1.0)")
        for field in ("smoothing", "smoothing_decay"):
            value = getattr(cfg, field)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"metagrad: {field}={value} must be in [0, 1]")
        if not callable(getattr(self.unwrapped, "pair_credit", None)):
            raise ValueError(f"metagrad needs an env with pair_credit() (a kd_gym TeacherSelection env); "
                             f"got {type(self.unwrapped).__name__}")
        #: (K,) running mean of each teacher's batch-mean credit (nats per unit step) for the current student
        self.teacher_credit: np.ndarray | None = None
        #: what the last step's credit looked like (logged by the bench with the dev curves)
        self.metrics: dict[str, float] = {}
        self._last: tuple[int, np.ndarray, np.ndarray] | None = None  # (student step, teacher_logits, scores)

    # -- the decision
    def scores(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(B, K) scores ``s_ik`` of the current batch (nats per unit step): the pair credit, mixed with the
        teachers' running means when ``smoothing`` > 0. Computes ``pair_credit()`` once per observation."""
        step = self.unwrapped.student_steps
        last = self._last
        if last is not None and last[0] == step and np.array_equal(last[1], obs["teacher_logits"]):
            return last[2]
        credit = np.asarray(self.unwrapped.pair_credit(), dtype=np.float64)
        if credit.shape != self.batch_shape:
            raise ValueError(f"metagrad: pair_credit() gave shape {credit.shape}, the action space is "
                             f"{self.batch_shape}; build the agent on the env whose observation it answers")
        credit = np.nan_to_num(credit, nan=0.0, posinf=0.0, neginf=0.0)  # a diverged student: no evidence
        batch_mean = credit.mean(axis=0)  # (K,)
        decay = self.config.smoothing_decay
        if step == 0 or self.teacher_credit is None:  # a fresh student starts its own running means
            self.teacher_credit = batch_mean
        else:
            self.teacher_credit = decay * self.teacher_credit + (1.0 - decay) * batch_mean
        mix = self.config.smoothing
        scores = (1.0 - mix) * credit + mix * self.teacher_credit[None, :]
        self._last = (step, np.array(obs["teacher_logits"], copy=True), scores)
        self._log(credit, scores)
        return scores

    def weights_from_scores(self, scores: np.ndarray) -> np.ndarray:
        """(B, K) weights in [0, 1] from scores (B, K): rows sum to 1 or (``fallback="zero"``) are all 0."""
        b, k = scores.shape
        helped = scores.max(axis=1) > 0  # (B,) instances with a teacher that helps
        if self.config.rule == "relu":
            positive = np.maximum(scores, 0.0)
            weights = positive / np.where(helped, positive.sum(axis=1), 1.0)[:, None]
        else:
            scale = self.config.weight_temperature * max(float(scores.std()), 1e-12)
            logits = scores / scale
            weights = np.exp(logits - logits.max(axis=1, keepdims=True))
            weights /= weights.sum(axis=1, keepdims=True)
        weights[~helped] = self._fallback_rows(scores[~helped])
        return weights.astype(np.float32)

    def _fallback_rows(self, scores: np.ndarray) -> np.ndarray:
        """(n, K) the weights of ``n`` instances whose scores (n, K) are all <= 0."""
        if self.config.fallback == "zero":
            return np.zeros_like(scores)
        if self.config.fallback == "uniform":
            return np.full_like(scores, 1.0 / scores.shape[1])
        best = np.zeros_like(scores)
        best[np.arange(len(scores)), scores.argmax(axis=1)] = 1.0
        return best

    def predict(self, obs: dict[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        """The action (B, K) for the env's current observation ``obs`` (the rule has no randomness:
        ``deterministic`` changes nothing). Weights mode: :meth:`weights_from_scores`; select mode: 1 for the
        teachers with a positive score (fallback rows: none, all, or the highest score)."""
        scores = self.scores(obs)
        if not self.select_mode:
            return self.weights_from_scores(scores)
        keep = scores > 0
        fallback = ~keep.any(axis=1)
        keep[fallback] = self._fallback_rows(scores[fallback]) > 0
        return keep.astype(np.int8)

    def _log(self, credit: np.ndarray, scores: np.ndarray) -> None:
        self.metrics.update(positive_pairs=float((scores > 0).mean()),
                            fallback_rows=float((scores.max(axis=1) <= 0).mean()))
        for k, teacher in enumerate(self.unwrapped.teacher_names):
            self.metrics[f"credit[{teacher}]"] = float(credit[:, k].mean())

    # -- state: nothing learned; the running means are part of learn()'s position
    def training_state(self) -> dict[str, Any]:
        """The loop and rng (:class:`~agents.base.Agent`) and the teachers' running mean credit (empty before
        the first step)."""
        means = [] if self.teacher_credit is None else [float(v) for v in self.teacher_credit]
        return {**super().training_state(), "teacher_credit": means}

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        means = state.get("teacher_credit") or []
        self.teacher_credit = np.asarray(means, dtype=np.float64) if len(means) else None
        self._last = None

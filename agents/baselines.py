"""Fixed teacher weightings: the usual multi-teacher KD and its variants, as agents that do not learn.

In ``select`` mode each baseline keeps the teachers its weight rule favours (weights >= 1/K) and drops the rest.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from agents.base import Agent, AgentConfig
from kd_gym.features import TEACHER_FEATURES

TEACHER_CE = TEACHER_FEATURES.index("teacher_ce")  # columns of teacher_features
TEACHER_ENTROPY = TEACHER_FEATURES.index("teacher_entropy")


class FixedAgent(Agent):
    """A policy that never learns; subclasses define :meth:`weights`."""

    learns = False
    learns_from = "nothing (fixed)"
    pure_predict = True  # weights from the observation only (random and oracle say otherwise)

    def weights(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def predict(self, obs: dict[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        weights = self.weights(obs).astype(np.float32)
        if self.select_mode:
            k = weights.shape[1]
            return (weights >= 1.0 / k - 1e-6).astype(np.int8) * (weights.sum(1, keepdims=True) > 0)
        return weights


class UniformAgent(FixedAgent):
    """Equal weights over all teachers: the usual multi-teacher KD."""

    name = "uniform"

    def weights(self, obs):
        return np.ones(self.batch_shape, dtype=np.float32)


class NoKDAgent(FixedAgent):
    """All-zero weights: the student learns from the gold labels alone."""

    name = "no_kd"

    def weights(self, obs):
        return np.zeros(self.batch_shape, dtype=np.float32)


@dataclasses.dataclass
class SingleConfig(AgentConfig):
    teacher: str = "0"
    """the teacher to learn from: its index in the pool or its name"""


class SingleTeacherAgent(FixedAgent):
    """All weight on one teacher (``single:<k>``, k an index or a teacher name)."""

    name = "single"
    Config = SingleConfig

    def __init__(self, env, **kwargs):
        super().__init__(env, **kwargs)
        names = self.unwrapped.teacher_names
        teacher = str(self.config.teacher)
        if teacher.isdigit() and int(teacher) < len(names):
            self.index = int(teacher)
        elif teacher in names:
            self.index = names.index(teacher)
        else:
            raise ValueError(f"single:{teacher}: no such teacher; use an index 0..{len(names) - 1} or one of {names}")

    def weights(self, obs):
        weights = np.zeros(self.batch_shape, dtype=np.float32)
        weights[:, self.index] = 1.0
        return weights


class BestTeacherAgent(SingleTeacherAgent):
    """All weight on the teacher with the best dev metric (measured once, from the cached dev logits)."""

    name = "best_teacher"
    Config = AgentConfig

    def __init__(self, env, **kwargs):
        Agent.__init__(self, env, **kwargs)
        self.dev_metrics = self.unwrapped.teacher_dev_metrics()
        self.index = int(np.argmax(self.dev_metrics))


class ConfidenceAgent(FixedAgent):
    """Per-instance weights from the teachers' CE on the gold label, as in CA-MKD (Zhang et al., 2022):
    w_k = (1 - softmax_k(CE)) / (K - 1), so a teacher that is confidently wrong on an instance counts little.

    It uses only what the observation shows: on transfer rows (``labelled`` = 0) the gold label is hidden, so the
    teacher's own entropy, in nats (its expected CE under its own prediction), stands in for its CE there."""

    name = "confidence"

    def __init__(self, env, **kwargs):
        super().__init__(env, **kwargs)
        self.labelled_column = self.unwrapped.instance_feature_names.index("labelled")
        self.log_c = float(np.log(max(self.unwrapped.num_labels, 2)))

    def weights(self, obs):
        ce = obs["teacher_features"][..., TEACHER_CE].astype(np.float64)  # (B, K)
        entropy = obs["teacher_features"][..., TEACHER_ENTROPY].astype(np.float64) * self.log_c
        labelled = obs["instance_features"][:, self.labelled_column, None] > 0.5
        ce = np.where(labelled, ce, entropy)
        k = ce.shape[1]
        if k == 1:
            return np.ones_like(ce, dtype=np.float32)
        soft = np.exp(ce - ce.max(1, keepdims=True))
        soft /= soft.sum(1, keepdims=True)
        return ((1.0 - soft) / (k - 1)).astype(np.float32)


class RandomAgent(FixedAgent):
    """Weights drawn uniformly from [0, 1] per instance and teacher (keep/drop with probability 1/2 in select mode)."""

    name = "random"
    pure_predict = False  # draws from the agent's generator: the order of calls matters

    def predict(self, obs, deterministic: bool = False):
        if self.select_mode:
            return self.rng.integers(0, 2, size=self.batch_shape).astype(np.int8)
        return self.rng.random(self.batch_shape, dtype=np.float32)


class OracleAgent(FixedAgent):
    """The oracle weighting (privileged: it reads how the pool was made, or hidden gold labels); a reference row,
    not an agent to compare fairly. In the default scenario: per instance all weight on the teacher that gives the
    gold label the highest probability (:mod:`kd_gym.regime`); noisy-teacher and specialists have their own."""

    name = "oracle"
    learns_from = "nothing (privileged: hidden labels or silos)"
    pure_predict = False  # reads the env's current batch, not the observation

    def __init__(self, env, **kwargs):
        super().__init__(env, **kwargs)
        if not self.unwrapped.has_oracle:
            raise ValueError("agent 'oracle' needs an env with an oracle weighting (env.has_oracle)")

    def weights(self, obs):
        return self.unwrapped.oracle_weights().astype(np.float32)

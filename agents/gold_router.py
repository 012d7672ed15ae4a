"""The gold-likelihood router of REINFORCE's ``advantage='mixture'`` (the default of ``reinforce``; beyond the paper).

A contextual bandit on the labelled instances. The policy is a categorical router ``pi(k | v) = softmax(W v + b)``
over the K teachers, where ``v`` is what the instance shows without its gold label (its label-free instance features:
agreement, the student's entropy, length, and the embedding or representation when the observation has them; and
every teacher's log-probabilities). The arm is one teacher; its reward on a labelled instance is that teacher's
probability of the gold label, ``r_k = p_k(y | x)``, known for every arm. The objective is the log of the expected
reward, ``log E_pi[r] = log sum_k pi_k p_k(y)``: the marginal likelihood of a mixture of experts whose gate is the
policy. Its policy gradient, estimated by REINFORCE over S sampled arms with the exact baseline ``E_pi[r]``:

    grad = E_{k ~ pi}[ (r_k / E_pi[r] - 1) grad log pi(k | v) ]

Why this objective and not the expected reward ``E_pi[r]`` (whose optimum keeps the single best teacher of every
labelled instance): a teacher that is right on an instance by luck does not take the instance's whole share, so the
gate finds the region each teacher is good on, not the instance each teacher happens to win
(docs/agents.md has the probe: 87% of the transfer rows routed to their own silo's expert against 53% for the
expected reward, from 500 labels).

The labelled instances are rare (500 of 17,877 on the default), so every labelled instance seen is kept in a replay
(its view and the K rewards, which no action changes: the bandit is fully observed) and each update samples a
minibatch of them. An L2 penalty on ``W`` keeps the gate smooth enough to generalise from so few rows to the transfer
rows; the views are standardised with a running mean / std of every view seen (labelled or not).
"""

from __future__ import annotations

import numpy as np
import torch
from stable_baselines3.common.running_mean_std import RunningMeanStd
from torch import nn

from agents.state import LabelFreeView


class GoldRouter:
    """The router, its replay of labelled instances and its REINFORCE step (module docstring).

    :param instance_feature_names: the env's ``instance_feature_names``.
    :param teacher_feature_names: the env's ``teacher_feature_names`` (``teacher_ce`` gives the rewards).
    :param num_teachers: K.  :param num_labels: C.
    :param learning_rate, l2, entropy_coef, samples, replay_size, replay_batch: see ``ReinforceConfig``.
    :param generator: the agent's torch generator (arm draws, minibatches, init).
    """

    def __init__(self, instance_feature_names: list[str], teacher_feature_names: list[str], num_teachers: int,
                 num_labels: int, *, learning_rate: float, l2: float, entropy_coef: float, samples: int,
                 replay_size: int, replay_batch: int, generator: torch.Generator) -> None:
        if samples < 1 or replay_size < 1 or replay_batch < 1 or l2 < 0:
            raise ValueError(f"mixture router: samples={samples}, gold_replay={replay_size} and gold_replay_batch="
                             f"{replay_batch} must be >= 1 and router_l2={l2} >= 0")
        #: obs -> (B, size) views
        self.view = LabelFreeView(instance_feature_names, num_teachers, num_labels)
        self.labelled_column = instance_feature_names.index("labelled")
        self.ce_column = teacher_feature_names.index("teacher_ce")
        self.size = self.view.size
        self.gate = nn.Linear(self.size, num_teachers)
        nn.init.zeros_(self.gate.weight)  # equal weights before learning
        nn.init.zeros_(self.gate.bias)
        self.optimizer = torch.optim.Adam(self.gate.parameters(), lr=learning_rate)
        self.stats = RunningMeanStd(shape=(self.size,))
        self.l2, self.entropy_coef, self.samples = l2, entropy_coef, samples
        self.replay_size, self.replay_batch, self.generator = replay_size, replay_batch, generator
        self.replay_views = torch.zeros(replay_size, self.size)  # the first replay_count rows are filled
        self.replay_rewards = torch.zeros(replay_size, num_teachers)
        self.replay_count = self.replay_cursor = 0
        self._set_scale()

    # -- the policy
    def _set_scale(self) -> None:
        std = np.sqrt(self.stats.var + 1e-8)
        self._scale = (torch.as_tensor(1.0 / std, dtype=torch.float32),
                       torch.as_tensor(-self.stats.mean / std, dtype=torch.float32))

    def observe(self, views: torch.Tensor) -> None:
        """Fold a step's views into the standardisation."""
        rows = views.double()
        mean = rows.mean(dim=0)
        self.stats.update_from_moments(mean.numpy(), (rows - mean).square_().mean(dim=0).numpy(), rows.shape[0])
        self._set_scale()

    def logits(self, views: torch.Tensor) -> torch.Tensor:
        scale, shift = self._scale
        return self.gate(torch.addcmul(shift, views, scale).clamp_(-5.0, 5.0))

    def probabilities(self, views: torch.Tensor) -> torch.Tensor:
        """pi(k | v), (B, K)."""
        with torch.no_grad():
            return torch.softmax(self.logits(views), dim=-1)

    # -- learning
    def remember(self, obs: dict[str, np.ndarray], views: torch.Tensor) -> None:
        """Keep the step's labelled instances: their views and rewards ``p_k(y) = exp(-teacher_ce)``."""
        rows = np.flatnonzero(obs["instance_features"][:, self.labelled_column] > 0.5)
        if not len(rows):
            return
        rewards = torch.from_numpy(np.exp(-obs["teacher_features"][rows, :, self.ce_column]).astype(np.float32))
        for view, reward in zip(views[rows], rewards):
            self.replay_views[self.replay_cursor], self.replay_rewards[self.replay_cursor] = view, reward
            self.replay_cursor = (self.replay_cursor + 1) % self.replay_size
            self.replay_count = min(self.replay_count + 1, self.replay_size)

    def loss(self, views: torch.Tensor, rewards: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The REINFORCE loss of instances (views (n, size), rewards (n, K)): ``-mean((r_k / E_pi[r] - 1) log
        pi(k))`` over ``samples`` arms drawn per instance, ``- entropy_coef * H(pi) + l2 * |W|^2``; and its metrics."""
        log_pi = torch.log_softmax(self.logits(views), dim=-1)
        pi = log_pi.exp()
        with torch.no_grad():
            arms = torch.multinomial(pi, self.samples, replacement=True, generator=self.generator)  # (n, S)
            expected = (pi * rewards).sum(-1, keepdim=True)
            advantage = rewards.gather(1, arms) / expected.clamp_min(1e-12) - 1.0
        entropy = -(pi * log_pi).sum(-1).mean()
        loss = (-(advantage * log_pi.gather(1, arms)).mean() - self.entropy_coef * entropy
                + self.l2 * self.gate.weight.square().sum())
        with torch.no_grad():  # one conversion to Python floats for all of them
            values = torch.cat([torch.stack([loss, entropy, advantage.mean(), advantage.std(), expected.log().mean()]),
                                pi.mean(0)]).tolist()
        names = ["policy_loss", "entropy", "advantage_mean", "advantage_std", "log_likelihood",
                 *(f"route[{k}]" for k in range(pi.shape[1]))]
        return loss, dict(zip(names, values))

    def update(self) -> dict[str, float] | None:
        """One REINFORCE step on a replayed minibatch; its metrics, or None while the replay is empty."""
        if not self.replay_count:
            return None
        pick = torch.randint(self.replay_count, (self.replay_batch,), generator=self.generator)
        loss, metrics = self.loss(self.replay_views[pick], self.replay_rewards[pick])
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in self.gate.parameters()])))
        self.optimizer.step()
        return {**metrics, "grad_norm": grad_norm, "replay": float(self.replay_count)}

    # -- persistence
    def state_dict(self) -> dict:
        return {"gate": self.gate.state_dict(), "optimizer": self.optimizer.state_dict(), "mean": self.stats.mean,
                "var": self.stats.var, "count": self.stats.count}

    def load_state_dict(self, state: dict) -> None:
        self.gate.load_state_dict(state["gate"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.stats.mean, self.stats.var = np.asarray(state["mean"]), np.asarray(state["var"])
        self.stats.count = float(state["count"])
        self._set_scale()

    def training_state(self) -> dict:
        n = self.replay_count
        return {"views": self.replay_views[:n].clone(), "rewards": self.replay_rewards[:n].clone(),
                "cursor": self.replay_cursor}

    def load_training_state(self, state: dict) -> None:
        n = self.replay_count = len(state["views"])
        self.replay_views[:n], self.replay_rewards[:n] = state["views"], state["rewards"]
        self.replay_cursor = int(state["cursor"])

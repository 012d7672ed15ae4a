"""``gold-router``: a teacher router fitted to the labelled instances' gold-label likelihood (beyond the paper).

What it learns from: the gold labels of the labelled rows, that is *teacher correctness*; the env's reward (the
student's progress) is not used. A strong reference for the agents that learn from the student's progress
(``reinforce``), not one of them.

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

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.base import Agent, AgentConfig
from agents.state import LabelFreeView, PerTeacherState, Standardiser


class GoldRouter:
    """The router, its replay of labelled instances and its REINFORCE step (module docstring).

    :param instance_feature_names: the env's ``instance_feature_names``.
    :param teacher_feature_names: the env's ``teacher_feature_names`` (``teacher_ce`` gives the rewards).
    :param num_teachers: K.  :param num_labels: C.
    :param learning_rate, l2, entropy_coef, samples, replay_size, replay_batch: see :class:`GoldRouterConfig`.
    :param generator: the agent's torch generator (arm draws, minibatches, init).
    """

    def __init__(self, instance_feature_names: list[str], teacher_feature_names: list[str], num_teachers: int,
                 num_labels: int, *, learning_rate: float, l2: float, entropy_coef: float, samples: int,
                 replay_size: int, replay_batch: int, generator: torch.Generator) -> None:
        if samples < 1 or replay_size < 1 or replay_batch < 1 or l2 < 0:
            raise ValueError(f"gold router: mixture_samples={samples}, replay_size={replay_size} and replay_batch="
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
        self.standardise = Standardiser(self.size)
        self.l2, self.entropy_coef, self.samples = l2, entropy_coef, samples
        self.replay_size, self.replay_batch, self.generator = replay_size, replay_batch, generator
        self.replay_views = torch.zeros(replay_size, self.size)  # the first replay_count rows are filled
        self.replay_rewards = torch.zeros(replay_size, num_teachers)
        self.replay_count = self.replay_cursor = 0

    # -- the policy
    def observe(self, views: torch.Tensor) -> None:
        """Fold a step's views into the standardisation."""
        self.standardise.update(views)

    def logits(self, views: torch.Tensor) -> torch.Tensor:
        return self.gate(self.standardise(views))

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
        count, rows = len(rows), torch.from_numpy(rows)
        slots = torch.arange(self.replay_cursor, self.replay_cursor + count) % self.replay_size  # a ring buffer
        if count > self.replay_size:  # more than the buffer holds at once: the last ones stay
            slots, rows, rewards = slots[-self.replay_size :], rows[-self.replay_size :], rewards[-self.replay_size :]
        self.replay_views[slots], self.replay_rewards[slots] = views[rows], rewards
        self.replay_cursor = (self.replay_cursor + count) % self.replay_size
        self.replay_count = min(self.replay_count + count, self.replay_size)

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
        loss, metrics = self.loss(self.replay_views.index_select(0, pick), self.replay_rewards.index_select(0, pick))
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = float(torch.linalg.vector_norm(torch.cat([p.grad.flatten() for p in self.gate.parameters()])))
        self.optimizer.step()
        return {**metrics, "grad_norm": grad_norm, "replay": float(self.replay_count)}

    # -- persistence
    def state_dict(self) -> dict:
        return {"gate": self.gate.state_dict(), "optimizer": self.optimizer.state_dict(),
                **self.standardise.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.gate.load_state_dict(state["gate"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.standardise.load_state_dict(state)

    def training_state(self) -> dict:
        n = self.replay_count
        return {"views": self.replay_views[:n].clone(), "rewards": self.replay_rewards[:n].clone(),
                "cursor": self.replay_cursor}

    def load_training_state(self, state: dict) -> None:
        n = self.replay_count = len(state["views"])
        self.replay_views[:n], self.replay_rewards[:n] = state["views"], state["rewards"]
        self.replay_cursor = int(state["cursor"])


@dataclasses.dataclass
class GoldRouterConfig(AgentConfig):
    learning_rate: float = 0.003
    """Adam learning rate of the router"""
    entropy_coef: float = 0.01
    """weight of the router's entropy bonus"""
    warmup_steps: int = 20
    """first steps weight every teacher equally while the replay and the standardisation fill (no router update)"""
    anneal_lr: bool = False
    """decay the learning rate linearly to 0 over learn()'s steps"""
    router_l2: float = 0.3
    """L2 penalty on the router's weights (keeps a gate fitted on few labels smooth)"""
    mixture_samples: int = 4
    """arms drawn per replayed instance for the REINFORCE estimate"""
    replay_size: int = 4096
    """labelled instances kept in the replay (the last ones seen)"""
    replay_batch: int = 64
    """replayed instances per step: each update, every router_update_interval steps, replays interval times this"""
    router_update_interval: int = 4
    """steps between router updates (the same replayed rows per step as an update every step, at a quarter of the
    small operations)"""


class GoldRouterAgent(Agent):
    """``gold-router``: :class:`GoldRouter` acting on the env (module docstring).

    Acting: during the warm-up every teacher counts equally; then one teacher per instance, drawn from pi, taught
    with weight 1 (one-hot rows). ``predict(deterministic=True)``: pi itself as the weights (``select`` mode: the most
    probable teacher).

    :param env: a TeacherSelection env (``weights`` or ``select``).  :param kwargs: fields of :class:`GoldRouterConfig`.
    """

    name = "gold-router"
    learns_from = "gold credit (the labelled rows' gold labels)"
    Config = GoldRouterConfig
    pure_predict = True  # deterministic: the frozen router's probabilities

    def __init__(self, env, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        cfg = self.config
        if cfg.router_update_interval < 1:
            raise ValueError(f"router_update_interval={cfg.router_update_interval} must be >= 1 (steps between router "
                             "updates)")
        self._action_dtype = np.int8 if self.select_mode else np.float32
        self.generator = torch.Generator().manual_seed(cfg.seed)
        # The router's figures were first measured inside the keep/drop learner, which drew its selector's init from
        # this generator first; the same draws keep them reproducible seed for seed.
        torch.empty(1, PerTeacherState(env.observation_space, 1.0).size).normal_(0.0, 0.01, generator=self.generator)
        base = self.unwrapped
        self.router = GoldRouter(
            base.instance_feature_names, base.teacher_feature_names, base.num_teachers, base.num_labels,
            learning_rate=cfg.learning_rate, l2=cfg.router_l2, entropy_coef=cfg.entropy_coef,
            samples=cfg.mixture_samples, replay_size=cfg.replay_size,
            replay_batch=cfg.replay_batch * cfg.router_update_interval, generator=self.generator)
        self.updates = 0
        self.metrics: dict[str, float] = {}

    def _route(self, obs: dict[str, np.ndarray], deterministic: bool, views: torch.Tensor | None = None) -> np.ndarray:
        """The action: one teacher per instance drawn from pi (one-hot); with ``deterministic``, pi itself as the
        weights (select mode: the most probable teacher). ``views``: the router's views of ``obs`` when made."""
        probs = self.router.probabilities(self.router.view(obs) if views is None else views)
        if deterministic and not self.select_mode:
            return probs.numpy().astype(np.float32)
        arms = probs.argmax(-1) if deterministic else torch.multinomial(probs, 1, generator=self.generator)[:, 0]
        action = np.zeros(probs.shape, dtype=self._action_dtype)
        action[np.arange(len(action)), arms.numpy()] = 1
        return action

    def predict(self, obs: dict[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        return self._route(obs, deterministic)

    def _act_and_learn(self, obs: dict[str, np.ndarray], step: int) -> np.ndarray:
        """One step's work on the (rows, ...) observation ``obs``: fold its views into the standardisation and its
        labelled instances into the replay, take a router update when one is due, and return the action."""
        cfg, router = self.config, self.router
        views = router.view(obs)
        router.observe(views)
        router.remember(obs, views)
        if step < cfg.warmup_steps:
            return np.ones(obs["teacher_logits"].shape[:2], dtype=self._action_dtype)
        action = self._route(obs, deterministic=False, views=views)
        if (step - cfg.warmup_steps) % cfg.router_update_interval == 0:
            self._record_metrics(router.update())
        return action

    def learn(self, total_steps: int, callback=None, resume: bool = False) -> GoldRouterAgent:
        """Run ``total_steps`` env steps; every step acts and, every ``router_update_interval`` steps after the
        warm-up, takes one router step on a replayed minibatch. ``resume``: continue a loaded training state exactly."""
        cfg = self.config
        self._begin(total_steps, resume)
        while self.loop.step < total_steps:
            step = self.loop.step
            if cfg.anneal_lr:
                for group in self.router.optimizer.param_groups:
                    group["lr"] = cfg.learning_rate * (1.0 - step / total_steps)
            action = self._act_and_learn(self._observation(), step)
            obs, reward, terminated, truncated, info = self.env.step(action)
            self._advance(obs, terminated, truncated)
            if callback is not None and callback(locals()) is False:
                break
        return self

    def learn_over(self, envs, steps: int, callback=None) -> GoldRouterAgent:
        """Learn over the N students of the vector env ``envs`` at once (see :meth:`Agent.learn_over`): each vector
        step acts for all N * B instances with one gate forward and takes a router step every
        ``router_update_interval`` vector steps on N times the single run's replayed rows (the same replayed rows per
        student step as learning over one student)."""
        router, n = self.router, envs.num_envs
        single_batch = router.replay_batch
        router.replay_batch = single_batch * n
        try:
            obs, _ = envs.reset(seed=self.config.seed)
            for step in range(steps):
                flat = {key: value.reshape(-1, *value.shape[2:]) for key, value in obs.items()}  # (N * B, ...)
                action = self._act_and_learn(flat, step)
                obs, reward, terminated, truncated, info = envs.step(action.reshape(n, *self.batch_shape))
                if callback is not None and callback(locals()) is False:
                    break
        finally:
            router.replay_batch = single_batch
        return self

    def why_not_learn_over(self) -> str | None:
        return None

    def _record_metrics(self, metrics: dict[str, float] | None) -> None:
        if metrics is None:
            return
        self.updates += 1
        routes = [metrics.pop(f"route[{k}]") for k in range(self.unwrapped.num_teachers)]
        self.metrics.update(metrics, updates=float(self.updates), keep_probability=float(np.mean(routes)))
        for teacher, share in zip(self.unwrapped.teacher_names, routes):
            self.metrics[f"keep_probability[{teacher}]"] = share

    # -- persistence
    def state_dict(self) -> dict[str, Any]:
        return {"router": self.router.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.router.load_state_dict(state["router"])
        self.updates = state["updates"]

    def training_state(self) -> dict[str, Any]:
        """The loop and the agent's rng (:class:`~agents.base.Agent`), the arm draws' generator, the running metrics
        and the replay."""
        return {**super().training_state(), "generator": self.generator.get_state(), "metrics": dict(self.metrics),
                "router": self.router.training_state()}

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        self.generator.set_state(state["generator"])
        self.metrics = dict(state["metrics"])
        self.router.load_training_state(state["router"])

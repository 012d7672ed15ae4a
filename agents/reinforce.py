"""``reinforce``: REINFORCE on the student's progress, over a distribution of routers (PGPE), in one file.

What it learns from: the env's own reward, the student's dev-metric gain (``dev_delta``). Never a gold label, never
the silo. The signal is an episode's return: the final student's dev-subset gain, the true objective. The one-step
credit of a teaching decision depends on the student that earlier decisions made (docs/benchmark.md, "learning from
the student's progress"), so this agent compares whole teaching policies by the students they produce.

The policy (a router): ``w(x) = softmax(phi(x) @ theta)``, K teacher weights per instance from a small feature map
``phi`` of what the instance shows without its gold label (:class:`~agents.state.LabelFreeView`: label-free instance
features, the sentence embedding, every teacher's log-probabilities), standardised:

- ``features="clusters"`` (default): the one-hot of the nearest of ``clusters`` k-means centroids of the
  standardised views: one row of K logits per region of the input space (label-free: found without labels or silos);
- ``features="projection"``: a fixed random Gaussian projection to ``projection_dim`` dimensions and a bias.

Both are fitted on a survey: the views of the first ``survey_steps`` steps of every student of the first generation,
taught with equal weights (their student steps count in the learning budget).

Learning: Gaussian exploration in parameter space, ``theta ~ N(mu, sigma^2)``, with REINFORCE on that distribution
(Williams 1992; PGPE, Sehnke et al. 2010; the same estimator as OpenAI's evolution strategies). Each generation draws
``population / 2`` directions ``eps`` and trains ``population`` fresh students for ``rollout_steps`` steps, two per
direction (``mu + sigma eps`` and ``mu - sigma eps``) on common random numbers: the same env seed, so the same
initial student, batches and dropout. Returns ``R+`` and ``R-`` (the env's summed reward) give the gradient of the
expected return, ``g = mean_j ((R+_j - R-_j) / 2s) eps_j / sigma`` with ``s`` the pairs' spread (fitness scaling),
and ``mu`` takes an Adam step along it. The whole population is one vector env of lite students
(:meth:`learn_over`), one batched computation per step.

Acting (``predict``): the mean router, ``softmax(phi(x) @ mu)`` (``select`` mode: its most probable teacher), a
function of the observation alone.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sklearn.cluster import KMeans
from tqdm.auto import tqdm

from agents.base import Agent, AgentConfig
from agents.state import LabelFreeView

FEATURES = ("clusters", "projection")
LITE_ID = "kd_gym/TeacherSelectionLite-v0"
TRAIN_SEEDS = 900_000
"""training students are seeded below this; evaluation seeds start at 1,000,000 (agents.experiments.protocol)"""


@dataclasses.dataclass
class ReinforceConfig(AgentConfig):
    generations: int = 30
    """policy updates; each trains `population` fresh students for `rollout_steps` steps"""
    population: int = 16
    """students per generation, in antithetic pairs (even, >= 2)"""
    rollout_steps: int = 500
    """student steps per training episode, at most the env's episode_steps (shorter than an evaluation episode: the
    ranking of routers shows early)"""
    sigma: float = 1.0
    """std of the Gaussian exploration of the router's parameters"""
    learning_rate: float = 0.2
    """Adam learning rate of the mean router"""
    features: str = "clusters"
    """clusters: one-hot of the nearest k-means centroid of the label-free view | projection: a random projection"""
    clusters: int = 16
    """features=clusters: k-means centroids"""
    projection_dim: int = 16
    """features=projection: dimensions of the random projection (plus a bias)"""
    survey_steps: int = 20
    """steps of every first-generation student taught with equal weights, whose views fit the standardisation and
    the features (at most half a training episode)"""


class RouterFeatures:
    """``phi``: label-free views (n, d) -> features (n, F), fitted once on a survey of views (module docstring)."""

    def __init__(self, views: torch.Tensor, kind: str, clusters: int, projection_dim: int, seed: int) -> None:
        self.kind = kind
        rows = views.double()
        self._set_scale(rows.mean(0).float(), rows.std(0).clamp_min(1e-4).float())
        standard = self._standardise(views)
        if kind == "clusters":
            if clusters > len(views):
                raise ValueError(f"clusters={clusters} is more than the {len(views)} surveyed rows; use fewer "
                                 "clusters or more survey_steps")
            kmeans = KMeans(n_clusters=clusters, n_init=3, random_state=seed).fit(standard.numpy())
            self._set_basis(torch.as_tensor(kmeans.cluster_centers_, dtype=torch.float32))
            self.size = clusters
        else:
            generator = torch.Generator().manual_seed(seed)
            projection = torch.randn(standard.shape[1], projection_dim, generator=generator)
            self._set_basis(projection / standard.shape[1] ** 0.5)  # unit variance per projected coordinate
            self.size = projection_dim + 1

    def _set_scale(self, mean: torch.Tensor, std: torch.Tensor) -> None:
        self.mean, self.std = mean, std
        self._scale, self._shift = 1.0 / std, -mean / std  # (v - mean) / std as one multiply-add

    def _set_basis(self, basis: torch.Tensor) -> None:
        """The centroids (clusters, d) or the projection (d, projection_dim)."""
        self.basis = basis
        if self.kind == "clusters":  # the nearest centroid is the argmax of x.c - |c|^2 / 2
            self._half_norms = 0.5 * basis.square().sum(1)

    def _standardise(self, views: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self._shift, views, self._scale).clamp_(-5.0, 5.0)

    def __call__(self, views: torch.Tensor) -> torch.Tensor:
        standard = self._standardise(views)
        if self.kind == "clusters":
            nearest = (standard @ self.basis.T - self._half_norms).argmax(1)
            return torch.nn.functional.one_hot(nearest, self.size).float()
        return torch.cat([standard @ self.basis, torch.ones(len(standard), 1)], dim=1)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": self.kind, "mean": self.mean, "std": self.std, "size": self.size, "basis": self.basis}

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> RouterFeatures:
        features = cls.__new__(cls)
        features.kind, features.size = str(state["kind"]), int(state["size"])
        features._set_scale(torch.as_tensor(state["mean"]), torch.as_tensor(state["std"]))
        features._set_basis(torch.as_tensor(state["basis"]))
        return features


class ReinforceAgent(Agent):
    """REINFORCE over a Gaussian distribution of routers, on the student's dev gain (module docstring).

    :param env: a TeacherSelection env (``weights`` or ``select``).  :param kwargs: fields of :class:`ReinforceConfig`.
    """

    name = "reinforce"
    learns_from = "the env's return (the student's dev gain)"
    Config = ReinforceConfig
    pure_predict = True  # the mean router: a function of the observation alone

    def __init__(self, env, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        cfg = self.config
        if cfg.features not in FEATURES:
            raise ValueError(f"features={cfg.features!r} is invalid; use one of {FEATURES}")
        if cfg.population < 2 or cfg.population % 2:
            raise ValueError(f"population={cfg.population} must be even and >= 2 (antithetic pairs of students)")
        for name in ("generations", "rollout_steps", "clusters", "projection_dim", "survey_steps"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"{name}={getattr(cfg, name)} must be >= 1")
        if cfg.survey_steps >= cfg.rollout_steps:
            raise ValueError(f"survey_steps={cfg.survey_steps} must be below rollout_steps={cfg.rollout_steps}")
        if cfg.sigma <= 0 or cfg.learning_rate <= 0:
            raise ValueError(f"sigma={cfg.sigma} and learning_rate={cfg.learning_rate} must be > 0")
        base = self.unwrapped
        self.view = LabelFreeView(base.instance_feature_names, base.num_teachers, base.num_labels)
        self.features: RouterFeatures | None = None  # fitted by the survey
        self.mu: torch.Tensor | None = None  # (F, K) the mean router
        self.generation = 0
        #: student steps spent learning so far (the training students of every generation and the survey)
        self.student_steps_learned = 0
        self.metrics: dict[str, float] = {}

    # -- the policy
    def weights(self, obs: dict[str, np.ndarray], theta: torch.Tensor | None = None) -> torch.Tensor:
        """(rows, K) teacher weights of the router ``theta`` (default: the mean) for a (rows, ...) observation;
        equal weights before the survey."""
        rows, k = obs["teacher_logits"].shape[:2]
        if self.features is None:
            return torch.full((rows, k), 1.0 / k)
        with torch.no_grad():
            return torch.softmax(self.features(self.view(obs)) @ (self.mu if theta is None else theta), dim=-1)

    def predict(self, obs: dict[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        weights = self.weights(obs)
        if self.select_mode:
            action = np.zeros(weights.shape, dtype=np.int8)
            action[np.arange(len(action)), weights.argmax(-1).numpy()] = 1
            return action
        return weights.numpy().astype(np.float32)

    def _fit_features(self, views: list[torch.Tensor]) -> None:
        self.features = RouterFeatures(torch.cat(views), self.config.features, self.config.clusters,
                                       self.config.projection_dim, self.config.seed)
        self.mu = torch.zeros(self.features.size, self.unwrapped.num_teachers)
        self._adam = torch.optim.Adam([self.mu.requires_grad_()], lr=self.config.learning_rate)

    # -- learning
    def _lengths(self, episode_steps: int) -> tuple[int, int]:
        """(rollout, survey) steps on an env whose episodes are ``episode_steps`` long."""
        rollout = min(self.config.rollout_steps, episode_steps)
        return rollout, max(1, min(self.config.survey_steps, rollout // 2))

    def _directions(self) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """A generation's (P, F, K) directions, its (2P, F, K) routers [mu + sigma eps_j, mu - sigma eps_j, ...]
        (pair members side by side) and the env seed of each of the 2P students (the same for a pair)."""
        pairs = self.config.population // 2
        eps = torch.as_tensor(self.rng.standard_normal((pairs, *self.mu.shape)), dtype=torch.float32)
        mu = self.mu.detach()
        thetas = torch.stack([mu + self.config.sigma * eps, mu - self.config.sigma * eps], dim=1).flatten(0, 1)
        seeds = np.repeat(self.rng.integers(TRAIN_SEEDS, size=pairs), 2).tolist()
        return eps, thetas, seeds

    def _update(self, eps: torch.Tensor, returns: np.ndarray) -> None:
        """One Adam step of the mean along the REINFORCE estimate from the pairs' returns ((2P,), pair-major)."""
        diff = returns[0::2] - returns[1::2]  # (P,) R+ - R-
        scale = float(diff.std()) if len(diff) > 1 and diff.std() > 0 else max(float(np.abs(diff).max()), 1e-8)
        coef = torch.as_tensor(diff / (2.0 * scale), dtype=torch.float32)
        gradient = (coef[:, None, None] * eps).mean(0) / self.config.sigma
        self._adam.zero_grad()
        self.mu.grad = -gradient  # Adam minimises: ascend the expected return
        self._adam.step()
        self.generation += 1
        self.metrics.update(generation=float(self.generation), return_mean=float(returns.mean()),
                            return_best=float(returns.max()), pair_diff_std=float(diff.std()),
                            gradient_norm=float(gradient.norm()), mu_norm=float(self.mu.detach().norm()))

    def learn_over(self, envs, steps: int, callback=None) -> ReinforceAgent:
        """Learn for ``generations`` generations, each ``population`` fresh students of ``rollout_steps`` steps in one
        vector env of lite students made with the options of ``envs`` (whose own size and ``steps`` do not set the
        budget: :meth:`learning_student_steps` gives it). ``callback(locals())`` after each generation."""
        cfg = self.config
        rollout, survey_steps = self._lengths(envs.config.episode_steps)
        options = {f.name: getattr(envs.config, f.name) for f in dataclasses.fields(envs.config)}
        options.update(episode_steps=rollout, reward_interval=rollout)  # the return alone
        population = gym.make_vec(LITE_ID, num_envs=cfg.population, vectorization_mode="vector_entry_point",
                                  **options)
        bar = tqdm(total=cfg.generations, desc="reinforce generations", unit="gen", leave=False)
        for _ in range(cfg.generations):
            survey = self.features is None
            if survey:  # equal weights for survey_steps, then the first generation's routers from these views
                seeds = np.repeat(self.rng.integers(TRAIN_SEEDS, size=cfg.population // 2), 2).tolist()
                obs, _ = population.reset(seed=seeds)
                views, returns = [], np.zeros(cfg.population)
                for _ in range(survey_steps):
                    flat = {key: value.reshape(-1, *value.shape[2:]) for key, value in obs.items()}
                    views.append(self.view(flat))
                    obs, reward, *_ = population.step(np.full(population.action_space.shape, 1.0, np.float32))
                    returns += reward
                self._fit_features(views)
                eps, thetas, _ = self._directions()
                start = survey_steps
            else:
                eps, thetas, seeds = self._directions()
                obs, _ = population.reset(seed=seeds)
                returns, start = np.zeros(cfg.population), 0
            for _ in range(start, rollout):
                flat = {key: value.reshape(-1, *value.shape[2:]) for key, value in obs.items()}
                phi = self.features(self.view(flat)).reshape(cfg.population, -1, self.features.size)
                weights = torch.softmax(torch.bmm(phi, thetas), dim=-1)  # (N, B, K)
                obs, reward, *_ = population.step(weights.numpy())
                returns += reward
            self.student_steps_learned += cfg.population * rollout
            self._update(eps, returns)
            bar.update(1)
            if callback is not None and callback({**locals(), "student_steps_done": cfg.population * rollout}) is False:
                break
        bar.close()
        return self

    def why_not_learn_over(self) -> str | None:
        return None

    def learn(self, total_steps: int, callback=None) -> ReinforceAgent:
        """The same generations one student after another on this env (for options the vector env lacks, and the
        online protocol): each pair of students shares an env seed; generations run while the budget holds one more
        (a survey first), and the steps left train a last student with the mean router from the agent's seed (the
        online protocol's result). Not checkpointed. ``callback(locals())`` after each generation."""
        cfg = self.config
        self.loop.step = 0
        rollout, survey_steps = self._lengths(self.unwrapped.config.episode_steps)
        generation_cost = cfg.population * rollout

        def run(theta: torch.Tensor | None, seed: int, steps: int, views: list | None = None) -> float:
            obs, _ = self.env.reset(seed=seed)
            total = 0.0
            for _ in range(steps):
                if views is not None:
                    views.append(self.view(obs))
                action = self.predict(obs) if theta is None else self.weights(obs, theta).numpy().astype(np.float32)
                obs, reward, terminated, truncated, _ = self.env.step(action)
                total += float(reward)
                self.loop.step += 1
                if terminated or truncated:
                    break
            return total

        for _ in range(cfg.generations):
            survey = survey_steps if self.features is None else 0
            if total_steps - self.loop.step < generation_cost + survey:
                break
            if survey:
                views: list[torch.Tensor] = []
                run(None, int(self.rng.integers(TRAIN_SEEDS)), survey, views)
                self._fit_features(views)
            eps, thetas, seeds = self._directions()
            returns = np.array([run(theta, seed, rollout) for theta, seed in zip(thetas, seeds)])
            self.student_steps_learned = self.loop.step
            self._update(eps, returns)
            if callback is not None and callback(locals()) is False:
                return self
        remaining = total_steps - self.loop.step
        if remaining > 0:
            run(None, cfg.seed, remaining)
            self.student_steps_learned = self.loop.step
        return self

    def learning_student_steps(self, steps: int, students: int) -> int:
        """The student steps :meth:`learn_over` spends: every generation's students and nothing else."""
        return self.config.generations * self.config.population * self._lengths(steps)[0]

    # -- persistence
    def state_dict(self) -> dict[str, Any]:
        if self.features is None:
            return {"generation": self.generation}
        return {"generation": self.generation, "mu": self.mu.detach().clone(),
                "features": self.features.state_dict(), "student_steps_learned": self.student_steps_learned}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.generation = int(state["generation"])
        if "mu" in state:
            self.features = RouterFeatures.from_state(state["features"])
            self.mu = torch.as_tensor(state["mu"]).clone()
            self._adam = torch.optim.Adam([self.mu.requires_grad_()], lr=self.config.learning_rate)
            self.student_steps_learned = int(state["student_steps_learned"])

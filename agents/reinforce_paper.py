"""`reinforce-paper`: the teacher selection of RL-KD (Yuan et al., "Reinforced Multi-Teacher Selection for Knowledge
Distillation", AAAI 2021), in one file.

The paper, mapped onto kd-gym:
- state of (instance, teacher k): the instance's features, teacher k's softened prediction and its CE against the
  gold label, and the student's prediction. Here (:mod:`agents.state`)
  ``s_k = [instance_features | teacher_features[k] | softmax(teacher_logits[k] / T) | softmax(student_logits)]``,
  read from the observation's shapes. Inputs are standardised with a running mean / std (updated while learning
  only, with a window's states when the window closes).
- policy: ``pi(keep_k | s_k) = sigmoid(w . s_k + b_k)``, one logistic unit shared by all teachers, as in the paper,
  plus a learned bias ``b_k`` per teacher so that it can tell the teachers apart (for a linear unit a learned
  per-teacher embedding concatenated to ``s_k`` is exactly a per-teacher bias, so nothing richer is needed).
- action: keep / drop per (instance, teacher), drawn from Bernoulli(pi): ``select`` mode directly; in ``weights``
  mode the 0/1 samples are the weights too (``action_mode="sample"``, the paper). ``action_mode="prob"`` instead
  draws continuous weights ``sigmoid(z)``, ``z ~ Normal(w . s_k + b_k, logit_std)`` (a logit-normal around the keep
  probability), which lets an instance listen to a teacher a little.
- learning: REINFORCE with a moving-average baseline; a warm-up in which every teacher is kept while the baseline
  is fitted (the paper warms the student up with all teachers before selecting).

Where it departs from the paper:
- online updates on windows of steps instead of one update per episode (an epoch over the data): a window closes
  at a step whose reward the env measured (``info["reward_measured"]``; for ``dev_delta`` every ``reward_interval``
  steps and at the episode's end) once it holds ``update_interval`` steps, and always at the episode's end. The
  return of a window is the sum of its rewards and every action in it shares it; a window never spans episodes.
- the reward is the env's (``dev_delta`` by default: dev-metric change in percentage points); the paper's loss-based
  rewards are the env's ``neg_ce`` / ``neg_ce_kd``.
- advantages are divided by a running std of the returns (``normalize_advantage``), so one learning rate works for
  rewards of different scales; and an entropy bonus (the entropy of the distribution the actions are drawn from:
  Bernoulli keep/drop; in ``prob`` mode a Normal of fixed std, whose entropy is constant, so the bonus is inert
  there) keeps the selector from collapsing early.
- ``deterministic=True``: keep probability > 0.5 in ``select`` mode; the keep probabilities themselves (the mean
  weight) in ``weights`` mode.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import torch
from torch import nn

from agents.base import Agent, AgentConfig
from agents.selector import TeacherSelector
from agents.state import PerTeacherState, Standardiser

ACTION_MODES = ("sample", "prob")
ADVANTAGES = ("return", "credit", "gold")


@dataclasses.dataclass
class PaperReinforceConfig(AgentConfig):
    """RL-KD's own design: the shared logistic unit and one window return shared by every action (the defaults)."""

    learning_rate: float = 0.01
    """Adam learning rate of the selector (the paper's setting)"""
    update_interval: int = 0
    """minimum steps per policy update; a window closes at the next measured reward (0: at every measured reward)"""
    baseline_decay: float = 0.9
    """decay of the moving-average baseline of the window return"""
    entropy_coef: float = 0.01
    """weight of the Bernoulli entropy bonus"""
    warmup_steps: int = 20
    """first steps keep every teacher while the baseline is fitted (no policy update)"""
    normalize_advantage: bool = True
    """divide advantages by a running std of the returns"""
    advantage: str = "return"
    """'return': the window's return minus the baseline, shared by its actions (the paper); 'credit': per-action
    advantages from each (instance, teacher) pair's credit (env.unwrapped.pair_credit(), or info['credit'] with the
    env option credit=True), measured while learning only; 'gold': per-action advantages on the labelled instances
    from each teacher's CE against the gold label (the observation's teacher_ce), none on the transfer rows (the
    last two are beyond the paper)"""
    action_mode: str = "sample"
    """weights mode: 'sample' (0/1 Bernoulli weights, the paper) or 'prob' (logit-normal continuous weights)"""
    anneal_lr: bool = False
    """decay the learning rate linearly to 0 over learn()'s steps, so the final policy settles"""
    init_keep_probability: float = 0.5
    """keep probability of every teacher before learning (the per-teacher bias starts at its logit)"""
    logit_std: float = 1.0
    """action_mode='prob': std of the Normal noise on the keep logit"""
    input_clip: float = 5.0
    """clip standardised inputs to [-input_clip, input_clip]"""
    routed: bool = False
    """add per-teacher weights on the instance's view (its features, every teacher's and the student's prediction),
    so that the selector can route instances to teachers (TeacherSelector); False: the paper's shared unit"""
    router_hidden: int = 0
    """routed: tanh units of the router's hidden layer (0: a linear router)"""
    gold_replay: int = 0
    """advantage='gold': keep the last this many labelled instances seen (their raw states and per-teacher gold
    signal) and fit every update on a minibatch of them with the expected (all-action) gradient of the kept
    teachers' signal, sum_k p_k delta_k, which needs no sampled action and so stays exact off-policy (0: only the
    step's own labelled instances, with sampled actions); beyond the paper"""
    gold_replay_batch: int = 64
    """gold_replay: replayed instances per update"""
    gold_signal: str = "ce"
    """advantage='gold': 'ce' (minus each teacher's CE on the gold label, centred per instance) or 'best' (1 for
    the teacher with the lowest CE, 0 for the others, centred: only the instance's best teacher is worth keeping)"""


@dataclasses.dataclass
class Window:
    """The steps since the last policy update: their states (B, K, d) before and after normalisation, what their
    actions were drawn as (B, K), and the sum of their rewards."""

    inputs: list[torch.Tensor] = dataclasses.field(default_factory=list)
    actions: list[torch.Tensor] = dataclasses.field(default_factory=list)
    total_return: float = 0.0
    steps: int = 0
    states: list[torch.Tensor] = dataclasses.field(default_factory=list)
    """raw states of every step (warm-up included), folded into the input statistics when the window closes"""

    def clear(self) -> None:
        self.inputs, self.actions, self.total_return, self.steps, self.states = [], [], 0.0, 0, []


class PaperReinforceAgent(Agent):
    """RL-KD's per-instance, per-teacher logistic selector trained with REINFORCE and a baseline.

    :param env: a TeacherSelection env (``weights`` or ``select``).
    :param kwargs: fields of :class:`PaperReinforceConfig`.
    """

    name = "reinforce-paper"

    @property
    def learns_from(self) -> str:  # type: ignore[override]
        return {"return": "the env's reward (window returns)", "credit": "student credit (per pair)",
                "gold": "gold credit (the labelled rows' gold labels)"}[self.config.advantage]
    Config = PaperReinforceConfig
    pure_predict = True  # deterministic: the keep probabilities of the frozen selector and input statistics

    def __init__(self, env, **kwargs: Any) -> None:
        super().__init__(env, **kwargs)
        cfg = self.config
        if cfg.action_mode not in ACTION_MODES:
            raise ValueError(f"action_mode must be one of {ACTION_MODES}, got {cfg.action_mode!r}")
        if cfg.advantage not in ADVANTAGES:
            raise ValueError(f"advantage={cfg.advantage!r} is invalid; use one of {ADVANTAGES}")
        # advantage='credit' reads info["credit"] when the env puts it there (credit=True), else it measures the
        # same per-pair credit itself before each step, while learning only (env.unwrapped.pair_credit())
        self._env_credit = bool(self.unwrapped.config.credit)
        if cfg.advantage in ("credit", "gold") and cfg.action_mode == "prob" and not self.select_mode:
            raise ValueError(f"advantage={cfg.advantage!r} draws keep/drop actions: use action_mode='sample'")
        if cfg.advantage == "gold":  # the observation's columns it reads
            self._ce_column = self.unwrapped.teacher_feature_names.index("teacher_ce")
            self._labelled_column = self.unwrapped.instance_feature_names.index("labelled")
        # keep/drop samples (select mode, or weights drawn as 0/1) and their dtype, read once: hot path
        self._keep_drop = self.select_mode or cfg.action_mode == "sample"
        self._action_dtype = np.int8 if self.select_mode else np.float32
        # obs -> (B, K, d) per-teacher states
        self.states = PerTeacherState(env.observation_space, self.unwrapped.config.temperature)
        teachers = self.unwrapped.teacher_names
        input_size = self.states.size

        # Seeding: the selector's init and its action noise come from config.seed only.
        self.generator = torch.Generator().manual_seed(cfg.seed)
        if cfg.router_hidden < 0:
            raise ValueError(f"router_hidden={cfg.router_hidden} must be >= 0 (0: a linear router)")
        self.policy = TeacherSelector(input_size, len(teachers), layout=self.states.layout, routed=cfg.routed,
                                      hidden=cfg.router_hidden)
        if not 0.0 < cfg.init_keep_probability < 1.0:
            raise ValueError(f"init_keep_probability={cfg.init_keep_probability} must be in (0, 1), e.g. 0.5")
        with torch.no_grad():
            self.policy.linear.weight.normal_(0.0, 0.01, generator=self.generator)
            self.policy.teacher_bias.fill_(float(np.log(cfg.init_keep_probability / (1 - cfg.init_keep_probability))))
            if self.policy.router is not None:  # routes nothing at first: the same start as the shared unit
                layers = [m for m in self.policy.router.modules() if isinstance(m, nn.Linear)]
                for layer in layers[:-1]:
                    layer.weight.normal_(0.0, layer.in_features**-0.5, generator=self.generator)
                    layer.bias.zero_()
                layers[-1].weight.zero_()
        self.optimizer = torch.optim.Adam(self.policy.parameters(), lr=cfg.learning_rate)
        self.standardise = Standardiser(input_size, cfg.input_clip)
        self.baseline, self.return_var, self.updates, self.credit_var = 0.0, 1.0, 0, 1.0
        self.metrics: dict[str, float] = {}
        self.window = Window()
        if cfg.gold_signal not in ("ce", "best"):
            raise ValueError(f"gold_signal={cfg.gold_signal!r} is invalid; use 'ce' or 'best'")
        if cfg.gold_replay < 0 or cfg.gold_replay_batch < 1:
            raise ValueError(f"gold_replay={cfg.gold_replay} must be >= 0 and gold_replay_batch="
                             f"{cfg.gold_replay_batch} >= 1")
        if cfg.gold_replay and cfg.advantage != "gold":
            raise ValueError(f"gold_replay={cfg.gold_replay} replays labelled instances for advantage='gold', "
                             f"not advantage={cfg.advantage!r}; set one of those or gold_replay=0")
        #: advantage='gold' with gold_replay: (raw state (K, d), centred signal (K,)) of the last labelled instances
        self.replay: list[tuple[torch.Tensor, torch.Tensor]] = []
        self.replay_cursor = 0

    # -- state and policy
    def _update_input_stats(self, states: list[torch.Tensor]) -> None:
        """Fold the rows of a window's states (each (B, K, d)) into the standardisation, once per window: per step
        it would cost more than the selector itself."""
        self.standardise.update(torch.cat(states).reshape(-1, self.states.size))

    def _normalise(self, states: torch.Tensor) -> torch.Tensor:
        """Standardised, clipped states, (B, K, d) float32."""
        return self.standardise(states)

    def keep_probabilities(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """pi(keep_k | s_k) for every instance and teacher, (B, K)."""
        with torch.no_grad():
            return torch.sigmoid(self.policy(self._normalise(self.states.tensor(obs)))).numpy()

    def _distribution(self, logits: torch.Tensor) -> torch.distributions.Distribution:
        """The distribution actions are drawn from: Bernoulli(keep) or, in ``prob`` mode, Normal over the logit z."""
        if self._keep_drop:
            return torch.distributions.Bernoulli(logits=logits, validate_args=False)
        return torch.distributions.Normal(logits, self.config.logit_std, validate_args=False)

    def _sample(self, inputs: torch.Tensor) -> tuple[np.ndarray, torch.Tensor]:
        """(env action (B, K), what the log-probability is taken of) for normalised inputs (B, K, d)."""
        with torch.no_grad():
            logits = self.policy(inputs)
            if self._keep_drop:
                keep = torch.bernoulli(logits.sigmoid_(), generator=self.generator)
                action = keep.numpy().astype(self._action_dtype, copy=False)  # the env copies what it keeps
                return action, keep
            noise = torch.randn(logits.shape, generator=self.generator)
            z = logits + self.config.logit_std * noise
            return torch.sigmoid(z).numpy().astype(np.float32), z

    def predict(self, obs: dict[str, np.ndarray], deterministic: bool = False) -> np.ndarray:
        if deterministic:
            probs = self.keep_probabilities(obs)
            return (probs > 0.5).astype(np.int8) if self.select_mode else probs.astype(np.float32)
        return self._sample(self._normalise(self.states.tensor(obs)))[0]

    # -- learning
    def policy_loss(self, states: torch.Tensor, taken: torch.Tensor,
                    advantage: float | torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The REINFORCE loss of N steps and its entropy: ``-sum(advantage * log pi(taken | states))`` over the
        B x K actions of a step, averaged over the N steps and the B instances, ``- entropy_coef * mean entropy``.

        :param states: (N, B, K, d) normalised states.  :param taken: (N, B, K) what the actions were drawn as.
        :param advantage: the window's (normalised) advantage, one number shared by every action (the paper), or
            one per action (N, B, K).
        :return: (loss, entropy, keep probabilities (N, B, K)).
        """
        logits = self.policy(states)
        distribution = self._distribution(logits)
        weighted = advantage * distribution.log_prob(taken)
        entropy = distribution.entropy().mean()
        loss = -weighted.sum(dim=(1, 2)).mean() / states.shape[1] - self.config.entropy_coef * entropy
        return loss, entropy, torch.sigmoid(logits)

    def _credit_update(self, inputs: torch.Tensor, taken: torch.Tensor, credit: np.ndarray) -> None:
        """One step with per-action advantages from the env's ``info["credit"]`` (beyond the paper): with
        ``delta_ik`` = pair (i, k)'s credit minus the mean credit of instance i's teachers, ``A_ik = (a_ik - p_ik)
        delta_ik``, whose expectation is the exact gradient of the expected credit of the kept teachers."""
        delta = credit - credit.mean(axis=1, keepdims=True)
        rows = np.abs(delta).sum(axis=1) > 0  # instances with a signal (advantage='gold': the labelled ones)
        if not rows.any():
            return
        self.credit_var = 0.99 * self.credit_var + 0.01 * float((delta[rows] ** 2).mean())
        with torch.no_grad():
            probs = torch.sigmoid(self.policy(inputs))
        advantage = (taken - probs) * torch.as_tensor(delta / np.sqrt(self.credit_var + 1e-12), dtype=torch.float32)
        loss, entropy, probs = self.policy_loss(inputs[None], taken[None], advantage[None])
        grad_norm = self._step(loss)
        self._record(loss, entropy, probs, credit_std=float(np.sqrt(self.credit_var)), grad_norm=grad_norm,
                     advantage_mean=float(advantage.mean()), advantage_std=float(advantage.std()))

    def _replay_update(self, states: torch.Tensor, signal: np.ndarray) -> None:
        """``advantage='gold'`` with ``gold_replay``: add the step's labelled instances (raw states (B, K, d), signal
        (B, K)) to the replay and take one step on ``gold_replay_batch`` replayed ones: minimise
        ``-mean_i sum_k p_ik delta_ik / std - entropy_coef * entropy``, with ``delta`` the signal centred per instance
        and ``std`` its running spread. States are normalised with the current statistics at every update."""
        cfg = self.config
        rows = np.flatnonzero(np.abs(signal).sum(axis=1) > 0)
        if len(rows):
            delta = signal[rows] - signal[rows].mean(axis=1, keepdims=True)
            self.credit_var = 0.99 * self.credit_var + 0.01 * float((delta**2).mean())
            for i, d in zip(rows, torch.as_tensor(delta, dtype=torch.float32)):
                if len(self.replay) < cfg.gold_replay:
                    self.replay.append((states[i], d))
                else:
                    self.replay[self.replay_cursor] = (states[i], d)
                self.replay_cursor = (self.replay_cursor + 1) % cfg.gold_replay
        if not self.replay:
            return
        pick = torch.randint(len(self.replay), (min(cfg.gold_replay_batch, len(self.replay)),), generator=self.generator)
        batch_states = torch.stack([self.replay[i][0] for i in pick.tolist()])
        batch_delta = torch.stack([self.replay[i][1] for i in pick.tolist()])
        logits = self.policy(self._normalise(batch_states))
        probs = torch.sigmoid(logits)
        entropy = torch.distributions.Bernoulli(logits=logits, validate_args=False).entropy().mean()
        gain = (probs * batch_delta).sum(-1).mean() / float(np.sqrt(self.credit_var + 1e-12))
        loss = -gain - cfg.entropy_coef * entropy
        grad_norm = self._step(loss)
        self._record(loss, entropy, probs, credit_std=float(np.sqrt(self.credit_var)), grad_norm=grad_norm,
                     advantage_mean=float(gain.detach()), replay=float(len(self.replay)))

    def _gold_signal(self, obs: dict[str, np.ndarray]) -> np.ndarray:
        """(B, K) per-pair signal of ``advantage='gold'``: minus teacher k's CE against the gold label on the
        labelled instances (centred per instance in :meth:`_credit_update`), 0 on the transfer rows."""
        labelled = obs["instance_features"][:, self._labelled_column] > 0.5
        ce = obs["teacher_features"][..., self._ce_column]
        if self.config.gold_signal == "best":
            signal = (ce == ce.min(axis=1, keepdims=True)).astype(np.float64)
            signal /= signal.sum(axis=1, keepdims=True)  # ties share the instance's one unit
        else:
            signal = -ce
        return np.where(labelled[:, None], signal, 0.0)

    def _step(self, loss: torch.Tensor) -> float:
        """One Adam step on ``loss``; returns the gradient's norm (a diagnostic)."""
        self.optimizer.zero_grad()
        loss.backward()
        grad_norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad)
                                                          for p in self.policy.parameters() if p.grad is not None]))
        self.optimizer.step()
        self.updates += 1
        return float(grad_norm)

    def _update(self, inputs: list[torch.Tensor], actions: list[torch.Tensor], window_return: float) -> None:
        """One REINFORCE step on a window of steps that share the return ``window_return``."""
        cfg = self.config
        advantage = window_return - self.baseline
        scale = np.sqrt(self.return_var) if cfg.normalize_advantage else 1.0
        normalised = advantage / max(scale, 1e-8)
        loss, entropy, probs = self.policy_loss(torch.stack(inputs), torch.stack(actions), normalised)
        grad_norm = self._step(loss)
        self._fit_baseline(window_return)
        self._record(loss, entropy, probs, advantage=float(advantage), advantage_mean=float(normalised),
                     advantage_std=0.0, grad_norm=grad_norm)  # one advantage shared by the window's actions

    def _record(self, loss: torch.Tensor, entropy: torch.Tensor, probs: torch.Tensor, **extra: float) -> None:
        """Update the metrics after a policy step (one host transfer: they are read every step by trackers)."""
        per_teacher = probs.detach().reshape(-1, probs.shape[-1]).mean(dim=0)
        values = torch.cat([torch.stack([loss.detach(), entropy.detach()]), per_teacher]).tolist()
        self.metrics.update(policy_loss=values[0], entropy=values[1], keep_probability=float(np.mean(values[2:])),
                            updates=float(self.updates), **extra)
        for teacher, keep in zip(self.unwrapped.teacher_names, values[2:]):
            self.metrics[f"keep_probability[{teacher}]"] = keep

    def _fit_baseline(self, window_return: float) -> None:
        decay = self.config.baseline_decay
        self.return_var = decay * self.return_var + (1 - decay) * (window_return - self.baseline) ** 2
        self.baseline = decay * self.baseline + (1 - decay) * window_return
        self.metrics.update(baseline=self.baseline, window_return=window_return)

    def learn(self, total_steps: int, callback=None, resume: bool = False) -> PaperReinforceAgent:
        """Run ``total_steps`` env steps, updating the selector at the end of each window (module docstring);
        ``callback(locals())`` after each step. ``resume``: continue a loaded :meth:`training_state` (the loop, the
        open window, the action noise's generator) exactly; see :class:`~agents.base.Agent`."""
        cfg = self.config
        self._begin(total_steps, resume)
        if not resume:
            self.window = Window()
        window = self.window
        while self.loop.step < total_steps:
            step = self.loop.step
            if cfg.anneal_lr:
                for group in self.optimizer.param_groups:
                    group["lr"] = cfg.learning_rate * (1.0 - step / total_steps)
            states = self.states.tensor(self._observation())
            window.states.append(states)
            inputs = self._normalise(states)
            if step < cfg.warmup_steps:
                action = np.ones(self.batch_shape, dtype=np.int8 if self.select_mode else np.float32)
            else:
                action, taken = self._sample(inputs)
                window.inputs.append(inputs)
                window.actions.append(taken)
            # the batch's per-pair credit, measured before acting when the env does not put it in info (it is the
            # same quantity: StudentTrainer.pair_credit on the current student and batch)
            credit = (self.unwrapped.pair_credit() if cfg.advantage == "credit" and step >= cfg.warmup_steps
                      and not self._env_credit else None)
            if cfg.advantage == "gold" and step >= cfg.warmup_steps:
                credit = self._gold_signal(self._observation())
            obs, reward, terminated, truncated, info = self.env.step(action)
            self._advance(obs, terminated, truncated)
            if cfg.advantage in ("credit", "gold"):
                if step >= cfg.warmup_steps and cfg.advantage == "gold" and cfg.gold_replay:
                    self._replay_update(states, credit)
                elif step >= cfg.warmup_steps:
                    self._credit_update(inputs, taken, info["credit"] if credit is None else credit)
                window.inputs, window.actions = [], []  # the window return is only used for the baseline metric
            window.total_return += float(reward)
            window.steps += 1
            measured = info.get("reward_measured", True)
            if (measured and window.steps >= cfg.update_interval) or terminated or truncated:
                if not self.updates and "baseline" not in self.metrics:  # the first return sets the baseline's level
                    self.baseline = window.total_return
                    self.metrics.update(baseline=self.baseline, window_return=window.total_return)
                elif window.inputs:
                    self._update(window.inputs, window.actions, window.total_return)
                else:
                    self._fit_baseline(window.total_return)
                self._update_input_stats(window.states)
                window.clear()
            if callback is not None and callback(locals()) is False:
                break
        return self

    # -- persistence
    def state_dict(self) -> dict[str, Any]:
        inputs = {f"input_{key}": value for key, value in self.standardise.state_dict().items()}  # input_mean, ...
        return {"policy": self.policy.state_dict(), "optimizer": self.optimizer.state_dict(), **inputs,
                "baseline": self.baseline, "return_var": self.return_var, "updates": self.updates,
                "credit_var": self.credit_var}

    def training_state(self) -> dict[str, Any]:
        """The loop and the agent's rng (:class:`~agents.base.Agent`), the action noise's generator, the open window
        (its states, normalised inputs and actions, return and length) and the running metrics (the first window's return
        sets the baseline only while ``metrics`` has none)."""
        window = self.window
        return {**super().training_state(), "generator": self.generator.get_state(), "metrics": dict(self.metrics),
                "window": {"inputs": list(window.inputs), "actions": list(window.actions),
                           "total_return": window.total_return, "steps": window.steps,
                           "states": list(window.states)},
                "replay": [list(item) for item in self.replay], "replay_cursor": self.replay_cursor}

    def load_training_state(self, state: dict[str, Any]) -> None:
        super().load_training_state(state)
        self.generator.set_state(state["generator"])
        self.metrics = dict(state["metrics"])
        self.window = Window(**state["window"])
        self.replay = [tuple(item) for item in state.get("replay", [])]
        self.replay_cursor = int(state.get("replay_cursor", 0))

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.policy.load_state_dict(state["policy"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.standardise.load_state_dict({key: state[f"input_{key}"] for key in ("mean", "var", "count")})
        self.baseline, self.return_var, self.updates = state["baseline"], state["return_var"], state["updates"]
        self.credit_var = state.get("credit_var", 1.0)


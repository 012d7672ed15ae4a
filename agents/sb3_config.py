"""The SB3 agents' options: their Config dataclasses (one field per hyperparameter, None: from the yml) and the
hyperparameter files in RL Zoo layout (``agents/hyperparams/<algo>.yml``); see :mod:`agents.sb3`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import yaml

from agents.base import AgentConfig

HYPERPARAMS_DIR = Path(__file__).parent / "hyperparams"


@dataclasses.dataclass
class SB3Config(AgentConfig):
    """Fields left None come from ``agents/hyperparams/<algo>.yml``."""

    view: str | None = None
    """'teacher': one policy input per (instance, teacher), as in RL-KD; 'instance': one per instance, K outputs;
    'router': one per instance, its label-free view (label-free features, embedding, teachers' log-probabilities)
    (None: the yml's 'view', else 'teacher')"""
    instance_reward: str | None = None
    """the reward tier of each instance (docs/env.md): 'return' (alias 'env'): the env's reward; 'student_credit':
    its first-order share of the student's dev-loss change (needs --credit); 'gold_credit' (alias 'gold'): on a
    labelled instance, how much likelier its gold label is under the chosen mixture than under equal weights, 0 on
    the transfer rows (None: the yml's 'instance_reward', else 'env')"""
    learning_rate: float | None = None
    """learning rate of the SB3 optimizer(s)"""
    gamma: float | None = None
    """discount factor per env step"""
    minibatch_size: int | None = None
    """SB3 batch_size: instances per gradient step"""
    net_arch: str | None = None
    """hidden layer sizes of the policy / value networks, comma separated, e.g. '64,64'"""
    policy_device: str = "cpu"
    """torch device of the SB3 networks (a tiny MLP: the CPU is fastest)"""
    hyperparams_file: str = ""
    """a yml file in RL Zoo layout to use instead of agents/hyperparams/<algo>.yml"""
    verbose: int = 0
    """SB3 verbosity"""
    normalize_obs: bool | None = None
    """standardise observations with a running mean / std (VecNormalize; None: the yml's 'normalize')"""
    normalize_reward: bool | None = None
    """divide rewards by a running std of the discounted return (VecNormalize; None: the yml's 'normalize')"""


@dataclasses.dataclass
class OnPolicyConfig(SB3Config):
    n_steps: int | None = None
    """env steps per rollout (each gives B samples)"""
    ent_coef: float | None = None
    """entropy bonus coefficient"""
    gae_lambda: float | None = None
    """GAE lambda"""
    vf_coef: float | None = None
    """value loss coefficient"""
    log_std_init: float | None = None
    """weights mode: initial log std of the Gaussian policy (actions in [-1, 1])"""


@dataclasses.dataclass
class PPOConfig(OnPolicyConfig):
    n_epochs: int | None = None
    """epochs over each rollout"""
    clip_range: float | None = None
    """PPO clipping parameter"""


@dataclasses.dataclass
class OffPolicyConfig(SB3Config):
    buffer_size: int | None = None
    """replay buffer capacity in instances (transitions)"""
    learning_starts: int | None = None
    """env steps of random actions before learning starts"""
    train_freq: int | None = None
    """env steps between training phases"""
    gradient_steps: int | None = None
    """gradient steps per training phase"""
    tau: float | None = None
    """soft update coefficient of the target networks"""


@dataclasses.dataclass
class SACConfig(OffPolicyConfig):
    ent_coef: float | None = None
    """fixed entropy coefficient (None: the yml's, 'auto' = learned)"""


@dataclasses.dataclass
class TD3Config(OffPolicyConfig):
    policy_delay: int | None = None
    """critic updates per actor update"""
    target_policy_noise: float | None = None
    """std of the smoothing noise on target actions"""
    action_noise_std: float | None = None
    """std of the Gaussian exploration noise (actions in [-1, 1])"""


#: Config field -> SB3 keyword, where they differ
RENAMED = {"minibatch_size": "batch_size"}
#: Config fields that are the adapter's, not SB3 keywords
NOT_SB3 = {"seed", "view", "instance_reward", "net_arch", "policy_device", "hyperparams_file", "verbose",
           "action_noise_std", "log_std_init", "normalize_obs", "normalize_reward"}


def within_rollout(params: dict[str, Any], sub_envs: int) -> dict[str, Any]:
    """``params`` with an on-policy ``batch_size`` above the rollout (``n_steps`` x ``sub_envs``) set to the rollout:
    one minibatch of the whole rollout either way (the same minibatches, the same numbers), without SB3's warning of
    a truncated minibatch (ppo.yml's 320 is at least the rollout over one student and over four)."""
    if "n_steps" in params and params.get("batch_size", 0) > params["n_steps"] * sub_envs:
        return {**params, "batch_size": params["n_steps"] * sub_envs}
    return params


def load_hyperparams(algo: str, env_id: str | None, path: str | Path | None = None) -> dict[str, Any]:
    """The hyperparameters of ``algo`` for ``env_id`` from a yml in RL Zoo layout (the ``default`` entry when the
    file has no entry for ``env_id``)."""
    path = Path(path) if path else HYPERPARAMS_DIR / f"{algo}.yml"
    if not path.exists():
        raise FileNotFoundError(f"no hyperparameter file for {algo!r} at {path}")
    table = yaml.safe_load(path.read_text()) or {}
    entry = table.get(env_id) if env_id in table else table.get("default")
    if entry is None:
        raise ValueError(f"{path} has no entry for env id {env_id!r} and no 'default' entry; keys: {sorted(table)}")
    return dict(entry)

"""Teacher-selection agents for the kd-gym environments.

    import gymnasium as gym, kd_gym, agents
    env = gym.make("kd_gym/TeacherSelectionLite-v0")
    agent = agents.make("reinforce", env, seed=0)
    agent.learn(total_steps=1000)

Names: ``reinforce`` (REINFORCE over routers on the student's dev gain), ``reinforce-paper`` (RL-KD's own design),
``gold-router`` (fitted to the labelled rows' gold labels: a reference), ``ppo``, ``a2c``, ``sac``, ``td3``, ``metagrad`` (meta-gradient, no RL), ``uniform``,
``single:<k>``, ``best_teacher``, ``confidence``, ``random``, ``no_kd``, ``oracle`` (privileged reference);
third-party agents through the entry-point group ``kd_gym.agents`` or a ``package.module:Class`` path.
"""

from __future__ import annotations

import importlib
import json
from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

from agents.base import Agent, AgentConfig, LoopState
from agents.checkpoint import load_state

ENTRY_POINT_GROUP = "kd_gym.agents"

BUILTIN: dict[str, str] = {
    "reinforce": "agents.reinforce:ReinforceAgent",
    "reinforce-paper": "agents.reinforce_paper:PaperReinforceAgent",
    "gold-router": "agents.gold_router:GoldRouterAgent",
    "ppo": "agents.sb3:PPOAgent",
    "a2c": "agents.sb3:A2CAgent",
    "sac": "agents.sb3:SACAgent",
    "td3": "agents.sb3:TD3Agent",
    "uniform": "agents.baselines:UniformAgent",
    "single": "agents.baselines:SingleTeacherAgent",
    "best_teacher": "agents.baselines:BestTeacherAgent",
    "confidence": "agents.baselines:ConfidenceAgent",
    "random": "agents.baselines:RandomAgent",
    "no_kd": "agents.baselines:NoKDAgent",
    "oracle": "agents.baselines:OracleAgent",
    "metagrad": "agents.metagrad:MetaGradientAgent",
}

_REGISTERED: dict[str, type[Agent] | str] = {}


def register(name: str, agent_class: type[Agent] | str) -> None:
    """Make an agent class (or a ``module:Class`` path) available to :func:`make` as ``name``."""
    _REGISTERED[name] = agent_class


def _import_path(path: str) -> type[Agent]:
    module_name, _, class_name = path.partition(":")
    try:
        obj = importlib.import_module(module_name)
    except ImportError as error:
        raise ValueError(f"agent {path!r}: cannot import module {module_name!r} ({error})") from error
    for part in class_name.split("."):
        if not hasattr(obj, part):
            raise ValueError(f"agent {path!r}: module {module_name!r} has no attribute {part!r}")
        obj = getattr(obj, part)
    return obj  # type: ignore[return-value]


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in entry_points(group=ENTRY_POINT_GROUP)}


def available_agents() -> list[str]:
    """Every agent name :func:`make` knows (built-ins, registered, entry points)."""
    names = [n if n != "single" else "single:<k>" for n in BUILTIN]
    return names + sorted(set(_REGISTERED) | set(_entry_points()))


def resolve(name: str) -> tuple[type[Agent], dict[str, Any]]:
    """The agent class of ``name`` and the keywords its name implies (``single:2`` -> teacher="2")."""
    base, _, argument = name.partition(":")
    if base == "single" and argument:
        return _import_path(BUILTIN["single"]), {"teacher": argument}
    if name in _REGISTERED:
        target = _REGISTERED[name]
        return (_import_path(target) if isinstance(target, str) else target), {}
    if name in BUILTIN and name != "single":
        return _import_path(BUILTIN[name]), {}
    eps = _entry_points()
    if name in eps:
        return eps[name].load(), {}
    if ":" in name and "." in base or (":" in name and base not in BUILTIN):
        return _import_path(name), {}
    raise ValueError(f"unknown agent {name!r}; available: {', '.join(available_agents())}, "
                     "or a 'package.module:Class' path")


def make(name: str, env, **kwargs: Any) -> Agent:
    """Build agent ``name`` on ``env`` with hyperparameters ``kwargs`` (fields of the agent's Config)."""
    agent_class, implied = resolve(name)
    if not (isinstance(agent_class, type) and issubclass(agent_class, Agent)):
        raise TypeError(f"agent {name!r} resolves to {agent_class!r}, which is not a subclass of agents.Agent")
    return agent_class(env, **{**implied, **kwargs})


def load(path: str | Path, env) -> Agent:
    """Load an agent saved with ``agent.save(path)`` onto ``env``.

    The folder is data (JSON and safetensors): loading it runs no code from it. The class named in ``agent.json``
    must be an :class:`Agent` subclass importable here.
    """
    folder = Path(path)
    spec_file = folder / "agent.json"
    if not spec_file.exists():
        raise FileNotFoundError(f"no saved agent at {folder} (expected {spec_file}); save one with agent.save(folder)")
    try:
        spec = json.loads(spec_file.read_text())
        class_path, config = spec["class"], dict(spec["config"])
    except (ValueError, KeyError, TypeError) as error:
        raise ValueError(f"{spec_file} is not a saved agent ({type(error).__name__}: {error}); "
                         "expected JSON with 'class' and 'config'") from error
    agent_class = _import_path(class_path)
    if not (isinstance(agent_class, type) and issubclass(agent_class, Agent)):
        raise ValueError(f"{spec_file} names {class_path!r}, which is not an agents.Agent subclass")
    agent = agent_class(env, **config)
    agent.load_state_dict(load_state(folder))
    return agent


__all__ = ["Agent", "AgentConfig", "LoopState", "available_agents", "load", "make", "register", "resolve"]

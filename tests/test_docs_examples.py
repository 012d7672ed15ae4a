"""The code in the docs runs: the custom policy of docs/extending.md works on the current observation."""

from __future__ import annotations

import re
import sys
import types
from pathlib import Path

import numpy as np
from test_agents import WRONG, make_env, mean_weights, noisy_teacher_data

import agents

DOCS = Path(__file__).resolve().parents[1] / "docs"


def python_blocks(path: Path) -> list[str]:
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.DOTALL)


def test_the_custom_policy_of_extending_md_is_short_and_works(monkeypatch):
    source = python_blocks(DOCS / "extending.md")[0]
    assert len(source.strip().splitlines()) < 30
    module = types.ModuleType("my_agents")
    monkeypatch.setitem(sys.modules, "my_agents", module)  # dataclasses look their module up while being made
    exec(compile(source, "docs/extending.md", "exec"), module.__dict__)  # noqa: S102 - our own docs
    env = make_env(noisy_teacher_data(n_train=256, n_dev=64))
    agent = agents.make("my_agents:SharpConfidence", env, sharpness=4.0)
    assert agent.config.sharpness == 4.0
    weights = mean_weights(agent, env)
    assert weights[WRONG] < 0.5 * weights[:WRONG].mean()  # it reads teacher_ce and down-weights the wrong teacher
    obs, _ = env.reset(seed=0)
    assert env.action_space.contains(agent.predict(obs)) and np.isfinite(agent.predict(obs)).all()


def test_the_sweep_of_extending_md_passes_the_sweep_checker(tmp_path, monkeypatch):
    from agents.experiments.sweep_check import check_sweep

    (tmp_path / "my_agents.py").write_text(python_blocks(DOCS / "extending.md")[0])
    sweep = re.findall(r"```yaml\n(.*?)```", (DOCS / "extending.md").read_text(), flags=re.DOTALL)[0]
    (tmp_path / "sharp.yaml").write_text(sweep)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "my_agents", raising=False)
    config = check_sweep(tmp_path / "sharp.yaml")
    assert "sharpness" in config["parameters"]

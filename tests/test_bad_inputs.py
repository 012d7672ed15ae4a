"""Bad inputs, one row each: the error type, a message that names the bad value (and what is valid), and nothing
already computed is lost (the cache files and the running student are exactly as before the bad call).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch

import agents
import kd_gym  # noqa: F401 - registers the ids
from kd_gym.tasks import load_task
from kd_gym.teachers import TeacherPool

LITE = "kd_gym/TeacherSelectionLite-v0"


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_csv_module, tiny_teachers, tiny_encoder):
    """A built env with a populated cache: what a bad input must not damage."""
    root = tmp_path_factory.mktemp("bad_inputs")
    kwargs = {"task": str(tiny_csv_module), "teachers": [str(p) for p in tiny_teachers],
              "student_checkpoint": str(tiny_encoder), "batch_size": 8, "episode_steps": 50, "reward_interval": 3,
              "dev_subset": 20, "max_length": 16, "device": "cpu", "cache_dir": str(root / "cache")}
    env = gym.make(LITE, **kwargs)
    env.reset(seed=0)
    env.step(np.ones((8, 3), np.float32))
    return {"env": env, "kwargs": kwargs, "root": root, "teachers": tiny_teachers, "csv": tiny_csv_module}


@pytest.fixture(scope="module")
def tiny_csv_module(tmp_path_factory):
    from conftest import make_rows

    path = tmp_path_factory.mktemp("bad_data") / "tiny.csv"
    pd.DataFrame(make_rows(300)).to_csv(path, index=False)
    return path


def snapshot(world) -> tuple[dict[str, str], dict[str, torch.Tensor], int]:
    cache = Path(world["kwargs"]["cache_dir"])
    files = {str(p.relative_to(cache)): hashlib.sha256(p.read_bytes()).hexdigest()
             for p in sorted(cache.rglob("*")) if p.is_file()}
    env = world["env"].unwrapped
    return files, {k: v.clone() for k, v in env.student_state_dict().items()}, env.student_steps


def write_csv(folder: Path, name: str, frame: pd.DataFrame | str) -> str:
    path = folder / name
    if isinstance(frame, str):
        path.write_text(frame)
    else:
        frame.to_csv(path, index=False)
    return str(path)


def rows(labels: list[str], n: int = 40) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"text number {i} {labels[i % len(labels)]}" for i in range(n)],
                         "label": [labels[i % len(labels)] for i in range(n)]})


# Each case: (id, expected exception, regex the message must match, the call given the world).
Case = tuple[str, type[Exception], str, Callable[[dict], object]]


def make_env(world, **overrides):
    return gym.make(LITE, **{**world["kwargs"], **overrides})


def step(world, action):
    return world["env"].step(action)


CASES: list[Case] = [
    # -- env options: rejected at make time, with the value and the valid range
    ("temperature zero", ValueError, r"temperature=0.*> 0", lambda w: make_env(w, temperature=0)),
    ("temperature negative", ValueError, r"temperature=-1\.5.*> 0", lambda w: make_env(w, temperature=-1.5)),
    ("alpha above one", ValueError, r"alpha=1\.5.*\[0, 1\]", lambda w: make_env(w, alpha=1.5)),
    ("alpha negative", ValueError, r"alpha=-0\.1.*\[0, 1\]", lambda w: make_env(w, alpha=-0.1)),
    ("batch larger than train", ValueError, r"batch_size=10000.*train split \(\d+ rows\)",
     lambda w: make_env(w, batch_size=10000)),
    ("batch zero", ValueError, r"batch_size=0.*>= 1", lambda w: make_env(w, batch_size=0)),
    ("action type", ValueError, r"action_type='soft'.*weights", lambda w: make_env(w, action_type="soft")),
    ("student kind", ValueError, r"student='huge'.*lite", lambda w: make_env(w, student="huge")),
    ("episode steps", ValueError, r"episode_steps=0", lambda w: make_env(w, episode_steps=0)),
    ("reward interval", ValueError, r"reward_interval=-2", lambda w: make_env(w, reward_interval=-2)),
    ("dev subset", ValueError, r"dev_subset=0", lambda w: make_env(w, dev_subset=0)),
    ("learning rate", ValueError, r"lr=-0\.01.*> 0", lambda w: make_env(w, lr=-0.01)),
    ("precision", ValueError, r"precision='fp16'.*bf16", lambda w: make_env(w, precision="fp16")),
    ("unknown option", TypeError, r"unknown option.*'tempreature'.*temperature", lambda w: make_env(w, tempreature=2)),
    ("unknown reward", ValueError, r"unknown reward 'dev_accuracy'.*dev_delta", lambda w: make_env(w, reward="dev_accuracy")),
    ("unknown scenario", ValueError, r"unknown scenario 'noisy'.*noisy-teacher", lambda w: make_env(w, scenario="noisy")),
    ("reset option", ValueError, r"keep_studnet.*keep_student",
     lambda w: w["env"].reset(options={"keep_studnet": True})),
    # -- actions
    ("string action", ValueError, r"'abc'.*not numeric.*\(8, 3\)", lambda w: step(w, "abc")),
    ("object action", ValueError, r"not numeric.*\(8, 3\)", lambda w: step(w, {"weights": 1})),
    ("action shape", ValueError, r"shape \(8, 2\).*\(8, 3\)", lambda w: step(w, np.ones((8, 2)))),
    ("nan action", ValueError, r"3 NaN", lambda w: step(w, np.where(np.eye(8, 3) > 0, np.nan, 1.0))),
    # -- tasks and files
    ("empty csv", ValueError, r"empty\.csv.*no data rows",
     lambda w: load_task(write_csv(w["root"], "empty.csv", ""))),
    ("header-only csv", ValueError, r"header\.csv.*no data rows.*header",
     lambda w: load_task(write_csv(w["root"], "header.csv", "text,label\n"))),
    ("missing file", ValueError, r"'missing\.csv' does not exist", lambda w: load_task("missing.csv")),
    ("unsupported file type", ValueError, r"notes\.txt.*unsupported type",
     lambda w: load_task("x", data_files=write_csv(w["root"], "notes.txt", "a,b\n1,2\n"))),
    ("dev labels not in train", ValueError, r"dev split \(.*dev\.csv\).*\{'(positive|negative)': 20.*train has",
     lambda w: load_task("rt", data_files={"train": write_csv(w["root"], "train.csv", rows(["fresh", "rotten"])),
                                           "dev": write_csv(w["root"], "dev.csv", rows(["positive", "negative"]))})),
    ("stray label", ValueError, r"\{'neutrl': 1\}.*rarer than.*allow_rare_labels",
     lambda w: load_task(write_csv(w["root"], "stray.csv", pd.concat(
         [rows(["pos", "neg"], 400), pd.DataFrame({"text": ["odd one"], "label": ["neutrl"]})])))),
    ("text column", ValueError, r"column 'review' is missing.*text_column",
     lambda w: load_task(str(w["csv"]), text_column="review")),
    # -- teacher folders
    ("teacher folder missing", FileNotFoundError, r"no-such-teacher.*does not exist",
     lambda w: TeacherPool([str(w["root"] / "no-such-teacher")]).check_labels(load_task(str(w["csv"])))),
    ("teacher without weights", FileNotFoundError, r"'config-only': no model weights.*config-only",
     lambda w: TeacherPool([_config_only(w)], cache_dir=w["root"] / "other-cache").logits(
         load_task(str(w["csv"])), "dev")),
    # -- agents and checkpoints
    ("unknown agent", ValueError, r"unknown agent 'reinfroce'.*reinforce", lambda w: agents.make("reinfroce", w["env"])),
    ("unknown hyperparameter", TypeError, r"learnig_rate.*learning_rate",
     lambda w: agents.make("reinforce", w["env"], learnig_rate=0.1)),
    ("init keep probability", ValueError, r"init_keep_probability=1\.5.*\(0, 1\)",
     lambda w: agents.make("reinforce", w["env"], init_keep_probability=1.5)),
    ("no saved agent", FileNotFoundError, r"no saved agent at .*nothing-here.*agent\.json",
     lambda w: agents.load(w["root"] / "nothing-here", w["env"])),
    ("corrupted agent state", ValueError, r"corrupted.*save it again", lambda w: agents.load(_corrupt_agent(w), w["env"])),
    ("agent file naming a non-agent", ValueError, r"'os:system'.*not an agents\.Agent",
     lambda w: agents.load(_hostile_agent(w), w["env"])),
]


def _config_only(world) -> str:
    folder = world["root"] / "config-only"
    if not folder.exists():
        shutil.copytree(world["teachers"][0], folder)
        for weights in list(folder.glob("*.safetensors")) + list(folder.glob("*.bin")):
            weights.unlink()
    return str(folder)


def _corrupt_agent(world) -> Path:
    folder = world["root"] / "corrupt-agent"
    agents.make("reinforce", world["env"], seed=0).save(folder)
    (folder / "state.safetensors").write_bytes(b"\x00garbage")
    return folder


def _hostile_agent(world) -> Path:
    folder = world["root"] / "hostile-agent"
    folder.mkdir(exist_ok=True)
    (folder / "agent.json").write_text(json.dumps({"class": "os:system", "config": {"command": "touch PWNED"}}))
    return folder


@pytest.mark.parametrize(("name", "error", "pattern", "call"), CASES, ids=[case[0] for case in CASES])
def test_bad_input_is_a_clear_error_and_loses_nothing(world, name, error, pattern, call, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)  # a hostile file that ran would leave its traces here
    before = snapshot(world)
    with pytest.raises(error, match=pattern):
        call(world)
    files, student, steps = snapshot(world)
    assert files == before[0], "a cache file was removed or changed"
    assert steps == before[2] and all(torch.equal(student[k], v) for k, v in before[1].items())
    assert not (tmp_path / "PWNED").exists() and not os.listdir(tmp_path)


def test_the_suite_is_large_enough():
    assert len(CASES) >= 30

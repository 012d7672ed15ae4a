"""Bad inputs, one row each: the error type, a message that names the bad value (and what is valid), and nothing
already computed is lost (the cache files and the running student are exactly as before the bad call).

Command-line rows run ``kd-gym`` in-process (:func:`kd_gym_cli`): a bad input must end it with exit code 2 and an
error line (argparse's usage error, or ``kd-gym <command>: error: ...``), never a traceback.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
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
import yaml

import agents
import kd_gym  # noqa: F401 - registers the ids
from agents.experiments.resume import CHECKPOINT_FILE
from agents.experiments.run import TrainingMonitor
from agents.experiments.sweep_check import check_sweep
from kd_gym.cli import main
from kd_gym.prepare.embeddings import SentenceEncoder
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


class CommandFailed(Exception):
    """A kd-gym command ended with a non-zero exit code; the message is ``exit <code>: <its last stderr line>``."""


def kd_gym_cli(world, *argv: str) -> None:
    """Run ``kd-gym <argv>`` in-process; raise :class:`CommandFailed` unless it exits with 0. A traceback on stderr
    (a caught exception printed whole) fails the test; an uncaught one propagates and fails it too."""
    stderr = io.StringIO()
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
        try:
            code = main(list(argv))
        except SystemExit as exit_info:
            code = exit_info.code
    text = stderr.getvalue()
    assert "Traceback" not in text, text
    if code:
        raise CommandFailed(f"exit {code}: {text.strip().splitlines()[-1]}")


def tiny(world) -> list[str]:
    """The flags that point a run at the world's tiny task, pool, encoder and cache."""
    kw = world["kwargs"]
    return ["--task", kw["task"], "--teachers", ",".join(kw["teachers"]), "--student-checkpoint",
            kw["student_checkpoint"], "--batch-size", "8", "--dev-subset", "20", "--max-length", "16",
            "--device", "cpu", "--reward-interval", "3", "--cache-dir", kw["cache_dir"]]


def train(world, *flags: str) -> None:
    kd_gym_cli(world, "train", *flags, *tiny(world))


class _Crash(Exception):
    pass


def _interrupted_run(world) -> str:
    """A run folder holding the checkpoint of ``kd-gym train --steps 6 --checkpoint-every 3`` crashed at step 4."""
    out = world["root"] / "interrupted-run"
    if not (out / CHECKPOINT_FILE).exists():
        original = TrainingMonitor.step

        def crash(self, action):
            if self.steps == 4:
                raise _Crash
            return original(self, action)

        TrainingMonitor.step = crash
        try:
            with pytest.raises(_Crash):
                train(world, "--steps", "6", "--checkpoint-every", "3", "--out", str(out))
        finally:
            TrainingMonitor.step = original
    return str(out)


def _corrupt_checkpoint(world) -> str:
    out = world["root"] / "corrupt-run"
    out.mkdir(exist_ok=True)
    (out / CHECKPOINT_FILE).write_bytes(b"\x00 not a safetensors file")
    return str(out)


def _sweep_file(world, parameter: str, metric: str = "dev_metric") -> Path:
    path = world["root"] / "bad_sweep.yaml"
    path.write_text(yaml.safe_dump({
        "program": "kd_gym/cli.py", "method": "random", "metric": {"name": metric, "goal": "maximize"},
        "parameters": {parameter: {"values": [0.01, 0.1]}},
        "command": ["${env}", "${interpreter}", "-m", "kd_gym.cli", "train", "--agent", "gold-router",
                    "${args_no_boolean_flags}"]}))
    return path


def _hashes(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def unchanged(folder: Path, call: Callable[[], object]) -> None:
    """``call()``, then (whatever it raised) check that no file under ``folder`` was added, removed or changed."""
    before = _hashes(folder)
    try:
        call()
    finally:
        assert _hashes(folder) == before, f"a file under {folder} was added, removed or changed"


def _without(world, name: str, files: list[str]) -> Path:
    """A copy of teacher0 named ``name`` without ``files``."""
    folder = world["root"] / name
    if not folder.exists():
        shutil.copytree(world["teachers"][0], folder)
        for file in files:
            (folder / file).unlink()
    return folder


def _without_tokenizer(world) -> Path:
    """A copy of teacher0 whose vocabulary files (tokenizer.json, vocab.txt) are missing."""
    return _without(world, "no-tokenizer", ["tokenizer.json", "vocab.txt"])


def _pool_folder(world, name: str, teachers: dict[str, Path], silos: dict | None = None) -> str:
    """A pool folder as ``kd-gym teachers build`` writes it: pool.json naming teacher folders (copies) in it."""
    folder = world["root"] / name
    if not folder.exists():
        folder.mkdir()
        for teacher, source in teachers.items():
            shutil.copytree(source, folder / teacher)
        recipe = {"kind": "minilm", "num_layers": 2, "silos": None}
        manifest = {"task": "tweets", "pool": "siloed", "seed": 0, "task_fingerprint": "0123456789ab" + "0" * 52,
                    "teachers": [{"name": t, "folder": t, "recipe": {**recipe, "silos": [t.removeprefix("expert-")]}
                                  if t.startswith("expert-") else recipe} for t in teachers]}
        (folder / "pool.json").write_text(json.dumps({**manifest, **({"silos": silos} if silos else {})}))
    return str(folder)


def _pool_missing_a_tokenizer(world) -> str:
    return _pool_folder(world, "pool-missing-tokenizer", {"intact": world["teachers"][0],
                                                          "broken": _without_tokenizer(world)})


def _tweets_pool(world) -> str:
    """A siloed pool of the tweets: its silos are the values of their 'topic' column, which the tiny task lacks."""
    return _pool_folder(world, "tweets-pool", {"expert-airline": world["teachers"][0],
                                               "expert-apple": world["teachers"][1], "minilm-l1": world["teachers"][2]},
                        silos={"kind": "column", "column": "topic", "names": ["airline", "apple"]})


def bench_flags(world) -> list[str]:
    return ["bench", "--agents", "no_kd", "--seeds", "0,1", "--steps", "3", "--no-oracle", "--jobs", "1",
            "--protocol", "online", *tiny(world)]


def _bench_with(world, name: str, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> Path:
    """A copy of a finished tiny bench (no_kd, seeds 0 and 1) whose results.csv was edited by ``edit``."""
    original = world["root"] / "bench"
    if not (original / "results.csv").exists():
        kd_gym_cli(world, *bench_flags(world), "--out", str(original))
    folder = world["root"] / name
    if not folder.exists():
        shutil.copytree(original, folder)
        edit(pd.read_csv(folder / "results.csv", dtype=str)).to_csv(folder / "results.csv", index=False)
    return folder


def resume_bench(world, name: str, edit: Callable[[pd.DataFrame], pd.DataFrame]) -> None:
    """``kd-gym bench`` resumed on an edited results.csv: it must change no file of the bench."""
    folder = _bench_with(world, name, edit)
    unchanged(folder, lambda: kd_gym_cli(world, *bench_flags(world), "--out", str(folder)))


def _set(column: str, value: str, row: int = 1):
    def edit(frame: pd.DataFrame) -> pd.DataFrame:
        frame.loc[row, column] = value
        return frame
    return edit


def flat_step(world, action):
    """A step of the flat view of the world's env (built once, reset)."""
    if "flat" not in world:
        world["flat"] = gym.make("kd_gym/TeacherSelectionLiteFlat-v0", **world["kwargs"])
        world["flat"].reset(seed=0)
    return world["flat"].step(action)


def _resume_past_the_budget(world):
    agent = agents.make("uniform", world["env"])
    agent.loop.step = 8  # as if a training state of 8 steps had been loaded
    return agent.learn(5, resume=True)


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
     lambda w: agents.make("reinforce-paper", w["env"], init_keep_probability=1.5)),
    ("no saved agent", FileNotFoundError, r"no saved agent at .*nothing-here.*agent\.json",
     lambda w: agents.load(w["root"] / "nothing-here", w["env"])),
    ("corrupted agent state", ValueError, r"corrupted.*save it again", lambda w: agents.load(_corrupt_agent(w), w["env"])),
    ("agent file naming a non-agent", ValueError, r"'os:system'.*not an agents\.Agent",
     lambda w: agents.load(_hostile_agent(w), w["env"])),
    ("resume past the budget", ValueError, r"done 8 steps, more than total_steps=5", _resume_past_the_budget),
    # -- the command line: refused at the door, one error line, exit code 2
    ("cli negative seed", CommandFailed, r"exit 2: .*argument --seed: -1 is invalid; use an integer >= 0",
     lambda w: train(w, "--seed", "-1")),
    ("cli zero steps", CommandFailed, r"exit 2: .*argument --steps: 0 is invalid; use an integer >= 1",
     lambda w: train(w, "--steps", "0")),
    ("cli steps not a number", CommandFailed, r"exit 2: .*argument --steps: 'many' is not an integer",
     lambda w: train(w, "--steps", "many")),
    ("cli zero checkpoint interval", CommandFailed, r"exit 2: .*argument --checkpoint-every.*: 0 is invalid",
     lambda w: train(w, "--checkpoint-every", "0")),
    ("cli unknown agent", CommandFailed, r"exit 2: .*unknown agent 'reinfroce'.*reinforce",
     lambda w: train(w, "--agent", "reinfroce")),
    ("cli bench unknown agent", CommandFailed, r"exit 2: .*unknown agent 'unifrom'.*uniform",
     lambda w: kd_gym_cli(w, "bench", "--agents", "no_kd,unifrom", *tiny(w))),
    ("cli bench negative seed", CommandFailed, r"exit 2: .*argument --seeds: seed '-2' in '0,-2' is invalid",
     lambda w: kd_gym_cli(w, "bench", "--seeds", "0,-2", *tiny(w))),
    ("cli env option", CommandFailed, r"exit 2: kd-gym train: error: --temperature 0\.0 is invalid; use a number > 0",
     lambda w: train(w, "--temperature", "0")),
    ("cli env option choice", CommandFailed, r"exit 2: kd-gym bench: error: --action-type soft is invalid.*select",
     lambda w: kd_gym_cli(w, "bench", "--action-type", "soft", *tiny(w))),
    ("cli task column", CommandFailed,
     r"exit 2: kd-gym train: error: .*column 'review' is missing.*; pass --text-column \.\.\. naming one of them",
     lambda w: train(w, "--text-column", "review")),
    ("cli task fraction", CommandFailed, r"exit 2: kd-gym train: error: --dev-fraction 1\.5 is out of range",
     lambda w: train(w, "--dev-fraction", "1.5")),
    ("cli checkpoint of another command", CommandFailed,
     r"exit 2: kd-gym train: error: the checkpoint .*checkpoint\.safetensors \(step 3 of 6\) was made by another "
     r"command: steps: 6 in the checkpoint, 8 now.*--out",
     lambda w: train(w, "--steps", "8", "--checkpoint-every", "3", "--out", _interrupted_run(w))),
    ("cli corrupted checkpoint", CommandFailed, r"exit 2: .*corrupt-run/checkpoint\.safetensors is unreadable or "
     r"corrupted.*delete it", lambda w: train(w, "--steps", "6", "--out", _corrupt_checkpoint(w))),
    ("sweep parameter that is no flag", ValueError,
     r"bad_sweep\.yaml: parameter 'learnig_rate' is not a flag of kd-gym train; did you mean 'learning_rate'",
     lambda w: check_sweep(_sweep_file(w, "learnig_rate"))),
    ("sweep parameter of another agent", ValueError, r"parameter 'clip_range' does not apply to agent 'gold-router'",
     lambda w: check_sweep(_sweep_file(w, "clip_range"))),
    # -- issue 33: each input a new user tried, with what the error must say
    ("teacher without its tokenizer", FileNotFoundError,
     r"teacher 'no-tokenizer': the tokenizer in .*no-tokenizer has no vocabulary \(5 tokens, all special.*vocab\.txt"
     r".*missing",
     lambda w: TeacherPool([_without_tokenizer(w)], cache_dir=w["kwargs"]["cache_dir"]).logits(
         load_task(str(w["csv"])), "dev")),
    ("sentence encoder without its tokenizer", FileNotFoundError,
     r"sentence encoder 'no-tokenizer': the tokenizer in .*no-tokenizer has no vocabulary",
     lambda w: SentenceEncoder(_without_tokenizer(w), cache_dir=w["kwargs"]["cache_dir"], device="cpu").encode(
         load_task(str(w["csv"])), "dev")),
    ("teacher without its config", FileNotFoundError, r"teacher 'no-config': no config\.json in .*no-config; save",
     lambda w: TeacherPool([_without(w, "no-config", ["config.json"])], cache_dir=w["kwargs"]["cache_dir"]).logits(
         load_task(str(w["csv"])), "dev")),
    ("cli pool with a teacher without its tokenizer", CommandFailed,
     r"exit 2: kd-gym train: error: teacher 'broken': the tokenizer .* has no vocabulary",
     lambda w: kd_gym_cli(w, "train", *tiny(w), "--teachers", _pool_missing_a_tokenizer(w))),
    ("bench resumed on a duplicate row", CommandFailed,
     r"exit 2: kd-gym bench: error: .*duplicate-row/results\.csv line 4 \(agent 'no_kd', seed 1\) repeats the cell of "
     r"line 3 .*delete that row, or rerun the command with --force",
     lambda w: resume_bench(w, "duplicate-row", lambda f: pd.concat([f, f.iloc[[1]]]))),
    ("bench resumed on a non-numeric metric", CommandFailed,
     r"exit 2: kd-gym bench: error: .*non-numeric/results\.csv line 3 \(agent 'no_kd', seed 1\): column "
     r"'test_metric' holds '(0\.388024){5}\.\.\.' \(800 characters\), not a number in \[0, 1\]; fix or "
     r"delete that row, or rerun the command with --force",
     lambda w: resume_bench(w, "non-numeric", _set("test_metric", "0.388024" * 100))),
    ("bench resumed on an out-of-range metric", CommandFailed,
     r"exit 2: .*out-of-range/results\.csv line 2 \(agent 'no_kd', seed 0\): column 'dev_metric' holds 1\.7, out of "
     r"range", lambda w: resume_bench(w, "out-of-range", _set("dev_metric", "1.7", row=0))),
    ("bench resumed on an unknown column", CommandFailed,
     r"exit 2: .*unknown-column/results\.csv has column\(s\) \['notes'\] that kd-gym bench does not write",
     lambda w: resume_bench(w, "unknown-column", lambda f: f.assign(notes="rerun?"))),
    ("sweep metric the run never logs", ValueError,
     r"metric 'agent/never_logged_key' cannot be swept \(it is not a key of the result kd-gym train logs.*use one "
     r"the run logs: dev_metric$",
     lambda w: check_sweep(_sweep_file(w, "learning_rate", metric="agent/never_logged_key"))),
    ("task of 2 rows", ValueError,
     r"task '.*two\.csv': the train data \(.*two\.csv\) has 2 row\(s\); a task needs at least 10 labelled rows",
     lambda w: load_task(write_csv(w["root"], "two.csv", rows(["pos", "neg"], 2)))),
    ("pool of another task", ValueError,
     r"the teacher pool at .*tweets-pool was built for task 'tweets' \(content fingerprint 0123456789ab\), not for "
     r"task .*tiny\.csv' \(fingerprint [0-9a-f]{12}\): its silos are the values of column 'topic', which task .* lacks"
     r".*kd-gym teachers build --task .*pass oracle='gold'$",
     lambda w: make_env(w, teachers=_tweets_pool(w))),
    ("cli pool of another task", CommandFailed,
     r"exit 2: kd-gym train: error: the teacher pool at .*tweets-pool was built for task 'tweets' .*column 'topic'.*"
     r"pass --oracle gold$", lambda w: kd_gym_cli(w, "train", *tiny(w), "--teachers", _tweets_pool(w))),
    ("cli rare label names the flag", CommandFailed,
     r"exit 2: kd-gym train: error: .*\{'neutrl': 1\}.*or pass --allow-rare-labels to keep them as classes",
     lambda w: kd_gym_cli(w, "train", *tiny(w), "--task", write_csv(w["root"], "stray-cli.csv", pd.concat(
         [rows(["pos", "neg"], 400), pd.DataFrame({"text": ["odd one"], "label": ["neutrl"]})])))),
    ("flat action of shape (B, K)", ValueError,
     r"flat action has shape \(8, 3\); expected \(24,\) = B \* K for \(B, K\) = \(8, 3\) of finite values in "
     r"\[-1, 1\].*a \(B, K\) array is the Dict env's action .*env\.to_action\(weights\)",
     lambda w: flat_step(w, np.zeros((8, 3), np.float32))),
    ("flat action with a NaN", ValueError,
     r"flat action holds 1 NaN or infinite value\(s\), the first nan at element 4 \(instance 1, teacher 1\); "
     r"expected \(24,\) = B \* K for \(B, K\) = \(8, 3\) of finite values in \[-1, 1\]",
     lambda w: flat_step(w, np.where(np.arange(24) == 4, np.nan, 0.0))),
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
    assert len(CASES) >= 45


def test_force_reruns_the_cells_whose_rows_were_refused(world, monkeypatch, tmp_path):
    # the duplicate row of "bench resumed on a duplicate row": --force runs the command's cells again, one row each
    monkeypatch.chdir(tmp_path)
    folder = _bench_with(world, "forced", lambda f: pd.concat([f, f.iloc[[1]]]))
    assert len(pd.read_csv(folder / "results.csv")) == 3
    kd_gym_cli(world, *bench_flags(world), "--out", str(folder), "--force")
    rows, original = pd.read_csv(folder / "results.csv"), pd.read_csv(world["root"] / "bench" / "results.csv")
    assert rows["seed"].tolist() == [0, 1]
    for metric in ("dev_metric", "test_metric"):  # seeded cells: the same results again
        assert rows[metric].tolist() == original[metric].tolist()

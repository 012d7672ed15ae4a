"""The default-pool path end to end on a tiny task: `kd-gym teachers build` recipes (a MiniLM-style fine-tune and a
TF-IDF specialist) into a temporary $KD_GYM_HOME, the default env ids finding that pool by the task's content, and
the guards against teacher leakage."""

from __future__ import annotations

import shutil

import gymnasium as gym
import numpy as np
import pytest

import kd_gym
from kd_gym.defaults import TRAINING_ROWS_FILE, check_pool_rows, default_pool_dir
from kd_gym.prepare.pool_build import TeacherRecipe, build_default_pool
from kd_gym.tasks import load_task

TINY_RECIPES = (TeacherRecipe("tiny-l1", num_layers=1, examples=60, lr=1e-3),
                TeacherRecipe("tfidf-all", kind="tfidf"))


@pytest.fixture()
def tiny_pool(tiny_csv, tiny_encoder, kd_home):
    manifest = build_default_pool(str(tiny_csv), base=tiny_encoder, recipes=TINY_RECIPES, device="cpu")
    return manifest


def test_pool_is_keyed_by_content_and_records_its_rows(tiny_pool, tiny_csv, tmp_path):
    task = load_task(str(tiny_csv))
    folder = default_pool_dir(task)
    assert tiny_pool["folder"] == str(folder) and (folder / "pool.json").exists()
    assert [t["name"] for t in tiny_pool["teachers"]] == ["tiny-l1", "tfidf-all"]
    reserved = set((folder / TRAINING_ROWS_FILE).read_text().split())
    assert len(reserved) == tiny_pool["teacher_rows"] == round(0.4 * len(task.splits["train"]))
    assert reserved <= set(task.row_hashes("train")) and not reserved & set(task.row_hashes("dev"))
    # the same rows under another path: the same pool; another split seed: another key
    copy = tmp_path / "elsewhere" / "renamed.csv"
    copy.parent.mkdir()
    shutil.copy(tiny_csv, copy)
    assert default_pool_dir(load_task(str(copy))).name.endswith(folder.name.split("-")[-1])
    assert default_pool_dir(load_task(str(tiny_csv), seed=1)) != folder


@pytest.mark.parametrize("env_id", kd_gym.ENV_IDS)
def test_default_ids_run_on_the_default_pool(tiny_pool, tiny_csv, tiny_encoder, env_id):
    from gymnasium.utils.env_checker import check_env

    env = gym.make(env_id, task=str(tiny_csv), student_checkpoint=str(tiny_encoder), device="cpu", batch_size=8,
                   dev_subset=20, max_length=16, gold_labels=20)
    check_env(env.unwrapped, skip_render_check=True)
    obs, _ = env.reset(seed=0)
    assert obs["teacher_logits"].shape == (8, 2, 3)
    # the student learns only from rows no teacher saw, 20 of them with their label
    task = load_task(str(tiny_csv))
    assert len(env.unwrapped.trainer.split("train")) == len(task.splits["train"]) - tiny_pool["teacher_rows"]
    assert int(env.unwrapped.trainer.split("train").labelled.sum()) == 20
    labelled = obs["instance_features"][:, env.unwrapped.instance_feature_names.index("labelled")]
    hidden = labelled == 0
    assert hidden.any() and np.all(obs["teacher_features"][hidden][..., 0] == 0)  # teacher CE masked
    env.step(np.ones((8, 2), dtype=np.float32))


def test_another_split_seed_never_reuses_the_pool(tiny_pool, tiny_csv, tiny_encoder):
    with pytest.raises(FileNotFoundError, match="no default teacher pool.*split seed|no default teacher pool"):
        gym.make(kd_gym.ENV_IDS[1], task=str(tiny_csv), student_checkpoint=str(tiny_encoder), device="cpu",
                 split_seed=1, batch_size=8)


def test_a_pool_that_saw_dev_or_test_rows_is_refused(tiny_pool, tiny_csv, tiny_encoder):
    folder = default_pool_dir(load_task(str(tiny_csv)))
    other = load_task(str(tiny_csv), seed=1)  # another split: some of the pool's rows are now dev or test rows
    with pytest.raises(ValueError, match=r"trained on \d+ rows of the (dev|test) split"):
        check_pool_rows(folder, other)
    with pytest.raises(ValueError, match=r"trained on \d+ rows of the (dev|test) split"):
        gym.make(kd_gym.ENV_IDS[1], task=str(tiny_csv), teachers=str(folder), student_checkpoint=str(tiny_encoder),
                 device="cpu", split_seed=1, batch_size=8)

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


def test_a_task_without_a_topic_column_gets_seeded_kmeans_silos(tiny_pool, tiny_csv, tiny_encoder):
    from kd_gym.defaults import pool_silos
    from kd_gym.prepare.embeddings import SentenceEncoder
    from kd_gym.prepare.pool_build import KMEANS_SILOS, pool_recipes, silo_labels, teacher_rows

    task = load_task(str(tiny_csv))
    rows = teacher_rows(task, 0)
    encoder = SentenceEncoder(tiny_encoder, device="cpu")
    labels, info = silo_labels(task, rows, seed=0, encoder=encoder)
    again, _ = silo_labels(task, rows, seed=0, encoder=encoder)
    assert info["kind"] == "kmeans" and info["names"] == [f"cluster-{i}" for i in range(KMEANS_SILOS)]
    assert labels.shape == (len(task.splits["train"]),) and (labels == again).all()
    sizes = [(labels[rows] == name).sum() for name in info["names"]]
    assert sizes == sorted(sizes, reverse=True) and min(sizes) > 0  # named by size, largest first
    # the siloed pool: one expert per silo, trained on that silo's rows only, and a weak generalist
    recipes = pool_recipes("siloed", info["names"])
    assert [r.name for r in recipes] == [f"expert-cluster-{i}" for i in range(KMEANS_SILOS)] + ["minilm-l1"]
    assert [r.silos for r in recipes[:-1]] == [(name,) for name in info["names"]] and recipes[-1].silos is None
    # the built pool records its silos; every train row is assigned from the stored centroids as at build time
    assert tiny_pool["silos"]["kind"] == "kmeans"
    assert sum(tiny_pool["silos"]["teacher_rows"].values()) == len(rows)
    assigned, teacher_silos = pool_silos(default_pool_dir(task), task)
    assert (assigned == labels).mean() > 0.95  # float32 centroids: a row on a boundary may flip
    assert teacher_silos == [None, None]  # the tiny recipes are generalists


def test_a_built_pool_folder_works_on_the_command_line(tiny_pool, tiny_csv, tiny_encoder, tmp_path):
    """`kd-gym teachers build --out X` then `kd-gym bench --teachers X`: the CLI hands the env a list of one folder."""
    import pandas as pd

    from kd_gym.cli import main as run_cli

    out = tmp_path / "bench"
    assert run_cli(["bench", "--agents", "uniform", "--seeds", "0", "--steps", "4", "--out", str(out), "--no-oracle",
                    "--task", str(tiny_csv), "--teachers", tiny_pool["folder"], "--student-checkpoint",
                    str(tiny_encoder), "--batch-size", "8", "--dev-subset", "20", "--max-length", "16",
                    "--device", "cpu"]) == 0
    assert len(pd.read_csv(out / "results.csv")) == 1
    assert run_cli(["train", "--agent", "uniform", "--steps", "4", "--out", str(tmp_path / "train"), "--task",
                    str(tiny_csv), "--teachers", tiny_pool["folder"], "--student-checkpoint", str(tiny_encoder),
                    "--batch-size", "8", "--dev-subset", "20", "--max-length", "16", "--device", "cpu"]) == 0
    env = gym.make(kd_gym.ENV_IDS[1], task=str(tiny_csv), teachers=[tiny_pool["folder"]],
                   student_checkpoint=str(tiny_encoder), device="cpu", batch_size=8, dev_subset=20, max_length=16)
    assert env.unwrapped.teacher_names == ["tiny-l1", "tfidf-all"]


def test_silo_oracles_route_each_row_to_its_silos_expert():
    import torch

    from kd_gym.regime import silo_oracle_weights

    # 3 rows, teachers: expert of silo a, expert of silo b, a generalist; 2 classes
    logits = torch.tensor([[[4.0, 0.0], [0.0, 4.0], [1.0, 0.0]],    # silo a, gold 1: its expert is wrong
                           [[0.0, 4.0], [0.0, 4.0], [0.0, 1.0]],    # silo b, gold 1: its expert is right
                           [[4.0, 0.0], [0.0, 3.0], [0.0, 1.0]]])   # silo c (no expert), gold 1
    labels = torch.tensor([1, 1, 1])
    silos, teachers = np.array(["a", "b", "c"]), ["a", "b", None]
    silo = silo_oracle_weights("silo", logits, labels, silos, teachers)
    assert silo.tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]  # silo c: the gold-label oracle's teacher
    silo_gold = silo_oracle_weights("silo-gold", logits, labels, silos, teachers)
    assert silo_gold.tolist() == [[0, 1, 0], [0, 1, 0], [0, 1, 0]]  # row 0: its expert is wrong, the gold choice
    mix = silo_oracle_weights("silo-mix", logits, labels, silos, teachers)
    assert mix.tolist() == [[1, 1, 0], [1, 1, 1], [0, 1, 0]]  # the expert plus every other teacher that is right
    with pytest.raises(ValueError, match="not a silo oracle"):
        silo_oracle_weights("gold", logits, labels, silos, teachers)


def test_a_silo_oracle_on_a_pool_without_silo_experts_is_an_error_and_auto_is_gold(tiny_pool, tiny_csv, tiny_encoder):
    options = {"task": str(tiny_csv), "student_checkpoint": str(tiny_encoder), "device": "cpu", "batch_size": 8,
               "dev_subset": 20, "max_length": 16}
    with pytest.raises(ValueError, match="oracle='silo' reads each instance's silo"):
        gym.make(kd_gym.ENV_IDS[1], oracle="silo", **options)
    assert gym.make(kd_gym.ENV_IDS[1], **options).unwrapped.oracle_kind == "gold"


def test_micro_batches_give_the_batch_update_and_min_steps_cuts_the_last_pass(tiny_csv, tiny_encoder, tmp_path,
                                                                               monkeypatch):
    """Fine-tuning sorts each batch by length into micro-batches whose gradients add up to the batch's: without
    dropout, one batch of 32 and two micro-batches of 16 give the same teacher (to float rounding); ``min_steps``
    updates are made exactly, the last pass over the rows cut short."""
    import torch
    from transformers import AutoConfig

    import kd_gym.prepare.pool_build as pool_build
    from kd_gym.teachers import load_classifier

    folder = tmp_path / "no-dropout"
    model, tokenizer = load_classifier(tiny_encoder, num_labels=3)
    config = AutoConfig.from_pretrained(tiny_encoder)
    model.config.hidden_dropout_prob = model.config.attention_probs_dropout_prob = 0.0
    assert config.hidden_dropout_prob > 0  # the test would be vacuous with a dropout-free base
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    task = load_task(str(tiny_csv))
    lengths = [len(tokenizer(t)["input_ids"]) for t in task.texts("train")[:70]]
    assert len(set(lengths)) > 1  # rows of different lengths: the micro-batches pad differently from the batch

    updates = []

    def counting_sgd(params, lr, weight_decay):
        # SGD, not AdamW: an update linear in the gradient, so equal gradients give equal teachers to float rounding
        # (Adam turns the rounding noise of a zero gradient, e.g. the attention keys' bias, into a full step)
        optimizer = torch.optim.SGD(params, lr=lr, weight_decay=weight_decay)
        optimizer.register_step_post_hook(lambda *_: updates.append(1))
        return optimizer

    monkeypatch.setattr(pool_build, "fast_adamw", counting_sgd)
    # no clipping either: a clipped update would hide a gradient of the right direction but the wrong size
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda *args, **kwargs: None)
    updates.clear()
    pool_build.finetune_classifier(folder, task, np.arange(70), lr=0.05, min_steps=5, max_length=16)
    assert len(updates) == 5  # 3 batches per pass (32, 32, 6): one pass and 2 batches of the next
    trained = {}
    for parts in (1, 2, 4):  # two batches of 32: the warm-up gives the first a learning rate of 0, the second 0.05
        teacher, _ = pool_build.finetune_classifier(folder, task, np.arange(64), lr=0.05, micro_batches=parts,
                                                    max_length=16)
        trained[parts] = teacher.state_dict()
    start = load_classifier(folder, num_labels=3)[0].state_dict()
    moved = max((trained[1][name] - value).abs().max().item() for name, value in start.items()
                if not name.startswith("classifier"))  # the head is drawn afresh by seed
    assert moved > 1e-4  # the update is real, so equal teachers mean equal gradients
    for parts in (2, 4):
        for name, value in trained[1].items():
            torch.testing.assert_close(trained[parts][name], value, atol=1e-5, rtol=0)  # updates: up to 6e-4

"""What a TeacherSelection environment is built from: the tensors of a config (task, pool, student inputs) and its
student model. :class:`~kd_gym.env.TeacherSelectionEnv` calls these once, at ``gym.make``."""

from __future__ import annotations

from pathlib import Path

import torch

from kd_gym.config import EnvConfig
from kd_gym.data import KDData
from kd_gym.student import FullStudent, LiteStudent, NgramStudent


def build_data(config: EnvConfig) -> tuple[KDData, set[str] | None, Path | None]:
    """The KDData of a config (loads the task and the pool, reads or computes once the cached tensors), the row
    hashes the pool's teachers were trained on (None when the pool does not say) and the pool's folder (None: not a
    pool built by ``kd-gym teachers build``)."""
    from kd_gym.defaults import (
        check_pool_rows,
        check_pool_task,
        default_pool,
        default_pool_dir,
        minilm_path,
        pool_training_rows,
    )
    from kd_gym.prepare.embeddings import SentenceEncoder
    from kd_gym.prepare.tensors import build_full_data, build_lite_data
    from kd_gym.tasks import Task, load_task
    from kd_gym.teachers import TeacherPool

    task = config.task
    if not isinstance(task, Task):
        task = load_task(task, seed=config.split_seed, **config.task_kwargs)
    common = {"cache_dir": config.cache_dir, "max_length": config.max_length, "device": config.device,
              "precision": config.precision}
    teachers, trained, folder = config.teachers, None, None
    if isinstance(teachers, (list, tuple)) and len(teachers) == 1 and isinstance(teachers[0], (str, Path)):
        teachers = teachers[0]  # the command line hands a list: `--teachers FOLDER` may name a built pool
    manifest = Path(str(teachers)) / "pool.json" if isinstance(teachers, (str, Path)) else None
    if teachers is None:
        pool = default_pool(task, config.pool, **common)
        folder = default_pool_dir(task, pool=config.pool)
        trained = pool_training_rows(folder)
    elif isinstance(teachers, TeacherPool):
        pool = teachers
    elif manifest is not None and manifest.exists():  # a pool folder written by `kd-gym teachers build`
        check_pool_rows(manifest.parent, task)
        if config.oracle != "gold":  # the other oracles read the pool's silos (kd_gym.defaults.pool_silos)
            check_pool_task(manifest.parent, task)
        pool = TeacherPool.from_manifest(manifest, **common)
        folder = manifest.parent
        trained = pool_training_rows(folder)
    else:
        pool = TeacherPool([teachers] if isinstance(teachers, str) else teachers, **common)
    checkpoint = config.student_checkpoint or minilm_path()
    if config.student == "lite":
        ngrams = config.lite_student == "ngrams"
        # the ngrams student reads no embedding; it is computed only when the observation shows it
        encoder = SentenceEncoder(checkpoint, **common) if not ngrams or config.include_embedding else None
        return build_lite_data(task, pool, encoder, ngram_buckets=config.ngram_buckets if ngrams else None), trained, folder
    from transformers import AutoTokenizer

    from kd_gym.prepare.cache import resolve_model_folder

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_folder(checkpoint))
    return build_full_data(task, pool, tokenizer, config.max_length), trained, folder


def build_student(config: EnvConfig, data: KDData) -> tuple[torch.nn.Module, float]:
    """The student model and its default learning rate."""
    if config.student == "lite" and config.lite_student == "ngrams":
        ids = data.splits["train"].inputs.get("ngram_ids")
        if ids is None:
            raise ValueError("lite_student='ngrams' needs inputs['ngram_ids'] in the data; build it with "
                             "kd_gym.prepare.tensors.build_lite_data(..., ngram_buckets=...) or use lite_student='mlp'")
        buckets = max(config.ngram_buckets, int(ids.max()) + 1)
        sgd = config.ngram_update == "sgd"
        student = NgramStudent(buckets, data.num_labels, config.ngram_dim, sparse=config.ngram_update != "dense",
                               sgd_lr=config.ngram_sgd_lr if sgd else None, sgd_steps=config.episode_steps if sgd else None)
        return student, config.lr or 1e-2
    if config.student == "lite":
        input_size = data.splits["train"].inputs["embeddings"].shape[1]
        return LiteStudent(input_size, data.num_labels, config.lite_hidden), config.lr or 1e-3
    from kd_gym.defaults import minilm_path

    model = FullStudent(config.student_checkpoint or minilm_path(), data.num_labels, config.student_layers)
    return model, config.lr or 1e-4

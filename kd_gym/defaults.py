"""Where the embedded default lives: the packaged MiniLM weights, and the default teacher pool of a task.

A default pool belongs to the *content* of a task's splits (its rows and its split seed), not to its name: it
lives in ``$KD_GYM_HOME/teachers/<name>-<content fingerprint>``, and ``training_rows.txt`` beside its
``pool.json`` lists a hash of every row its teachers were trained on, so that a pool is never used on a task whose
dev or test rows it saw.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from kd_gym.config import POOLS
from kd_gym.prepare.cache import TRAINING_ROWS_FILE, kd_gym_home, minilm_path  # noqa: F401 (minilm_path: public here too)
from kd_gym.tasks import BUILTIN_SILO_COLUMNS, KMEANS_SILOS, Task, load_task

DEFAULT_POOL = "siloed"  # POOLS: the default pools `kd-gym teachers build --pool` makes (kd_gym.prepare.pool_build)


def default_pool_dir(task: Task | str = "tweets", split_seed: int = 0, pool: str = DEFAULT_POOL,
                     **task_kwargs) -> Path:
    """Where a default pool of a task lives: ``$KD_GYM_HOME/teachers/<name>-<pool>-<fingerprint of the splits>``.

    :param task: a :class:`Task`, or a task name loaded with ``split_seed`` and ``task_kwargs``.
    :param pool: one of :data:`POOLS`.
    """
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r} is not a default pool; use one of {POOLS}")
    if isinstance(task, str):
        task = load_task(task, seed=split_seed, **task_kwargs)
    stem = re.sub(r"[^\w.-]+", "_", Path(task.name).stem if Path(task.name).suffix else task.name)
    # the silos are part of what a siloed pool is: a named column, or k-means clusters other than the default 5
    # (tweets' topic column, the built-in default, keeps the plain name)
    silos = ""
    if task.silo_column is not None and BUILTIN_SILO_COLUMNS.get(task.name) != task.silo_column:
        silos = "-by-" + re.sub(r"[^\w.-]+", "_", task.silo_column)
    elif task.silo_column is None and task.kmeans_silos != KMEANS_SILOS:
        silos = f"-k{task.kmeans_silos}"
    return kd_gym_home() / "teachers" / f"{stem}-{pool}{silos}-{task.content_fingerprint()[:12]}"


def pool_training_rows(pool_dir: str | Path) -> set[str] | None:
    """The row hashes (:meth:`Task.row_hashes`) the pool's teachers were trained on; None if it does not say."""
    rows_file = Path(pool_dir) / TRAINING_ROWS_FILE
    return set(rows_file.read_text().split()) if rows_file.exists() else None


def check_pool_rows(pool_dir: str | Path, task: Task) -> None:
    """Refuse a pool whose teachers were trained on rows of ``task``'s dev or test split.

    :raises ValueError: naming the pool, the task and how many rows overlap, with the command that builds a clean
        pool. Pools without a ``training_rows.txt`` (made elsewhere) are not checked.
    """
    trained = pool_training_rows(pool_dir)
    if trained is None:
        return
    for split in ("dev", "test"):
        overlap = len(trained.intersection(task.row_hashes(split)))
        if overlap:
            built_for = json.loads((Path(pool_dir) / "pool.json").read_text()).get("task", "?")
            raise ValueError(
                f"the teacher pool at {pool_dir} (built for task {built_for!r}) was trained on {overlap} rows of the "
                f"{split} split of task {task.name!r}; its teachers would be graded on data they saw. Build a pool "
                f"for this task and split: `kd-gym teachers build --task {task.name} --seed <split seed>`")


def check_pool_task(pool_dir: str | Path, task: Task) -> None:
    """Refuse a pool built for another task when ``task`` cannot have its silos: they are the values of a column
    (tweets: ``topic``) that ``task`` lacks. A pool built for other rows may still teach ``task`` (the rows its
    teachers saw are checked by :func:`check_pool_rows`); its silo column cannot carry over.

    :raises ValueError: naming the pool, the task each is for (with their content fingerprints), the column, and
        the fixes.
    """
    manifest = Path(pool_dir) / "pool.json"
    if not manifest.exists():
        return
    info = json.loads(manifest.read_text())
    silos = info.get("silos") or {}
    column = silos.get("column") if silos.get("kind") == "column" else None
    columns = task.splits["train"].column_names
    if column is None or column in columns:
        return
    built_for, fingerprint = info.get("task", "?"), str(info.get("task_fingerprint", "?"))
    raise ValueError(
        f"the teacher pool at {pool_dir} was built for task {built_for!r} (content fingerprint {fingerprint[:12]}), "
        f"not for task {task.name!r} (fingerprint {task.content_fingerprint()[:12]}): its silos are the values of "
        f"column {column!r}, which task {task.name!r} lacks (its columns: {columns}). Build a pool for this task "
        f"(`kd-gym teachers build --task {task.name}`) and pass its folder, or use this pool's teachers without "
        "their silos: pass oracle='gold'")


def pool_silos(pool_dir: str | Path, task: Task, split: str = "train") -> tuple[np.ndarray, list[str | None]] | None:
    """Which silo each row of ``task``'s ``split`` is in, and which silo each teacher of the pool is the expert of,
    from the ``pool.json`` of ``kd-gym teachers build`` (None for a pool that does not say).

    :return: ((N,) silo names of the split's rows, (K,) a teacher's silo or None for one trained on every silo).
    """
    manifest = Path(pool_dir) / "pool.json"
    if not manifest.exists():
        return None
    info = json.loads(manifest.read_text())
    silos = info.get("silos")
    if silos is None:
        return None
    if silos["kind"] == "column":
        check_pool_task(pool_dir, task)
        rows = np.asarray(task.splits[split][silos["column"]]).astype(str)
    else:  # k-means: the nearest centroid of the row's sentence embedding (the encoder the silos were made with)
        from kd_gym.prepare.embeddings import SentenceEncoder

        embeddings = SentenceEncoder(info.get("base")).encode(task, split).numpy()
        centroids = np.asarray(silos["centroids"], dtype=np.float32)
        nearest = ((embeddings[:, None, :] - centroids[None]) ** 2).sum(-1).argmin(1)
        rows = np.asarray(silos["names"])[nearest]
    teachers = [(t["recipe"].get("silos") or [None])[0] if len(t["recipe"].get("silos") or []) <= 1 else None
                for t in info["teachers"]]
    return rows, teachers


def default_pool(task: Task | str = "tweets", pool: str = DEFAULT_POOL, **pool_kwargs):
    """The default :class:`~kd_gym.teachers.TeacherPool` of ``task`` as built by ``kd-gym teachers build``, checked
    against the task's dev and test rows (:func:`check_pool_rows`).

    :raises FileNotFoundError: with the command to run, when it has not been built yet for this task's content.
    """
    from kd_gym.teachers import TeacherPool

    if isinstance(task, str):
        task = load_task(task)
    folder = default_pool_dir(task, pool=pool)
    manifest = folder / "pool.json"
    if not manifest.exists():
        raise FileNotFoundError(
            f"no default teacher pool for task {task.name!r} with these splits (looked in {folder}; pools are keyed "
            f"by the task's rows and split seed); run `kd-gym teachers build --task {task.name} --pool {pool}` with the same "
            "--seed and task flags (a few minutes on a CPU), or pass teachers=[...]"
        )
    check_pool_rows(folder, task)
    return TeacherPool.from_manifest(manifest, **pool_kwargs)

"""Build the default teacher pool of a task (``kd-gym teachers build``).

Two pools, chosen with ``pool=`` (``--pool``):

- ``siloed`` (the default): multi-source distillation. The teacher rows are split into *silos* (a column of the task,
  ``topic`` for tweets or the one ``--silo-column`` names, or else ``--kmeans-silos`` k-means clusters of the rows'
  sentence embeddings, seeded), and
  each silo's owner fine-tunes one expert (3 MiniLM layers) on that silo's rows only; no teacher saw every silo. A
  weak generalist (1 MiniLM layer on 1,000 rows of every silo) completes the pool. The silo of an instance is not in
  the observation: an agent must infer it.
- ``generalist``: the earlier default, two generalists (3 MiniLM layers on every teacher row, 1 layer on 1,000) and
  one TF-IDF + logistic-regression specialist per silo.

Teachers train only on the teacher rows: a seeded :data:`TEACHER_SHARE` of the train split; the student learns from
the other train rows (listed by exclusion in ``training_rows.txt``), so teacher rows, student rows, dev and test are
disjoint. The whole build takes a few minutes on a 2-core CPU.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from kd_gym.defaults import DEFAULT_POOL, POOLS, TRAINING_ROWS_FILE, default_pool_dir, minilm_path
from kd_gym.prepare.cache import kd_gym_home
from kd_gym.prepare.embeddings import SentenceEncoder
from kd_gym.prepare.inference import autocast, autocast_dtype, resolve_device
from kd_gym.prepare.pool_report import silo_accuracy
from kd_gym.tasks import KMEANS_SILOS, Task, load_task  # noqa: F401 (KMEANS_SILOS: public here too)
from kd_gym.teachers import TeacherPool, TeacherSpec, load_classifier


@dataclass(frozen=True)
class TeacherRecipe:
    """How one default teacher is trained.

    :param name: the teacher's name (and folder).
    :param kind: ``"minilm"``: fine-tune the first ``num_layers`` layers of the base checkpoint (one epoch, AdamW,
        linear warm-up over 10% of the steps then linear decay, batch 32); ``"tfidf"``: TF-IDF (uni- and bigrams)
        + multinomial logistic regression (:mod:`kd_gym.prepare.tfidf`).
    :param num_layers: minilm: transformer layers kept from the base checkpoint (the first ones).
    :param examples: rows drawn at random from the allowed teacher rows (None: all of them).
    :param silos: restrict the rows to these silos (None: every silo); see :func:`silo_labels`.
    :param lr: minilm: peak learning rate.
    :param min_steps: minilm: train for at least this many updates (a small silo gets several passes, the last one
        partial, so that its expert learns its silo instead of predicting its most common label).
    :param c: tfidf: inverse regularisation strength.
    """

    name: str
    kind: str = "minilm"
    num_layers: int = 6
    examples: int | None = None
    silos: tuple[str, ...] | None = None
    lr: float = 1e-4
    min_steps: int = 0
    c: float = 1.0


TEACHER_SHARE = 0.4  # share of the train rows reserved for teachers; the student learns from the rest
# Shallow models need larger learning rates to move in one short epoch (measured on a dev sample: a 2-layer
# teacher reaches 51% at 1e-4 and 69% at 5e-4).
# One epoch of a 992-row silo is 31 updates, after which a 3-layer expert still predicts one label everywhere
# (measured: dev accuracy 38.8%, the share of the majority class); 150 updates (about 5 epochs) teach it its silo.
EXPERT_MIN_STEPS = 150
MICRO_BATCHES = 2
"""each fine-tuning batch is sorted by token count and run as this many micro-batches whose gradients add up to the
batch's: the same update on fewer padding tokens (measured on 2 CPU cores: 0.9 s -> 0.5 s per update with fused
AdamW; docs/tasks-and-teachers.md)"""


def pool_recipes(pool: str, silos: list[str]) -> tuple[TeacherRecipe, ...]:
    """The recipes of pool ``pool`` (:data:`POOLS`) over the task's silo names ``silos``."""
    if pool == "siloed":
        return (*(TeacherRecipe(f"expert-{silo}", num_layers=3, lr=3e-4, min_steps=EXPERT_MIN_STEPS,
                                   silos=(silo,)) for silo in silos),
                TeacherRecipe("minilm-l1", num_layers=1, examples=1000, lr=1e-3))
    if pool == "generalist":
        return (TeacherRecipe("minilm-l3", num_layers=3, examples=None, lr=3e-4),  # every teacher row
                TeacherRecipe("minilm-l1", num_layers=1, examples=1000, lr=1e-3),
                *(TeacherRecipe(f"tfidf-{silo}", kind="tfidf", silos=(silo,)) for silo in silos))
    raise ValueError(f"pool={pool!r} is not a default pool; use one of {POOLS}")


def silo_order(present: set[str]) -> list[str]:
    """Silo names in the order of the pool's experts: tweets' topics in :data:`~kd_gym.task_sources.TWEET_TOPICS`
    order, any other names sorted after them."""
    from kd_gym.task_sources import TWEET_TOPICS

    return [t for t in TWEET_TOPICS if t in present] + sorted(present - set(TWEET_TOPICS))


def silo_labels(task: Task, fit_rows: np.ndarray, *, seed: int = 0, k: int | None = None,
                encoder=None) -> tuple[np.ndarray, dict]:
    """The silo of every train row, and how it was made.

    A task with a silo column (``task.silo_column``: tweets' topic, or ``--silo-column``) uses its values (tweets'
    topics in :data:`~kd_gym.task_sources.TWEET_TOPICS` order, others sorted). Any other task gets ``k`` (default
    ``task.kmeans_silos``) k-means clusters (scikit-learn, ``n_init=10``, ``random_state=seed``) of the MiniLM sentence
    embeddings, fitted on the rows ``fit_rows`` (the teacher rows) and named ``cluster-0`` ... ``cluster-<k-1>`` by
    size, largest first.

    :return: (N,) array of silo names; the description ``{"kind": "column" | "kmeans", "names": [...], ...}``
        (k-means also gives ``centroids``, (k, D), so any row can be assigned later).
    """
    train = task.splits["train"]
    if task.silo_column is not None:
        labels = np.asarray(train[task.silo_column]).astype(str)
        present = set(labels[fit_rows])
        if len(present) < 2:
            raise ValueError(f"silo_column={task.silo_column!r} has {len(present)} value(s) on the teacher rows "
                             f"({sorted(present)}); silos need at least two domains: name another column, or leave "
                             "silo_column unset for k-means silos")
        return labels, {"kind": "column", "column": task.silo_column, "names": silo_order(present)}
    from sklearn.cluster import KMeans

    k = task.kmeans_silos if k is None else k

    embeddings = (encoder or SentenceEncoder()).encode(task, "train").numpy()
    kmeans = KMeans(n_clusters=k, n_init=10, random_state=seed).fit(embeddings[fit_rows])
    order = np.argsort(-np.bincount(kmeans.labels_, minlength=k), kind="stable")  # largest cluster first
    rank = np.empty(k, dtype=int)
    rank[order] = np.arange(k)
    names = [f"cluster-{i}" for i in range(k)]
    labels = np.array(names)[rank[kmeans.predict(embeddings)]]
    return labels, {"kind": "kmeans", "k": k, "seed": seed, "names": names,
                    "centroids": kmeans.cluster_centers_[order].round(6).tolist()}


def fast_adamw(params, **kwargs) -> torch.optim.AdamW:
    """``torch.optim.AdamW(params, **kwargs)`` with the fused kernel (one pass over all parameters, CPU and CUDA,
    torch >= 2.4), or the default (foreach) implementation where this torch has no fused kernel for the device."""
    params = list(params)
    try:
        return torch.optim.AdamW(params, fused=True, **kwargs)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.AdamW(params, **kwargs)


def finetune_classifier(
    base: str | Path,
    task: Task,
    indices: np.ndarray,
    *,
    num_layers: int | None = None,
    lr: float = 1e-4,
    batch_size: int = 32,
    max_length: int = 64,
    seed: int = 0,
    device: str = "auto",
    precision: str = "auto",
    desc: str = "fine-tune",
    min_steps: int = 0,
    micro_batches: int = MICRO_BATCHES,
):
    """Fine-tune a sequence classifier from ``base`` on train instances ``indices``: one epoch, or ``min_steps``
    updates if that is more (passes in their own seeded orders, the last one cut at ``min_steps``).

    Each batch is sorted by token count and split into ``micro_batches`` parts whose gradients are summed (each part's
    mean loss weighted by its share of the batch): the batch's gradient, computed on less padding. The optimizer is
    AdamW with PyTorch's fused kernel where this torch has it (:func:`fast_adamw`).

    :return: (model, tokenizer), the model on CPU in eval mode.
    """
    from transformers import get_linear_schedule_with_warmup

    torch.manual_seed(seed)
    extra = {"num_hidden_layers": num_layers} if num_layers else {}
    label_names = list(task.label_names)
    model, tokenizer = load_classifier(
        base, num_labels=len(label_names), id2label=dict(enumerate(label_names)),
        label2id={name: i for i, name in enumerate(label_names)}, **extra,
    )
    dev = resolve_device(device)
    dtype = autocast_dtype(dev, precision)
    model.to(dev).train()
    texts, pairs, labels = task.texts("train"), task.text_pairs("train"), task.labels("train")
    rng = np.random.default_rng(seed)
    per_epoch = math.ceil(len(indices) / batch_size)
    steps = max(per_epoch, min_steps)
    epochs = math.ceil(steps / per_epoch)
    order = np.concatenate([rng.permutation(indices) for _ in range(epochs)])
    optimizer = fast_adamw(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=max(1, steps // 10), num_training_steps=steps)
    starts = [e * len(indices) + i for e in range(epochs) for i in range(0, len(indices), batch_size)][:steps]
    tokens = np.zeros(len(texts), dtype=int)  # token count of each training row, to sort a batch by
    if micro_batches > 1:
        rows = np.unique(indices)
        ids = tokenizer([texts[i] for i in rows], [pairs[i] for i in rows] if pairs is not None else None,
                        truncation=True, max_length=max_length)["input_ids"]
        tokens[rows] = [len(x) for x in ids]
    for start in tqdm(starts, desc=desc, unit="batch", leave=False):
        idx = order[start : min(start + batch_size, (start // len(indices) + 1) * len(indices))]
        if micro_batches > 1:  # shortest first, so that each micro-batch pads to a length close to its own
            idx = idx[np.argsort(tokens[idx], kind="stable")]
        for part in np.array_split(idx, min(micro_batches, len(idx))):
            batch = tokenizer(
                [texts[i] for i in part], [pairs[i] for i in part] if pairs is not None else None,
                truncation=True, max_length=max_length, padding=True, return_tensors="pt",
            ).to(dev)
            with autocast(dev, dtype):
                loss = model(**batch, labels=torch.as_tensor(labels[part], device=dev)).loss
            (loss * (len(part) / len(idx))).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
    return model.cpu().eval(), tokenizer


def ensure_writable(folder: Path) -> None:
    """Create ``folder`` and check that a file can be written in it.

    :raises PermissionError: naming the folder and how to pick another one.
    """
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".write-test-{os.getpid()}"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise PermissionError(f"cannot write to {folder} ({error.strerror or error}); point KD_GYM_HOME at a writable "
                              "folder (it holds teachers and cached logits) or pass out_dir=...") from error


def teacher_rows(task: Task, seed: int, share: float = TEACHER_SHARE) -> np.ndarray:
    """The train rows reserved for teachers: a seeded ``share`` of the train split, sorted."""
    n = len(task.splits["train"])
    return np.sort(np.random.default_rng(seed).permutation(n)[: round(share * n)])


def _recipe_indices(recipe: TeacherRecipe, rows: np.ndarray, silos: np.ndarray, seed: int) -> np.ndarray:
    allowed = rows if recipe.silos is None else rows[np.isin(silos[rows], recipe.silos)]
    if len(allowed) == 0:
        raise ValueError(f"teacher {recipe.name!r} trains on silos {list(recipe.silos or [])}, which hold no teacher "
                         f"row; the task's silos are {sorted(set(silos[rows]))}")
    rng = np.random.default_rng(seed)
    size = len(allowed) if recipe.examples is None else min(recipe.examples, len(allowed))
    return np.sort(rng.choice(allowed, size=size, replace=False))


def _train_teacher(recipe: TeacherRecipe, task: Task, indices: np.ndarray, folder: Path, base: Path, seed: int,
                   device: str, precision: str) -> None:
    if recipe.kind == "tfidf":
        from kd_gym.prepare.tfidf import train_tfidf_teacher

        texts = task.texts("train")
        train_tfidf_teacher([texts[i] for i in indices], task.labels("train")[indices], list(task.label_names),
                            folder, c=recipe.c, seed=seed)
        return
    if recipe.kind != "minilm":
        raise ValueError(f"teacher recipe {recipe.name!r} has kind {recipe.kind!r}; use 'minilm' or 'tfidf'")
    model, tokenizer = finetune_classifier(base, task, indices, num_layers=recipe.num_layers, lr=recipe.lr, seed=seed,
                                           device=device, precision=precision, desc=f"fine-tune {recipe.name}",
                                           min_steps=recipe.min_steps)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_default_pool(
    task_name: str = "tweets",
    *,
    out_dir: str | Path | None = None,
    pool: str = DEFAULT_POOL,
    recipes: tuple[TeacherRecipe, ...] | None = None,
    base: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    device: str = "auto",
    precision: str = "auto",
    task_kwargs: dict | None = None,
) -> dict:
    """Fine-tune the default teachers, cache their logits on every split, and write ``pool.json``.

    Teachers already built (their folder holds weights) are kept unless ``force``.
    :param pool: which default pool (:data:`POOLS`); its folder is ``default_pool_dir(task, pool=pool)``.
    :param recipes: other recipes than the pool's (written to ``out_dir``, or the pool's folder).
    :param task_kwargs: keywords of :func:`~kd_gym.tasks.load_task` (:class:`~kd_gym.tasks.TaskOptions`).
    :return: the manifest: per teacher its folder, recipe, dev and test metrics; the dev disagreement matrix.
    """
    task = load_task(task_name, seed=seed, **(task_kwargs or {}))
    if pool not in POOLS:
        raise ValueError(f"pool={pool!r} is not a default pool; use one of {POOLS}")
    out = Path(out_dir) if out_dir else default_pool_dir(task, pool=pool)
    for folder in (out, kd_gym_home() / "logits"):  # fail at the door, not after minutes of fine-tuning
        ensure_writable(folder)
    base = Path(base) if base else minilm_path()
    started = time.perf_counter()
    log = _Log(started)
    reserved = teacher_rows(task, seed)
    log(f"task {task_name!r}: {len(task.splits['train']):,} train rows, {len(reserved):,} of them for the teachers")
    silos, silo_info = silo_labels(task, reserved, seed=seed, encoder=SentenceEncoder(base, device=device,
                                                                                   precision=precision))
    how = f"column {silo_info['column']!r}" if silo_info["kind"] == "column" else f"{silo_info['k']} k-means clusters"
    log(f"silos ({how}): " + ", ".join(f"{name} {int((silos[reserved] == name).sum()):,}" for name in silo_info["names"]))
    custom = recipes is not None
    recipes = recipes or pool_recipes(pool, silo_info["names"])
    trained_rows: set[int] = set()
    rows_per_teacher = []
    for k, recipe in enumerate(tqdm(recipes, desc="teachers", unit="teacher")):
        folder = out / recipe.name
        indices = _recipe_indices(recipe, reserved, silos, seed + k)
        trained_rows.update(indices.tolist())
        rows_per_teacher.append(len(indices))
        if not force and (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
            log(f"teacher {k + 1}/{len(recipes)} {recipe.name}: already built, kept")
            continue
        log(f"teacher {k + 1}/{len(recipes)} {recipe.name}: {recipe_words(recipe, len(indices))} ...")
        _train_teacher(recipe, task, indices, folder, base, seed + k, device, precision)
        log(f"teacher {k + 1}/{len(recipes)} {recipe.name}: trained")
    trained_at = time.perf_counter()
    log(f"the teachers' logits on dev ({len(task.splits['dev']):,} rows), test ({len(task.splits['test']):,}) and the "
        f"student's train rows ({len(task.splits['train']) - len(reserved):,}) ...")
    hashes = task.row_hashes("train")  # all reserved rows count as seen, so the student's rows stay teacher-free
    seen = sorted({hashes[i] for i in reserved})
    (out / TRAINING_ROWS_FILE).write_text("\n".join(seen) + "\n")
    # the teacher rows' logits are skipped (NaN): no student reads them (TeacherPool.from_manifest does the same)
    teachers = TeacherPool([TeacherSpec(str(out / r.name), name=r.name) for r in recipes], device=device,
                           precision=precision, skip_rows=seen)
    teachers.check_labels(task)
    dev_metrics, test_metrics = teachers.evaluate(task, "dev"), teachers.evaluate(task, "test")
    teachers.logits(task, "train")  # cache the split the environment samples from
    manifest = {
        "task": task_name,
        "pool": "custom" if custom else pool,
        "seed": seed,
        "task_kwargs": task_kwargs or {},
        "task_fingerprint": task.content_fingerprint(),
        "folder": str(out),
        "teacher_rows": len(reserved),
        "training_rows": len(trained_rows),
        "base": str(base),
        "teachers": [
            {"name": r.name, "folder": r.name, "recipe": asdict(r), "rows": rows_per_teacher[k],
             "dev": dev_metrics[k], "test": test_metrics[k]}
            for k, r in enumerate(recipes)
        ],
        "dev_disagreement": teachers.disagreement(task, "dev").round(4).tolist(),
        "silos": {**silo_info, "teacher_rows": {name: int((silos[reserved] == name).sum())
                                                  for name in silo_info["names"]}},
        "build_seconds": round(time.perf_counter() - started, 1),
        "train_seconds": round(trained_at - started, 1),  # fine-tuning (and silos); the rest is logits
    }
    (out / "pool.json").write_text(json.dumps(manifest, indent=2))
    manifest["dev_by_silo"] = silo_accuracy(out, task, teachers, "dev")
    (out / "pool.json").write_text(json.dumps(manifest, indent=2))
    log(f"pool written to {out}")
    return manifest


class _Log:
    """Plain progress lines with the time since the build started (``[  95 s] ...``), above any progress bar, so
    that a build in CI or in a log file says where it is when progress bars are off (``TQDM_DISABLE=1``)."""

    def __init__(self, started: float) -> None:
        self.started = started

    def __call__(self, message: str) -> None:
        tqdm.write(f"[{time.perf_counter() - self.started:6.0f} s] {message}")


def recipe_updates(recipe: TeacherRecipe, rows: int, batch_size: int = 32) -> int:
    """The fine-tuning updates of ``recipe`` on ``rows`` rows (:func:`finetune_classifier`: one epoch, at least
    ``min_steps``)."""
    return max(math.ceil(rows / batch_size), recipe.min_steps)


def recipe_words(recipe: TeacherRecipe, rows: int) -> str:
    if recipe.kind == "tfidf":
        return f"TF-IDF + logistic regression on {rows:,} rows"
    return f"fine-tuning {recipe.num_layers} MiniLM layer(s) on {rows:,} rows, {recipe_updates(recipe, rows)} updates"

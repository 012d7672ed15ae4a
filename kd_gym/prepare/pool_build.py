"""Build the default teacher pool of a task (``kd-gym teachers build``).

The pool is complementary on purpose, so that choosing among its teachers per instance matters: two generalists
fine-tuned from the first layers of the packaged MiniLM (a 3-layer one on every teacher row, a 1-layer one on
1,000), and
one TF-IDF + logistic-regression specialist per tweet topic, trained on that topic's rows only. Teachers train only
on the teacher rows: a seeded :data:`TEACHER_SHARE` of the train split; the student learns from the other train
rows (listed by exclusion in ``training_rows.txt``), so teacher rows, student rows, dev and test are disjoint. The
whole build takes a few minutes on a 2-core CPU.
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

from kd_gym.defaults import TRAINING_ROWS_FILE, default_pool_dir, minilm_path
from kd_gym.prepare.cache import kd_gym_home
from kd_gym.prepare.inference import autocast, autocast_dtype, resolve_device
from kd_gym.tasks import Task, load_task
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
    :param topics: restrict the rows to these tweet topics (None: all topics); a task without a ``topic`` column
        uses a random slice of the same size instead.
    :param lr: minilm: peak learning rate.
    :param c: tfidf: inverse regularisation strength.
    """

    name: str
    kind: str = "minilm"
    num_layers: int = 6
    examples: int | None = None
    topics: tuple[str, ...] | None = None
    lr: float = 1e-4
    c: float = 1.0


TEACHER_SHARE = 0.4  # share of the train rows reserved for teachers; the student learns from the rest
# Shallow models need larger learning rates to move in one short epoch (measured on a dev sample: a 2-layer
# teacher reaches 51% at 1e-4 and 69% at 5e-4).
DEFAULT_RECIPES: tuple[TeacherRecipe, ...] = (
    TeacherRecipe("minilm-l3", num_layers=3, examples=None, lr=3e-4),  # every teacher row (11,918 on tweets)
    TeacherRecipe("minilm-l1", num_layers=1, examples=1000, lr=1e-3),
    *(TeacherRecipe(f"tfidf-{topic}", kind="tfidf", topics=(topic,))
      for topic in ("airline", "deflategate", "apple", "self-driving", "other")),
)


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
):
    """Fine-tune a sequence classifier from ``base`` for one epoch on train instances ``indices``.

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
    order = np.random.default_rng(seed).permutation(indices)
    steps = math.ceil(len(order) / batch_size)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    schedule = get_linear_schedule_with_warmup(optimizer, num_warmup_steps=max(1, steps // 10), num_training_steps=steps)
    for start in tqdm(range(0, len(order), batch_size), desc=desc, unit="batch", leave=False):
        idx = order[start : start + batch_size]
        batch = tokenizer(
            [texts[i] for i in idx], [pairs[i] for i in idx] if pairs is not None else None,
            truncation=True, max_length=max_length, padding=True, return_tensors="pt",
        ).to(dev)
        with autocast(dev, dtype):
            loss = model(**batch, labels=torch.as_tensor(labels[idx], device=dev)).loss
        loss.backward()
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
                              "folder (it holds teachers and cached logits) or pass --out") from error


def teacher_rows(task: Task, seed: int, share: float = TEACHER_SHARE) -> np.ndarray:
    """The train rows reserved for teachers: a seeded ``share`` of the train split, sorted."""
    n = len(task.splits["train"])
    return np.sort(np.random.default_rng(seed).permutation(n)[: round(share * n)])


def _recipe_indices(task: Task, recipe: TeacherRecipe, rows: np.ndarray, seed: int) -> np.ndarray:
    train = task.splits["train"]
    allowed = rows
    rng = np.random.default_rng(seed)
    if recipe.topics is not None and "topic" in train.column_names:
        topics = np.asarray(train["topic"])[rows]
        allowed = rows[np.isin(topics, recipe.topics)]
    elif recipe.topics is not None:
        allowed = rng.choice(rows, size=max(1, len(rows) // 5), replace=False)
        print(f"note: task {task.name!r} has no topic column; teacher {recipe.name!r} trains on a random fifth")
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
                                           device=device, precision=precision, desc=f"fine-tune {recipe.name}")
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)


def build_default_pool(
    task_name: str = "tweets",
    *,
    out_dir: str | Path | None = None,
    recipes: tuple[TeacherRecipe, ...] = DEFAULT_RECIPES,
    base: str | Path | None = None,
    seed: int = 0,
    force: bool = False,
    device: str = "auto",
    precision: str = "auto",
    task_kwargs: dict | None = None,
) -> dict:
    """Fine-tune the default teachers, cache their logits on every split, and write ``pool.json``.

    Teachers already built (their folder holds weights) are kept unless ``force``.
    :param task_kwargs: keywords of :func:`~kd_gym.tasks.load_task` (:class:`~kd_gym.tasks.TaskOptions`).
    :return: the manifest: per teacher its folder, recipe, dev and test metrics; the dev disagreement matrix.
    """
    task = load_task(task_name, seed=seed, **(task_kwargs or {}))
    out = Path(out_dir) if out_dir else default_pool_dir(task)
    for folder in (out, kd_gym_home() / "logits"):  # fail at the door, not after minutes of fine-tuning
        ensure_writable(folder)
    base = Path(base) if base else minilm_path()
    started = time.perf_counter()
    reserved = teacher_rows(task, seed)
    trained_rows: set[int] = set()
    rows_per_teacher = []
    for k, recipe in enumerate(tqdm(recipes, desc="teachers", unit="teacher")):
        folder = out / recipe.name
        indices = _recipe_indices(task, recipe, reserved, seed + k)
        trained_rows.update(indices.tolist())
        rows_per_teacher.append(len(indices))
        if not force and (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
            continue
        _train_teacher(recipe, task, indices, folder, base, seed + k, device, precision)
    pool = TeacherPool([TeacherSpec(str(out / r.name), name=r.name) for r in recipes], device=device, precision=precision)
    pool.check_labels(task)
    dev_metrics, test_metrics = pool.evaluate(task, "dev"), pool.evaluate(task, "test")
    pool.logits(task, "train")  # cache the split the environment samples from
    hashes = task.row_hashes("train")  # all reserved rows count as seen, so the student's rows stay teacher-free
    (out / TRAINING_ROWS_FILE).write_text("\n".join(sorted(hashes[i] for i in reserved)) + "\n")
    manifest = {
        "task": task_name,
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
        "dev_disagreement": pool.disagreement(task, "dev").round(4).tolist(),
        "build_seconds": round(time.perf_counter() - started, 1),
    }
    (out / "pool.json").write_text(json.dumps(manifest, indent=2))
    return manifest


def format_manifest(manifest: dict) -> str:
    """A plain-text table of the pool: each teacher's dev/test metric and the dev disagreement matrix."""
    names = [t["name"] for t in manifest["teachers"]]
    width = max(len(n) for n in names) + 2
    lines = [f"{'teacher':<{width}}{'kind':>10}{'rows':>8}{'dev acc':>9}{'test acc':>10}"]
    for t in manifest["teachers"]:
        r = t["recipe"]
        kind = f"{r.get('kind', 'minilm')}" + (f"-l{r['num_layers']}" if r.get("kind", "minilm") == "minilm" else "")
        lines.append(f"{t['name']:<{width}}{kind:>10}{t.get('rows', r.get('examples')) or '-':>8}"
                     f"{t['dev']['accuracy']:>9.4f}{t['test']['accuracy']:>10.4f}")
    lines.append("")
    lines.append("dev disagreement (share of instances where two teachers predict different labels)")
    lines.append(" " * width + "".join(f"{n[:12]:>14}" for n in names))
    for name, row in zip(names, manifest["dev_disagreement"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>14.3f}" for v in row))
    return "\n".join(lines)

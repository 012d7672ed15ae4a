"""How much does the env add to the training it wraps? One ``env.step`` against one plain PyTorch KD step.

Both loops train the same student architecture on the same batches of cached teacher logits, measured side by side
in one process (interleaved rounds, median of per-round means). The env's step includes building the observation
(features, logits to host), the update, and its reward: ``neg_ce`` (no dev evaluation) and ``dev_delta`` (a dev
evaluation on the fixed subset every ``reward_interval`` steps, amortised).

    python scripts/bench_step.py                 # lite and full env, default pool (run `kd-gym teachers build` first)
    python scripts/bench_step.py --envs lite --steps 400
    python scripts/bench_step.py --envs lite --threads 1 --dense   # also the paired reward and credit=True
    python scripts/bench_step.py --ngram-parts --threads 1          # where an n-gram student's KD step goes
    python scripts/bench_step.py --parts --threads 1                # where one lite env.step goes, part by part
    python scripts/bench_step.py --envs lite --threads 1 --batch-size 128   # the env's share at a larger batch
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from timing import time_calls  # scripts/timing.py

import kd_gym  # noqa: F401  (registers the env ids)
from agents.experiments.run import ENVS
from kd_gym.config import NGRAM_UPDATES, EnvConfig
from kd_gym.data import KDData, SplitTensors
from kd_gym.defaults import default_pool, minilm_path
from kd_gym.env_setup import build_student
from kd_gym.prepare.inference import autocast, autocast_dtype, resolve_device
from kd_gym.sparse import LazyAdamW
from kd_gym.sparse import clip_grad_norm_ as sparse_clip_grad_norm_
from kd_gym.student import fused_adamw


def build_data(student: str, config: EnvConfig) -> KDData:
    """The tensors both loops train on, from the task, the pool and the student's inputs (the cached files the env
    reads when it builds them itself)."""
    from kd_gym.prepare.cache import resolve_model_folder
    from kd_gym.prepare.embeddings import SentenceEncoder
    from kd_gym.prepare.tensors import build_full_data, build_lite_data
    from kd_gym.tasks import load_task
    from kd_gym.teachers import TeacherPool

    task = load_task(config.task, seed=config.split_seed)
    common = {"max_length": config.max_length, "device": config.device, "precision": config.precision}
    pool = TeacherPool(config.teachers, **common) if config.teachers else default_pool(task.name, **common)
    checkpoint = config.student_checkpoint or minilm_path()
    if student == "lite":
        ngrams = config.lite_student == "ngrams"
        # as the env: the n-gram student reads no embedding, which is computed only when the observation shows it
        encoder = SentenceEncoder(checkpoint, **common) if not ngrams or config.include_embedding else None
        data = build_lite_data(task, pool, encoder, ngram_buckets=config.ngram_buckets if ngrams else None)
    else:
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_folder(checkpoint))
        data = build_full_data(task, pool, tokenizer, config.max_length)
    # the student's rows, as the env takes them: a built pool's teacher rows have no logits (TeacherPool.skip_rows)
    student_rows = np.flatnonzero(~torch.isnan(data.splits["train"].teacher_logits).any(dim=(1, 2)).numpy())
    return KDData(data.task, data.teacher_names, {**data.splits, "train": data.splits["train"].select(student_rows)})


def plain_kd_loop(model: torch.nn.Module, split: SplitTensors, batches: list[np.ndarray], lr: float, alpha: float,
                  t: float, device: torch.device, dtype: torch.dtype | None):
    """A textbook KD loop: equal-weight teacher average, CE + T^2 KL, AdamW, the trainer's autocast; no env, no
    features, no host copies."""
    model = model.to(device).train()
    # the trainer's optimizer and clipping, so only the env's work differs (the sparse n-gram student: its lazy AdamW)
    # (fastText's SGD on the rows: the trainer clips the classifier alone)
    sparse, sgd = getattr(model, "sparse", False), getattr(model, "sgd_lr", None) is not None
    fused = {"fused": True} if fused_adamw(device) else {}
    row_sgd = (model.sgd_lr, model.sgd_steps) if sgd else None
    optimizer = (LazyAdamW(model.parameters(), lr=lr, weight_decay=0.01, row_sgd=row_sgd) if sparse
                 else torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01, **fused))
    clip = sparse_clip_grad_norm_ if sparse and not sgd else torch.nn.utils.clip_grad_norm_
    clipped = [p for name, p in model.named_parameters() if not (sgd and name == "embedding.weight")]

    names = getattr(model, "input_names", None)  # the inputs the student reads, as the trainer gathers them

    def run() -> float:
        started = time.perf_counter()
        for indices in batches:
            batch = split.batch(indices, names)
            with autocast(device, dtype):
                logits, _ = model(**batch["inputs"])
            logits = logits.float()
            teacher = F.softmax(batch["teacher_logits"] / t, -1).mean(1)
            kd = F.kl_div(F.log_softmax(logits / t, -1), teacher, reduction="batchmean") * t * t
            loss = alpha * F.cross_entropy(logits, batch["labels"]) + (1 - alpha) * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if sparse and not sgd:
                model.embedding.weight.grad._coalesced_(True)  # unique rows, one backward: as the trainer marks it
            clip(clipped, 1.0)
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / len(batches)

    return run


def env_loop(env: gym.Env, steps: int, device: torch.device):
    action = np.ones(env.action_space.shape, dtype=np.float32)

    def run() -> float:
        env.reset(seed=0)
        started = time.perf_counter()
        for _ in range(steps):
            env.step(action)
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / steps

    return run


def _ngram_step_parts(buckets: int, batch: int, length: int, steps: int) -> dict[str, float]:
    """ms per call of each part of one KD step of a dense n-gram student (AdamW over the whole table, as
    ``ngram_update="dense"``) with a ``buckets`` x 32 table."""
    from kd_gym.student import NgramStudent

    model = NgramStudent(buckets, 3, 32)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, fused=True)
    ids, labels = torch.randint(1, buckets, (batch, length)), torch.randint(0, 3, (batch,))

    def loss():
        return F.cross_entropy(model(ids)[0], labels)

    def backward():
        optimizer.zero_grad(set_to_none=True)
        loss().backward()

    def clip():
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)

    def step():
        backward()
        clip()
        optimizer.step()

    def ms(fn) -> float:
        for _ in range(30):
            fn()
        started = time.perf_counter()
        for _ in range(steps):
            fn()
        return (time.perf_counter() - started) / steps * 1e3

    step()
    return {"forward": ms(loss), "forward + backward": ms(backward), "clip_grad_norm_": ms(clip),
            "AdamW step": ms(optimizer.step), "whole KD step": ms(step)}


def ngram_parts(buckets_list=(16384, 1024), batch: int = 32, length: int = 40, steps: int = 300) -> None:
    """Print where one KD step of the n-gram student goes (forward, backward, clipping, AdamW), per table size."""
    for buckets in buckets_list:
        parts = _ngram_step_parts(buckets, batch, length, steps)
        print(f"n-gram student, {buckets} x 32 table: " + ", ".join(f"{k} {v:.2f} ms" for k, v in parts.items()))


def step_parts(config: EnvConfig, steps: int, reward: str = "neg_ce") -> dict[str, float]:
    """ms per step of each part of the lite ``env.step``, timed inside the loop (``perf_counter`` around the env's own
    methods, so every part pays the cache misses that the rest of the step causes, as it does in a run)."""
    env = gym.make(ENVS["lite"], episode_steps=10**9, reward=reward, device=config.device,
                   lite_student=config.lite_student, ngram_update=config.ngram_update,
                   batch_size=config.batch_size).unwrapped
    parts = {"the action's check (_validate_action)": (env, "_validate_action"),
             "gold credit (_gold_credit)": (env, "_gold_credit"),
             "the update (StudentTrainer.train_step)": (env.trainer, "train_step"),
             "the next batch and its forward pass (_load_batch)": (env, "_load_batch"),
             "the observation, loss parts to the host (_get_obs)": (env, "_get_obs"),
             "info (_get_info)": (env, "_get_info")}
    spent = dict.fromkeys(parts, 0.0)
    for label, (owner, name) in parts.items():
        time_calls(spent, label, owner, name)
    action = np.ones(env.action_space.shape, dtype=np.float32)
    env.reset(seed=0)
    for _ in range(steps // 4):  # warm-up
        env.step(action)
    spent.update(dict.fromkeys(parts, 0.0))
    started = time.perf_counter()
    for _ in range(steps):
        env.step(action)
    total = time.perf_counter() - started
    result = {label: value / steps * 1e3 for label, value in spent.items()}
    result["the rest of step(): the reward, bookkeeping"] = total / steps * 1e3 - sum(result.values())
    result["env.step, all of it"] = total / steps * 1e3
    return result


def measure(env_name: str, steps: int, rounds: int, config: EnvConfig,
            dense: bool = False) -> list[tuple[str, float, float]]:
    """(loop, ms per step, ratio to the plain step) for the plain loop and ``env.step`` under two rewards (and, with
    ``dense``, the paired reward and ``credit=True``).

    :param env_name: "lite" or "full".
    :param steps: steps per round of each loop.
    :param rounds: interleaved rounds; the median of the per-round means is reported.
    :param config: the env options (device, teachers, student checkpoint; the rest at their defaults).
    """
    student = "lite" if env_name == "lite" else "full"
    config = dataclasses.replace(config, student=student, include_embedding=student == "lite")  # each env's default
    data = build_data(student, config)
    device = resolve_device(config.device)
    dtype = autocast_dtype(device, config.precision) if device.type == "cuda" else None  # as the env's trainer
    train = data.to(device).splits["train"]
    rng = np.random.default_rng(0)
    batches = [rng.choice(len(train), config.batch_size, replace=False) for _ in range(steps)]
    model, lr = build_student(dataclasses.replace(config, student=student), data)  # the env's student
    loops = {"plain PyTorch KD step": plain_kd_loop(model, train, batches, lr, config.alpha, config.temperature,
                                                   device, dtype)}
    options = {"device": config.device, "student_checkpoint": config.student_checkpoint, "data": data,
               "lite_student": config.lite_student, "ngram_update": config.ngram_update,
               "include_embedding": config.include_embedding, "batch_size": config.batch_size}
    variants = [("reward=neg_ce", {"reward": "neg_ce"}), ("reward=dev_delta", {"reward": "dev_delta"})]
    if dense:  # the dense signals of the learning agents: a paired trial update, per-pair credit
        variants += [("reward=dev_loss_paired", {"reward": "dev_loss_paired"}),
                     ("neg_ce, credit=True", {"reward": "neg_ce", "credit": True})]
    for label, extra in variants:
        env = gym.make(ENVS[env_name], episode_steps=10**9, **extra, **options)
        loops[f"env.step ({label})"] = env_loop(env, steps, device)
    for run in loops.values():  # warm-up
        run()
    times = {name: [] for name in loops}
    for _ in range(rounds):
        for name, run in loops.items():
            times[name].append(run())
    plain = statistics.median(times["plain PyTorch KD step"])
    return [(name, statistics.median(values) * 1000, statistics.median(values) / plain)
            for name, values in times.items()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default="lite,full", help="comma-separated: lite, full")
    parser.add_argument("--steps", type=int, default=200, help="steps per round (lite; full uses a quarter)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--teachers", default=None, help="comma-separated teacher folders (default: the default pool)")
    parser.add_argument("--student-checkpoint", default=None, help="encoder folder (default: the packaged MiniLM)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--lite-student", default="ngrams", choices=("ngrams", "mlp"),
                        help="the lite student (default: ngrams, the env's default)")
    parser.add_argument("--ngram-update", default="sgd", choices=NGRAM_UPDATES,
                        help="the ngrams student's update: sgd (fastText's SGD on the table rows a batch touched; the "
                             "default), sparse (lazy AdamW on those rows) or dense (AdamW on the whole table)")
    parser.add_argument("--batch-size", type=int, default=EnvConfig.batch_size,
                        help="instances per step in both loops (the env's batch_size; default: the env's)")
    parser.add_argument("--dense", action="store_true",
                        help="also time the dense signals: reward=dev_loss_paired and credit=True")
    parser.add_argument("--parts", action="store_true",
                        help="only print where one lite env.step (reward neg_ce) goes, each part timed inside the loop")
    parser.add_argument("--ngram-parts", action="store_true",
                        help="only print where one KD step of a dense n-gram student goes, for two table sizes")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.ngram_parts:
        ngram_parts()
        return
    config = EnvConfig(device=args.device, student_checkpoint=args.student_checkpoint, lite_student=args.lite_student,
                       ngram_update=args.ngram_update, batch_size=args.batch_size,
                       teachers=args.teachers.split(",") if args.teachers else None).validate()
    if args.parts:
        print(f"lite env.step, reward neg_ce, {config.ngram_update} update, batch {config.batch_size}, "
              f"{max(args.steps, 1000)} steps, "
              f"{torch.get_num_threads()} thread(s)")
        for label, ms in step_parts(config, max(args.steps, 1000)).items():
            print(f"{label:<52}{ms:>8.3f} ms")
        return
    torch.manual_seed(0)
    device = resolve_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}")
    for env_name in args.envs.split(","):
        steps = args.steps if env_name == "lite" else max(10, args.steps // 4)
        update = f", {config.ngram_update} update" if config.lite_student == "ngrams" else ""
        kind = f" ({config.lite_student} student{update})" if env_name == "lite" else ""
        print(f"\n{env_name} env{kind}, batch {config.batch_size}, {steps} steps x {args.rounds} rounds")
        print(f"{'loop':<40}{'ms / step':>12}{'ratio':>8}")
        for loop, ms, ratio in measure(env_name, steps, args.rounds, config, args.dense):
            print(f"{loop:<40}{ms:>12.2f}{ratio:>8.2f}")


if __name__ == "__main__":
    main()

"""How much does the env add to the training it wraps? One ``env.step`` against one plain PyTorch KD step.

Both loops train the same student architecture on the same batches of cached teacher logits, measured side by side
in one process (interleaved rounds, median of per-round means). The env's step includes building the observation
(features, logits to host), the update, and its reward: ``neg_ce`` (no dev evaluation) and ``dev_delta`` (a dev
evaluation on the fixed subset every ``reward_interval`` steps, amortised).

    python scripts/bench_step.py                 # lite and full env, default pool (run `kd-gym teachers build` first)
    python scripts/bench_step.py --envs lite --steps 400
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F

import kd_gym
import kd_gym.inference
from agents.run import ENVS
from kd_gym.inference import autocast


def plain_kd_loop(model: torch.nn.Module, split, batches: list[np.ndarray], lr: float, alpha: float, t: float, device,
                  dtype):
    """A textbook KD loop: equal-weight teacher average, CE + T^2 KL, AdamW, the trainer's autocast; no env, no
    features, no host copies."""
    model = model.to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)

    def run() -> float:
        started = time.perf_counter()
        for indices in batches:
            batch = split.batch(indices)
            with autocast(device, dtype):
                logits, _ = model(**batch["inputs"])
            logits = logits.float()
            teacher = F.softmax(batch["teacher_logits"] / t, -1).mean(1)
            kd = F.kl_div(F.log_softmax(logits / t, -1), teacher, reduction="batchmean") * t * t
            loss = alpha * F.cross_entropy(logits, batch["labels"]) + (1 - alpha) * kd
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / len(batches)

    return run


def env_loop(env: gym.Env, steps: int):
    action = np.ones(env.action_space.shape, dtype=np.float32)

    def run() -> float:
        env.reset(seed=0)
        started = time.perf_counter()
        for _ in range(steps):
            env.step(action)
        if env.unwrapped.trainer.device.type == "cuda":
            torch.cuda.synchronize()
        return (time.perf_counter() - started) / steps

    return run


def measure(env_name: str, steps: int, rounds: int, options: dict) -> list[tuple[str, float, float]]:
    rows = []
    envs = {reward: gym.make(ENVS[env_name], reward=reward, episode_steps=10**9, **options)
            for reward in ("neg_ce", "dev_delta")}
    base = envs["neg_ce"].unwrapped
    trainer = base.trainer
    rng = np.random.default_rng(0)
    train = trainer.split("train")
    batches = [rng.choice(len(train), base.batch_size, replace=False) for _ in range(steps)]
    model = copy.deepcopy(trainer.model)
    loops = {"plain PyTorch KD step": plain_kd_loop(model, train, batches, trainer.lr, trainer.alpha,
                                                   trainer.temperature, trainer.device, trainer.dtype)}
    for reward, env in envs.items():
        loops[f"env.step (reward={reward})"] = env_loop(env, steps)
    for run in loops.values():  # warm-up
        run()
    times = {name: [] for name in loops}
    for _ in range(rounds):
        for name, run in loops.items():
            times[name].append(run())
    plain = statistics.median(times["plain PyTorch KD step"])
    for name, values in times.items():
        rows.append((name, statistics.median(values) * 1000, statistics.median(values) / plain))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--envs", default="lite,full", help="comma-separated: lite, full")
    parser.add_argument("--steps", type=int, default=200, help="steps per round (lite; full uses a quarter)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds; the median is reported")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--teachers", default=None, help="comma-separated teacher folders (default: the default pool)")
    parser.add_argument("--student-checkpoint", default=None, help="encoder folder (default: the packaged MiniLM)")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    options = {"device": args.device, "student_checkpoint": args.student_checkpoint}
    if args.teachers:
        options["teachers"] = args.teachers.split(",")
    torch.manual_seed(0)
    device = kd_gym.inference.resolve_device(args.device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}")
    for env_name in args.envs.split(","):
        steps = args.steps if env_name == "lite" else max(10, args.steps // 4)
        print(f"\n{env_name} env, batch 32, {steps} steps x {args.rounds} rounds")
        print(f"{'loop':<32}{'ms / step':>12}{'ratio':>8}")
        for loop, ms, ratio in measure(env_name, steps, args.rounds, options):
            print(f"{loop:<32}{ms:>12.2f}{ratio:>8.2f}")


if __name__ == "__main__":
    main()

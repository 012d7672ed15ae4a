"""Student steps per second of the vector env of lite students, against N single envs stepped in a loop.

For N in (1, 4, 16, 64): ``gym.make_vec("kd_gym/TeacherSelectionLite-v0", num_envs=N,
vectorization_mode="vector_entry_point")`` and N ``gym.make`` single envs stepped one after another (reset when
truncated), on the same data, with random weights actions and the default reward (``dev_delta``, a dev-subset
evaluation every ``reward_interval`` = 10 steps). Measured side by side in one process: interleaved rounds, median
of the per-round rates. A student step is one KD update of one student; a vector step makes N of them. On a machine
shared with other work, ``--clock cpu`` (this process's CPU time, with one thread) is steadier than wall time.

    python scripts/bench_vector.py                  # the default task and pool (built once from the cache)
    python scripts/bench_vector.py --tiny           # synthetic data of the default's sizes (D 384, K 7, C 3)
    python scripts/bench_vector.py --threads 1,2 --sizes 1,4,16,64 --steps 100 --rounds 3
    python scripts/bench_vector.py --tiny --threads 1 --clock cpu
    python scripts/bench_vector.py --profile --sizes 1,16 --threads 1   # where one vector step's time goes
    python scripts/bench_vector.py --learn --sizes 1,8 --threads 1      # the gold router learning over N students at once
    python scripts/bench_vector.py --learn --parts --sizes 8 --threads 1   # where the router's time goes, part by part
    python scripts/bench_vector.py --lite-student mlp                   # the MLP over sentence embeddings
    python scripts/bench_vector.py --device cuda --sizes 1,16,64,256 --threads 1   # on a GPU (the N = 256 target)

``--lite-student`` picks the student: ``ngrams`` (the default's, a 16,384 x 32 table) or ``mlp``; ``--ngram-update``
the n-gram student's update: ``sgd`` (the default: fastText's SGD on the rows a batch touched), ``sparse`` (lazy
AdamW on those rows) or ``dense`` (AdamW on the whole table).

With ``--learn``: the default REINFORCE (the gold-likelihood router) learning over N students at once
(``agent.learn_over`` on the vector env of N students: one batched student step and one router step per vector step)
against the same agent learning over one student (``agent.learn``), in student steps/s.
"""

from __future__ import annotations

import argparse
import statistics
import time

import datasets
import gymnasium as gym
import numpy as np
import torch
from timing import time_calls  # scripts/timing.py

import kd_gym  # noqa: F401  (registers the ids)
from kd_gym.config import NGRAM_UPDATES
from kd_gym.data import KDData, SplitTensors
from kd_gym.tasks import Task

LITE = "kd_gym/TeacherSelectionLite-v0"


def tiny_data(seed: int = 0, n_train: int = 4000, n_dev: int = 1000, dim: int = 384, teachers: int = 7,
              labels: int = 3, width: int = 48, buckets: int = 16384) -> KDData:
    """Synthetic data with the default's sizes: embeddings (N, 384) around one centre per class, n-gram ids
    (N, 48) in a table of 16,384 rows, 7 teachers of varying skill, 3 labels (timing does not depend on the
    values)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (labels, dim))

    def split(n: int) -> SplitTensors:
        gold = rng.integers(0, labels, n)
        logits = rng.normal(0.0, 1.0, (n, teachers, labels))
        logits[np.arange(n)[:, None], np.arange(teachers), gold[:, None]] += np.linspace(0.5, 4.0, teachers)
        ids = rng.integers(1, buckets, (n, width))
        ids[np.arange(width) >= rng.integers(3, width + 1, n)[:, None]] = 0  # padding after each row's length
        return SplitTensors({"embeddings": torch.tensor(centres[gold] + rng.normal(0.0, 1.0, (n, dim)),
                                                        dtype=torch.float32),
                             "ngram_ids": torch.tensor(ids, dtype=torch.int32)},
                            torch.tensor(gold), torch.tensor(rng.integers(5, 30, n)),
                            torch.tensor(logits, dtype=torch.float32))

    tables = {name: datasets.Dataset.from_dict({"text": ["unused"], "label": [0]}) for name in ("train", "dev", "test")}
    task = Task("synthetic", tables, [f"label{c}" for c in range(labels)], "accuracy")
    return KDData(task, [f"teacher{k}" for k in range(teachers)],
                  {"train": split(n_train), "dev": split(n_dev), "test": split(n_dev)})


def synchronised_clock() -> float:
    """Wall time once the GPU has finished its queued kernels (they run asynchronously)."""
    torch.cuda.synchronize()
    return time.perf_counter()


def default_data(lite_student: str) -> KDData:
    """The default lite env's data for ``lite_student`` (task, pool and the student's inputs read from the cache),
    built once: every env of the run gets it through ``data=``, which gives the default env's student rows, regime
    and dev subset again."""
    return gym.make(LITE, device="cpu", lite_student=lite_student).unwrapped.student_data


def vector_runner(num_envs: int, options: dict, steps: int, seed: int, clock):
    envs = gym.make_vec(LITE, num_envs=num_envs, vectorization_mode="vector_entry_point", **options)
    envs.reset(seed=seed)
    rng = np.random.default_rng(seed)
    shape = envs.action_space.shape

    def run() -> float:
        actions = rng.random((steps, *shape), dtype=np.float32)
        started = clock()
        for action in actions:
            envs.step(action)
        return num_envs * steps / (clock() - started)

    return run


def loop_runner(num_envs: int, options: dict, steps: int, seed: int, clock):
    envs = [gym.make(LITE, **options) for _ in range(num_envs)]
    for n, env in enumerate(envs):
        env.reset(seed=seed + n)
    rng = np.random.default_rng(seed)
    shape = (num_envs, *envs[0].action_space.shape)

    def run() -> float:
        actions = rng.random((steps, *shape), dtype=np.float32)
        started = clock()
        for action in actions:
            for env, weights in zip(envs, action):
                truncated = env.step(weights)[3]
                if truncated:
                    env.reset()
        return num_envs * steps / (clock() - started)

    return run


def learn_runner(num_envs: int, options: dict, steps: int, seed: int, clock):
    """REINFORCE (the router) learning: over one single env (``num_envs`` 0) or over a vector env of N students."""
    import agents

    env = gym.make(LITE, **options)
    envs = gym.make_vec(LITE, num_envs=num_envs, vectorization_mode="vector_entry_point", **options) if num_envs else None

    def run() -> float:
        agent = agents.make("gold-router", env, seed=seed)
        started = clock()
        if envs is None:
            agent.learn(steps)
            return steps / (clock() - started)
        agent.learn_over(envs, steps)
        return num_envs * steps / (clock() - started)

    return run


def measure_learning(sizes: list[int], options: dict, steps: int, rounds: int, clock) -> dict[int, float]:
    """Median student steps/s of REINFORCE learning over one student (key 0) and over N at once (key N),
    interleaved rounds after one warm-up round."""
    runners = {0: learn_runner(0, options, steps, 0, clock), **{n: learn_runner(n, options, steps, 0, clock)
                                                                for n in sizes}}
    return interleaved_medians(runners, rounds)


LEARN_PARTS = {"view": ("router", "view"), "standardisation": ("router", "observe"), "replay": ("router", "remember"),
               "gate + draw": ("agent", "_route"), "update": ("router", "update"), "env step": ("env", "step")}


def learn_parts(sizes: list[int], options: dict, steps: int) -> dict[int, dict[str, float]]:
    """ms per (vector) step of each part of the gold router's learning over one student (key 0) and over N at once:
    its methods timed inside the run (``perf_counter`` around each, so every part pays the cache misses the rest of
    the step causes), after a warm-up run; "the rest" is the loop's own work."""
    import agents

    result = {}
    for n in [0, *sizes]:
        env = gym.make(LITE, **options)
        envs = gym.make_vec(LITE, num_envs=n, vectorization_mode="vector_entry_point", **options) if n else None
        for _ in range(2):  # a warm-up run, then the timed one
            agent = agents.make("gold-router", env, seed=0)
            owners = {"router": agent.router, "agent": agent, "env": envs if n else env}
            spent = dict.fromkeys(LEARN_PARTS, 0.0)
            for label, (owner, name) in LEARN_PARTS.items():
                time_calls(spent, label, owners[owner], name)
            started = time.perf_counter()
            agent.learn_over(envs, steps) if n else agent.learn(steps)
            total = time.perf_counter() - started
        result[n] = {label: value / steps * 1e3 for label, value in spent.items()}
        result[n]["the rest"] = total / steps * 1e3 - sum(result[n].values())
        result[n]["all"] = total / steps * 1e3
    return result


def interleaved_medians(runners: dict, rounds: int) -> dict:
    """Run every runner once (warm-up), then ``rounds`` interleaved rounds; the median rate of each."""
    for run in runners.values():
        run()
    rates = {key: [] for key in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            rates[key].append(run())
    return {key: statistics.median(values) for key, values in rates.items()}


def measure(sizes: list[int], options: dict, steps: int, rounds: int, clock) -> dict[tuple[str, int], float]:
    """Median student steps/s of ("vector" | "loop", N) over interleaved rounds (after one warm-up round).

    :param clock: ``time.perf_counter`` (wall) or ``time.process_time`` (this process's CPU time).
    """
    runners = {}
    for n in sizes:
        runners["vector", n] = vector_runner(n, options, steps, 0, clock)
        runners["loop", n] = loop_runner(n, options, steps, 0, clock)
    return interleaved_medians(runners, rounds)


def profile_steps(sizes: list[int], options: dict, steps: int, top: int = 25) -> None:
    """Print where one vector step's time goes, per N: the wall time of a step, the self time of torch's operators
    (the rest is Python and numpy), the number of operators the env calls (top-level ones: an operator called
    inside another is counted once, as its caller) and the ``top`` operators by self time, per step."""
    from torch.profiler import ProfilerActivity, profile

    for n in sizes:
        envs = gym.make_vec(LITE, num_envs=n, vectorization_mode="vector_entry_point", **options)
        envs.reset(seed=0)
        actions = np.random.default_rng(0).random((2 * steps, *envs.action_space.shape), dtype=np.float32)
        for action in actions[:steps]:  # warm-up
            envs.step(action)
        started = time.perf_counter()
        for action in actions[:steps]:
            envs.step(action)
        wall = (time.perf_counter() - started) / steps * 1e3
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            for action in actions[steps:]:
                envs.step(action)

        def nested(event) -> bool:
            parent = event.cpu_parent
            while parent is not None and not parent.name.startswith("aten::"):
                parent = parent.cpu_parent
            return parent is not None

        calls = sum(1 for e in prof.events() if e.name.startswith("aten::") and not nested(e)) / steps
        table = sorted((e for e in prof.key_averages() if e.key.startswith("aten::")),
                       key=lambda e: -e.self_cpu_time_total)
        torch_ms = sum(e.self_cpu_time_total for e in table) / steps / 1e3
        print(f"N={n}: {wall:.2f} ms per vector step ({n / wall * 1e3:.0f} student steps/s); torch operators "
              f"{torch_ms:.2f} ms (self time under the profiler), {calls:.0f} calls per step")
        print(f"  {'operator':32} {'calls/step':>10} {'us/step':>9}")
        for event in table[:top]:
            print(f"  {event.key:32} {event.count / steps:>10.1f} {event.self_cpu_time_total / steps:>9.1f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiny", action="store_true", help="synthetic data of the default's sizes (no cache needed)")
    parser.add_argument("--sizes", default="1,4,16,64", help="comma-separated numbers of students N")
    parser.add_argument("--threads", default="1,2", help="comma-separated torch CPU thread counts")
    parser.add_argument("--steps", type=int, default=100, help="vector steps per round (N student steps each)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds after a warm-up; median reported")
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                        help="wall time, or this process's CPU time (steadier on a shared machine; one thread only)")
    parser.add_argument("--profile", action="store_true",
                        help="print where one vector step's time goes (torch.profiler operators per step) per N")
    parser.add_argument("--lite-student", choices=("ngrams", "mlp"), default="ngrams",
                        help="the student: ngrams (the default env's) or mlp (over sentence embeddings)")
    parser.add_argument("--ngram-update", choices=NGRAM_UPDATES, default="sgd",
                        help="the ngrams student's update: sgd (fastText's SGD on the rows a batch touched; the default), "
                             "sparse (lazy AdamW on those rows) or dense (AdamW on the whole table)")
    parser.add_argument("--learn", action="store_true",
                        help="the gold router learning over N students at once against over one (student steps/s)")
    parser.add_argument("--parts", action="store_true",
                        help="with --learn: where the router's time goes (view, standardisation, replay, gate and draw, "
                             "update, the env's step), ms per vector step over one student and over each N")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the students train (cuda: the clock waits for the GPU before each reading)")
    args = parser.parse_args()
    if args.parts and not args.learn:
        parser.error("--parts times the gold router's learning: use it with --learn")
    sizes = [int(n) for n in args.sizes.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    if args.clock == "cpu" and thread_counts != [1]:
        parser.error("--clock cpu counts the CPU time of every thread; use it with --threads 1")
    if args.device == "cuda" and (args.clock == "cpu" or not torch.cuda.is_available()):
        parser.error("--device cuda needs a CUDA GPU torch can see, and the wall clock")
    clock = synchronised_clock if args.device == "cuda" else (
        time.perf_counter if args.clock == "wall" else time.process_time)
    where = torch.cuda.get_device_name() if args.device == "cuda" else "CPU"
    data = tiny_data() if args.tiny else default_data(args.lite_student)
    if args.tiny and args.lite_student == "mlp":  # the mlp student reads every input it is given
        data.splits = {name: SplitTensors({"embeddings": split.inputs["embeddings"]}, split.labels, split.lengths,
                                          split.teacher_logits) for name, split in data.splits.items()}
    options = {"data": data, "lite_student": args.lite_student, "ngram_update": args.ngram_update, "device": args.device,
               "episode_steps": 200}
    if args.profile:
        torch.set_num_threads(thread_counts[0])
        print(f"torch {torch.__version__}, {thread_counts[0]} thread(s), {args.steps} steps profiled per N")
        profile_steps(sizes, options, args.steps)
        return
    train = data.splits["train"]
    if args.learn and args.parts:
        torch.set_num_threads(thread_counts[0])
        print(f"gold-router learning, {args.steps} vector steps, {thread_counts[0]} thread(s): ms per vector step")
        parts = learn_parts(sizes, {**options, "episode_steps": args.steps}, args.steps)
        labels = [*LEARN_PARTS, "the rest", "all"]
        print(f"{'part':<16}" + "".join(f"{'one' if n == 0 else f'N = {n}':>10}" for n in parts))
        for label in labels:
            print(f"{label:<16}" + "".join(f"{parts[n][label]:>10.3f}" for n in parts))
        return
    if args.learn:
        print(f"torch {torch.__version__}, {where}; {args.lite_student} student; gold-router (REINFORCE on gold "
              f"credit) learning, {args.steps} vector steps x "
              f"{args.rounds} rounds, {args.clock} clock; data: {'synthetic' if args.tiny else 'default'}")
        print(f"{'threads':>7} {'N':>4} {'student steps/s':>16} {'x one student':>14}")
        for threads in thread_counts:
            torch.set_num_threads(threads)
            rates = measure_learning(sizes, {**options, "episode_steps": args.steps}, args.steps, args.rounds, clock)
            print(f"{threads:>7} {'one':>4} {rates[0]:>16.0f} {1.0:>14.2f}")
            for n in sizes:
                print(f"{threads:>7} {n:>4} {rates[n]:>16.0f} {rates[n] / rates[0]:>14.2f}", flush=True)
        return
    student = f"{args.lite_student} ({args.ngram_update})" if args.lite_student == "ngrams" else args.lite_student
    print(f"torch {torch.__version__}, {where}; {student} student; data: {'synthetic' if args.tiny else 'default'} "
          f"({len(train)} train rows, D {train.inputs['embeddings'].shape[1]}, K {data.num_teachers}, "
          f"C {data.num_labels}); batch 32, reward dev_delta every 10 steps, {args.steps} steps x {args.rounds} rounds, "
          f"{args.clock} clock")
    ratio = f"x N={sizes[0]}"
    print(f"{'threads':>7} {'N':>4} {'vector steps/s':>15} {ratio:>7} {'loop steps/s':>13} {'vector/loop':>12}")
    for threads in thread_counts:
        torch.set_num_threads(threads)
        rates = measure(sizes, options, args.steps, args.rounds, clock)
        base = rates["vector", sizes[0]]
        for n in sizes:
            vector, loop = rates["vector", n], rates["loop", n]
            print(f"{threads:>7} {n:>4} {vector:>15.0f} {vector / base:>7.2f} {loop:>13.0f} {vector / loop:>12.2f}",
                  flush=True)


if __name__ == "__main__":
    main()

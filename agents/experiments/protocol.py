"""The two protocols of a run: how an agent's result is measured.

- ``online`` (the paper's joint training): the agent learns while it trains one student for ``steps`` updates;
  that student is the result.
- ``train-eval`` (how RL benchmarks measure a policy): the agent learns over ``train_students`` students (episodes
  of ``steps`` updates, a fresh student each), then its frozen policy (``predict(obs, deterministic=True)``) trains
  ``eval_students`` fresh students on seeds it never trained on; their mean dev and test metrics are the result and
  the student steps spent learning are reported beside it. Agents that learn nothing (``Agent.learns`` False: the
  fixed weightings) skip the training phase.

Evaluation seeds are disjoint from every training seed: bench seed ``s`` trains on the env seeded with ``s`` (its
first reset; later resets continue that stream) and evaluates on :func:`eval_seeds` ``(s, M)``, the same for every
agent, so a paired comparison between agents compares the same evaluation students.
"""

from __future__ import annotations

import dataclasses
import functools
import weakref
from typing import Any

import gymnasium as gym
import numpy as np

from agents.experiments.monitor import DevMetrics
from kd_gym.prepare.inference import resolve_device
from kd_gym.rewards import REWARDS
from kd_gym.vector import SUPPORTED_REWARDS, TeacherSelectionVectorEnv

PROTOCOLS = ("online", "train-eval")
LITE_ID = "kd_gym/TeacherSelectionLite-v0"
REWARD_NAMES = {cls: name for name, cls in REWARDS.items()}
EVAL_SEED_BASE = 1_000_000
"""evaluation seeds start here (far from the small seeds of training runs)"""


def eval_seeds(seed: int, eval_students: int) -> list[int]:
    """The env seeds of the ``eval_students`` evaluation students of run seed ``seed`` (the same for every agent)."""
    return [EVAL_SEED_BASE + 1000 * seed + j for j in range(eval_students)]


def check_protocol(protocol: str, train_students: int, eval_students: int) -> None:
    """``ValueError`` naming the bad value and what is valid."""
    if protocol not in PROTOCOLS:
        raise ValueError(f"protocol={protocol!r} is not one of {list(PROTOCOLS)}")
    for name, value in (("train_students", train_students), ("eval_students", eval_students)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is invalid; use an integer >= 1 (students)")
    if eval_students > 1000:
        raise ValueError(f"eval_students={eval_students} is more than 1000, the evaluation seeds of one run seed")


def evaluate_policy(agent, monitors: list[gym.Wrapper], steps: int, seeds: list[int]) -> list[dict[str, Any]]:
    """Train one fresh student per seed with the agent's frozen, deterministic policy; nothing is learned.

    The students are trained at once in one vector env of lite students
    (:class:`~kd_gym.vector.TeacherSelectionVectorEnv`) where that gives each student what the single env gives it
    (:func:`why_not_at_once` says when it does not), otherwise one after another. The results are the same.

    :param agent: an :class:`agents.Agent` built on the env the monitors wrap.
    :param monitors: one :class:`~agents.experiments.monitor.TrainingMonitor` per seed around that env (each records its
        student's dev curve).
    :param steps: student updates per student (the env's ``episode_steps``).
    :param seeds: the env seed of each student's reset.
    :return: per student ``{"seed", "dev_metric", "test_metric", "student"}`` after its last update; ``student``: its
        weights (what ``env.save_student`` writes).
    """
    if why_not_at_once(agent, monitors, steps) is None:
        return _evaluate_at_once(agent, _vector_env(monitors[0].unwrapped, len(seeds)), monitors, seeds)
    return _evaluate_one_by_one(agent, monitors, steps, seeds)


def _evaluate_one_by_one(agent, monitors: list[gym.Wrapper], steps: int, seeds: list[int]) -> list[dict[str, Any]]:
    """:func:`evaluate_policy` with each student trained in turn by the single env the monitors wrap."""
    results = []
    for monitor, seed in zip(monitors, seeds):
        obs, _ = monitor.reset(seed=seed)
        for _ in range(steps):
            obs, _, terminated, truncated, _ = monitor.step(agent.predict(obs, deterministic=True))
            if terminated:
                break
        env = monitor.unwrapped
        weights = {k.removeprefix("model."): v for k, v in env.student_state_dict().items() if k.startswith("model.")}
        results.append({"seed": seed, "dev_metric": env.evaluate("dev")["metric"],
                        "test_metric": env.evaluate("test")["metric"], "student": weights})
    return results


def why_not_at_once(agent, monitors: list[gym.Wrapper], steps: int) -> str | None:
    """Why the evaluation students must be trained one after another; None when one vector env of lite students
    trains them at once with each student's results bit-identical to the single env's: its weights, metrics and dev
    curve (the vector env reduces the batch's loss parts ``ce`` and ``kd`` in another order: the monitors' records
    ``train/ce`` and ``train/kd`` may differ by float32 rounding, ~1e-7).

    One after another (the reason in brackets) for:

    - an agent whose ``pure_predict`` is False (its action could depend on the order of calls or read the env);
    - ``steps`` other than the env's ``episode_steps`` (the vector env starts a new episode after the last one);
    - a monitor that keeps its student (only the single env gives the trainer's full state);
    - the full student, ``credit=True`` or a reward the vector env does not compute
      (:data:`kd_gym.vector.SUPPORTED_REWARDS`);
    - a GPU or bf16 (batched products may take other kernels than single ones: identity is checked on a CPU in fp32).
    """
    config = monitors[0].unwrapped.config
    if not getattr(agent, "pure_predict", False):
        return f"agent {agent.name!r} has pure_predict False"
    if steps != config.episode_steps:
        return f"steps={steps} is not the env's episode_steps={config.episode_steps}"
    if any(monitor.keep_student for monitor in monitors):
        return "a monitor keeps its student (keep_student=True)"
    unsupported = why_no_vector_env(config)
    if unsupported is not None:
        return unsupported
    if resolve_device(config.device).type != "cpu" or config.precision == "bf16":
        return f"device={config.device!r}, precision={config.precision!r}: identity is checked on a CPU in fp32"
    return None


def why_no_vector_env(config) -> str | None:
    """Why the vector env of lite students cannot run the env options ``config`` (an EnvConfig); None if it can."""
    reward = config.reward if isinstance(config.reward, str) else REWARD_NAMES.get(type(config.reward))
    if config.student != "lite" or config.credit or reward not in SUPPORTED_REWARDS:
        return f"the vector env does not support student={config.student!r}, credit={config.credit}, reward={reward!r}"
    return None


def learn_phase(agent, env: gym.Env, steps: int, train_students: int, progress=None) -> str:
    """The train-eval protocol's training phase: the agent learns over ``train_students`` students of ``steps``
    updates each. All at once (:meth:`agents.Agent.learn_over`, one vector env of lite students: one batched student
    step and one policy update per vector step) where the agent and the env options allow it, else one student after
    another (``agent.learn(train_students * steps)``). Either way the same command gives the same result; the two
    ways give different ones (the policy learns from the students in another order).

    :param env: the (wrapped) single env the agent was built on; :param progress: a tqdm bar to advance, or None.
    :return: how it learned: ``"N students at once"`` or ``"one student at a time (<why>)"``.
    """
    reason = agent.why_not_learn_over() or why_no_vector_env(env.unwrapped.config)
    if reason is None and steps != env.unwrapped.config.episode_steps:
        reason = f"steps={steps} is not the env's episode_steps={env.unwrapped.config.episode_steps}"
    if reason is not None:
        agent.learn(train_students * steps)
        return f"one student at a time ({reason})"
    # the callback's locals may say how many student steps a call stands for (an agent with its own population)
    tick = (lambda local: progress.update(local.get("student_steps_done", train_students))  # noqa: E731
            if progress is not None else None)
    agent.learn_over(_vector_env(env.unwrapped, train_students), steps, callback=tick)
    return f"{train_students} students at once"


_VECTOR_ENVS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
"""single env -> {number of students: its vector env}: built once (seconds), reset for every evaluation"""


def _vector_env(env: gym.Env, num_envs: int) -> TeacherSelectionVectorEnv:
    """The vector env of ``num_envs`` lite students with the options of the (unwrapped) single env ``env``."""
    built = _VECTOR_ENVS.setdefault(env, {})
    if num_envs not in built:
        options = {f.name: getattr(env.config, f.name) for f in dataclasses.fields(env.config)}
        built[num_envs] = gym.make_vec(LITE_ID, num_envs=num_envs, vectorization_mode="vector_entry_point", **options)
    return built[num_envs]


def _evaluate_at_once(agent, envs: TeacherSelectionVectorEnv, monitors: list[gym.Wrapper],
                      seeds: list[int]) -> list[dict[str, Any]]:
    """:func:`evaluate_policy` with the N = ``len(seeds)`` students as the sub-envs of ``envs``: student j is
    sub-env j reset with ``seeds[j]``, acts with ``agent.predict`` on its own (B, ...) slice of the (N, B, ...)
    observation and is recorded by ``monitors[j]`` from its slice of the rewards and info."""
    n = len(seeds)
    obs, info = envs.reset(seed=list(seeds))
    dev = _dev_metrics_now(envs)
    for j, monitor in enumerate(monitors):
        monitor.observe_reset(_sub_info(info, j), dev=dev[j])
    for _ in range(envs.episode_steps):
        actions = np.stack([agent.predict({key: value[j] for key, value in obs.items()}, deterministic=True)
                            for j in range(n)])  # (N, B, K)
        obs, rewards, terminated, truncated, info = envs.step(actions)
        dev = _dev_metrics_now(envs)
        for j, monitor in enumerate(monitors):
            monitor.observe_step(float(rewards[j]), bool(terminated[j]), bool(truncated[j]), _sub_info(info, j),
                                 dev=dev[j])
    dev_metrics, test_metrics = envs.evaluate("dev"), envs.evaluate("test")
    return [{"seed": seed, "dev_metric": dev_metrics[j]["metric"], "test_metric": test_metrics[j]["metric"],
             "student": envs.student_state_dict(j)} for j, seed in enumerate(seeds)]


def _dev_metrics_now(envs: TeacherSelectionVectorEnv) -> list[DevMetrics]:
    """For each sub-env, a function giving its student's dev-subset metrics now; the first call measures all N
    students at once (``envs.evaluate("dev", subset=True)``), the others reuse that."""
    measured: list[list[dict[str, float]]] = []

    def student(j: int) -> dict[str, float]:
        if not measured:
            measured.append(envs.evaluate("dev", subset=True))
        return measured[0][j]

    return [functools.partial(student, j) for j in range(envs.num_envs)]


def _sub_info(info: dict[str, np.ndarray], j: int) -> dict[str, Any]:
    """Sub-env j's info as the single env gives it (Python numbers, (B, K) ``weights``), from the vector env's dict
    of (N, ...) arrays and ``_key`` masks."""
    sub = {}
    for key, values in info.items():
        if not key.startswith("_") and info[f"_{key}"][j]:
            sub[key] = values[j].item() if np.ndim(values[j]) == 0 else values[j]
    return sub


def summarize_eval(results: list[dict[str, Any]]) -> dict[str, float]:
    """Mean dev and test metrics over the evaluation students, and the test metric's std across them."""
    tests = np.array([r["test_metric"] for r in results])
    return {"dev_metric": float(np.mean([r["dev_metric"] for r in results])), "test_metric": float(tests.mean()),
            "eval_test_std": float(tests.std())}

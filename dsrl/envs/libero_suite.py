"""Training over several tasks of a LIBERO suite: one env per worker, the task in its observation.

Selected by `tasks` in the LIBERO env kwargs (the `libero` and `libero_pick_place` envs):

    --config.env.kwargs.suite=libero_spatial --config.env.kwargs.tasks=all   # or [0,1,4], 3
    --config.env.kwargs.task_sampling=per_worker    # (default) or per_episode

`tasks` replaces `task_id`. How the selected tasks are spread over the `num_envs` workers:
  per_worker   worker i runs task tasks[i % len(tasks)] for the whole run (round-robin), so
               every task needs a worker (num_envs >= len(tasks); a multiple keeps them balanced).
               No env is ever rebuilt, and evaluation episode k runs on worker k % num_envs:
               with eval_episodes a multiple of num_envs every task gets the same episodes.
  per_episode  every reset draws its task from the selected ones with the reset seed (RLinf's
               way), so any num_envs covers all tasks. A task switch rebuilds the worker's
               MuJoCo model (a few seconds; one model is kept per worker, as each costs ~1 GB).

What the agent and the base policy see (`LiberoSuiteEnv`): the task's own observation, with
  "state"              the agent's state followed by a one-hot of the task id over the WHOLE
                       suite (10 entries for libero_spatial, 90 for libero_90), so the meaning of
                       each entry does not depend on which tasks were selected;
  "observation/state"  the robot state alone, which the base policy reads (Pi0's LIBERO inputs
                       prefer it to "state");
  "prompt"             the task's language instruction: each env's prompt reaches Pi0 in the
                       batched query (a list of prompts, one per env);
  "task_id"            the task's index in the suite: evaluation reports success per task.

Why a one-hot of the task id conditions the agent (and not Pi0's pooled prefix feature): it is
exact and free (no extra Pi0 pass per query, no 2048-d input to the SAC networks), it reaches the
actor and the critic through the state path every learner already has (nothing changes in the
networks, the replay buffer layout or the checkpoint format), and the agent's image already
shows the scene. The prefix feature stays the real robot's option (`env.use_prefix_feature`).
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

# Imported for its side effect too: it quiets robosuite's import-time macro-file advice before
# any LIBERO import here.
from dsrl.envs import libero as _libero  # noqa: F401
from dsrl.envs.base import Env, Observation

SUITE_ENVS = ("libero", "libero_pick_place")  # env names whose kwargs may hold `tasks`
TASK_SAMPLING = ("per_worker", "per_episode")
TASK_ID_KEY = "task_id"
POLICY_STATE_KEY = "observation/state"  # the robot state for the base policy
_TASK_STREAM = 0x7A5C  # mixes the reset seed into the task draw, apart from the layout draw


@functools.cache
def task_languages(suite: str) -> tuple[str, ...]:
    """The language instruction of every task of `suite`, in task-id order (reads the benchmark's
    task list only; no simulator is started)."""
    from libero.libero import benchmark

    from dsrl.envs.libero import SUITES

    if suite not in SUITES:
        raise ValueError(f"Unknown LIBERO suite {suite!r}; choose one of {list(SUITES)}.")
    task_suite = benchmark.get_benchmark_dict()[suite]()
    return tuple(task_suite.get_task(i).language for i in range(task_suite.get_num_tasks()))


def resolve_tasks(suite: str, tasks: Any) -> tuple[int, ...]:
    """`tasks` ("all", one id, a list of ids or "0,1,4") -> the validated task ids, or a
    ValueError naming the suite's valid range."""
    num_tasks = len(task_languages(suite))
    valid = f"{suite} has {num_tasks} tasks (ids 0..{num_tasks - 1})"
    fix = "pass --config.env.kwargs.tasks=all, one id, or a list such as [0,1]"
    if isinstance(tasks, str):
        if tasks.strip().lower() == "all":
            return tuple(range(num_tasks))
        parts = [p.strip() for p in tasks.strip("()[] ").split(",") if p.strip()]
        if not all(p.lstrip("-").isdigit() for p in parts):
            raise ValueError(f"env.kwargs.tasks={tasks!r} is not a list of task ids; {fix}")
        tasks = [int(p) for p in parts]
    elif isinstance(tasks, int | np.integer) and not isinstance(tasks, bool):
        tasks = [int(tasks)]
    if not isinstance(tasks, Sequence) or not tasks:
        raise ValueError(f"env.kwargs.tasks={tasks!r} selects no task; {fix}")
    if not all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in tasks):
        raise ValueError(f"env.kwargs.tasks={list(tasks)!r} must be integer task ids; {fix}")
    ids = tuple(int(t) for t in tasks)
    bad = [t for t in ids if not 0 <= t < num_tasks]
    if bad:
        raise ValueError(f"env.kwargs.tasks: task id(s) {bad} out of range: {valid}; {fix}")
    repeated = sorted({t for t in ids if ids.count(t) > 1})
    if repeated:
        raise ValueError(
            f"env.kwargs.tasks lists task(s) {repeated} more than once; list each once"
        )
    return ids


def worker_env_kwargs(name: str, kwargs: Mapping[str, Any], num_envs: int) -> list[dict] | None:
    """Per-worker `LiberoSuiteEnv` kwargs for an env config whose kwargs hold `tasks` (None when
    they do not: a single-task run, unchanged). Errors name the fix before any worker starts."""
    if "tasks" not in kwargs and "task_sampling" not in kwargs:
        return None
    if name not in SUITE_ENVS:
        raise ValueError(
            f"env.kwargs.tasks / task_sampling select tasks of a LIBERO suite; the {name!r} env "
            f"has none (use env {' or '.join(SUITE_ENVS)}, or remove them)"
        )
    if "tasks" not in kwargs:
        raise ValueError("env.kwargs.task_sampling needs env.kwargs.tasks (e.g. tasks=all)")
    kwargs = dict(kwargs)
    sampling = kwargs.pop("task_sampling", "per_worker")
    if sampling not in TASK_SAMPLING:
        raise ValueError(
            f"env.kwargs.task_sampling must be one of {TASK_SAMPLING}, got {sampling!r}"
        )
    kwargs.pop("task_id", None)  # replaced by `tasks`
    suite = kwargs.pop("suite", "libero_90")
    tasks = resolve_tasks(suite, kwargs.pop("tasks"))
    if sampling == "per_worker" and num_envs < len(tasks):
        raise ValueError(
            f"task_sampling=per_worker gives every worker one task, but env.num_envs={num_envs} < "
            f"{len(tasks)} selected tasks: pass --num_envs {len(tasks)} (or a multiple), or "
            "--config.env.kwargs.task_sampling=per_episode"
        )
    if sampling == "per_episode":  # the same list everywhere: a seed draws the same task
        worker_tasks = [tasks] * num_envs
    else:
        worker_tasks = [(tasks[i % len(tasks)],) for i in range(num_envs)]
    resample = sampling == "per_episode"
    return [
        {"env": name, "suite": suite, "tasks": mine, "resample": resample, **kwargs}
        for mine in worker_tasks
    ]


def describe(name: str, kwargs: Mapping[str, Any], num_envs: int) -> list[str]:
    """Start-up lines naming the tasks behind the `task_<id>` metrics (none for one task)."""
    workers = worker_env_kwargs(name, kwargs, num_envs)
    if workers is None:
        return []
    suite = workers[0]["suite"]
    languages = task_languages(suite)
    tasks = sorted({t for w in workers for t in w["tasks"]})
    how = "drawn per episode" if workers[0]["resample"] else "one per worker"
    lines = [f"{suite}: {len(tasks)} task(s), {how}, over {num_envs} env worker(s)"]
    lines += [f"  task {t}: {languages[t]}" for t in tasks]
    return lines


class LiberoSuiteEnv(Env):
    """A LIBERO task of `suite` chosen among `tasks`, with the task in the observation (see the
    module docstring).

    Args:
      suite: a LIBERO suite. tasks: the task ids this env may run; the first is built now.
      resample: draw each episode's task from `tasks` with the reset seed (several tasks);
        False: run `tasks[0]` only (then `tasks` must hold exactly one id).
      env: the LIBERO env class by registry name ("libero" or "libero_pick_place").
      add_states: False drops the robot state from the agent's "state" (the reference's
        --add_states 0); the one-hot stays, so the agent still knows its task.
      **kwargs: the env's own kwargs (camera_size, init_state, max_episode_steps, seed, ...).
    """

    def __init__(
        self,
        suite: str = "libero_spatial",
        tasks: Sequence[int] = (0,),
        resample: bool = False,
        env: str = "libero",
        add_states: bool = True,
        **kwargs: Any,
    ):
        self.suite = suite
        self.tasks = resolve_tasks(suite, list(tasks))
        if not resample and len(self.tasks) != 1:
            raise ValueError(
                f"LiberoSuiteEnv runs one task unless resample=True, got tasks {self.tasks}"
            )
        self.resample = bool(resample)
        self.num_suite_tasks = len(task_languages(suite))
        self._env_name, self._add_states, self._kwargs = env, bool(add_states), dict(kwargs)
        self._rng = np.random.default_rng(kwargs.get("seed"))
        self._env: Env | None = None
        self.task_id: int | None = None
        self._switch(self.tasks[0])
        inner = self._env.spec
        obs_spec = dict(inner.observation_spec)
        state_dim = int(obs_spec["state"][0][0])
        obs_spec["state"] = ((state_dim + self.num_suite_tasks,), np.float32)
        self.spec = dataclasses.replace(
            inner,
            name=f"libero/{suite}/tasks_{'_'.join(map(str, self.tasks))}",
            observation_spec=obs_spec,
            prompt=None if self.resample else inner.prompt,
        )

    def _switch(self, task_id: int) -> None:
        """Runs `task_id` from the next reset on (rebuilding the env when the task changes; the
        old one is closed first so that a worker holds one MuJoCo model)."""
        if task_id == self.task_id:
            return
        from dsrl.envs.wrappers import make_agent_env

        if self._env is not None:
            self._env.close()
            self._env = None
        self._env = make_agent_env(
            self._env_name, self._add_states, suite=self.suite, task_id=task_id, **self._kwargs
        )
        self.task_id = task_id
        self._one_hot = np.zeros(self.num_suite_tasks, np.float32)
        self._one_hot[task_id] = 1.0

    def _conditioned(self, obs: Observation) -> Observation:
        obs = dict(obs)
        obs.setdefault(POLICY_STATE_KEY, obs["state"])  # set already without add_states
        obs["state"] = np.concatenate([np.asarray(obs["state"], np.float32), self._one_hot])
        obs[TASK_ID_KEY] = self.task_id
        return obs

    def task_for_seed(self, seed: int | None) -> int:
        """The task an episode reset with `seed` runs (resample: drawn from the seed)."""
        if not self.resample:
            return self.tasks[0]
        rng = self._rng if seed is None else np.random.default_rng([seed, _TASK_STREAM])
        return self.tasks[int(rng.integers(len(self.tasks)))]

    def reset(self, seed: int | None = None) -> Observation:
        self._switch(self.task_for_seed(seed))
        return self._conditioned(self._env.reset(seed))

    def step(self, action: np.ndarray, render: bool = True):
        obs, reward, terminated, truncated, info = self._env.step(action, render=render)
        return self._conditioned(obs), reward, terminated, truncated, info

    def render_current(self) -> Observation:
        return self._conditioned(self._env.render_current())

    def __getattr__(self, name: str) -> Any:  # check_success, sim, task_name, ...
        if name == "_env":  # not set yet (e.g. while unpickling): no recursion
            raise AttributeError(name)
        return getattr(self._env, name)

    def close(self) -> None:
        env, self._env = getattr(self, "_env", None), None
        if env is not None:
            env.close()

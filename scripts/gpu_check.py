"""The prepared GPU check: Pi0 speed and memory, learner speed, a short Pi0 loop; ONE JSON line.

    bash scripts/gpu_check.sh --bare --out DIR    # the lent GPU machine, offline (docs/gpu.md)
    bash scripts/gpu_check.sh                     # a GPU box: CUDA jax set-up, then this script
    python scripts/gpu_check.py                   # the same, environment already installed
    python scripts/gpu_check.py --small           # on CPU with the tiny Pi0, a few minutes
    python scripts/gpu_check.py --section pi0,learner --deadline_s 300

Sections, each in its own subprocess (a crash, a hang or an out-of-memory in one is recorded
under its name as "error" and the others still run; a section that overruns its share of the
global deadline is killed, keeping what it had reported):
  pi0      full-size Pi0 with random weights in bfloat16 (no checkpoint): `sample_actions` latency
           at batch 1, 16 noises on one prefix (`sample_actions_multi`) against one, then batch 8
           (10 flow steps; median of warm calls, compile time apart), peak device memory.
  learner  scripts/bench_learner.py --update_mode scan (the LIBERO-preset PixelSACLearner), its
           JSON folded in.
  loop     examples/launch_train_sim.py with the LIBERO preset (its learner, chunking and UTD) on
           the `demo_pi0` env (the demo task in LIBERO's observation layout: no simulator
           assets to carry), 8 env workers and the full-size random Pi0 (`--pi0_checkpoint
           random`): env steps/s and the wall-time split between env, Pi0, updates (the run's
           metrics.jsonl `time/*`), taken between an early and the last training row so that
           start-up and compilation fall outside it.
`--small` swaps in the tiny Pi0, a small learner batch and a shorter loop: every section runs
end to end on CPU (tests/test_gpu_check.py). The targets (issues 14, 22) are judged on a GPU only.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
SECTIONS = ("pi0", "learner", "loop")
# Share of the global deadline kept free for each section that has not run yet.
SHARES = {"pi0": 0.35, "learner": 0.2, "loop": 0.45}
TARGET_BATCH1_MS = 20.0  # Pi0 bf16, batch 1, 10 steps, H200 (issue 22; the floor is ~7 ms)
TARGET_MULTI16_RATIO = 2.0  # 16 noises on one prefix at most 2x one
LOG_TAIL_CHARS = 2000
LOOP_ENV = "demo_pi0"  # LIBERO-shaped demo task: the loop needs no simulator assets


# --------------------------------------------------------------------------------------------
# Settings of the two modes


def settings(small: bool) -> dict[str, Any]:
    """What each section runs with; `--small` is the CPU-sized variant of the same work."""
    if small:
        return {
            "platform": "cpu",
            "deadline_s": 600.0,
            "pi0_variant": "tiny",
            "pi0_repeats": 3,
            "multi_k": 16,
            "learner_args": "--batch_size 16 --image_size 32 --steps 4".split(),
            "num_envs": 2,
            "loop_rounds": 3,
            "loop_args": (
                "--update_block 4 --batch_size 16 --hidden_dims 16 --num_qs 2 "
                "--config.env.kwargs.policy_image_size=64"
            ).split(),
            "episode_steps": 10,
            "query_freq": 5,
            "utd": 1,
        }
    return {
        "platform": "cuda",
        "deadline_s": 420.0,  # the lent machine: one command <= 10 min, start-up and install apart
        "pi0_variant": "full",
        "pi0_repeats": 10,
        "multi_k": 16,
        "learner_args": ["--steps", "60"],
        "num_envs": 8,
        "loop_rounds": 4,
        "loop_args": [],
        "episode_steps": 60,
        "query_freq": 20,  # the LIBERO preset's
        "utd": 20,  # the LIBERO preset's multi_grad_step
    }


# --------------------------------------------------------------------------------------------
# Running one section as a subprocess


def _tail(path: Path, chars: int = LOG_TAIL_CHARS) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return ""
    return text[-chars:]


def _last_json_line(text: str) -> dict[str, Any] | None:
    """The last line of `text` that parses as a JSON object (sections print cumulative lines)."""
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                value = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(value, dict):
                return value
    return None


def run_section(cmd: list[str], env: dict[str, str], timeout_s: float, logdir: Path, name: str):
    """Runs `cmd` in its own process group with a wall-clock limit.

    Returns (last JSON object printed or None, error message or None, stderr tail, seconds)."""
    out_path, err_path = logdir / f"{name}.stdout", logdir / f"{name}.stderr"
    t0 = time.monotonic()
    with open(out_path, "wb") as out, open(err_path, "wb") as err:
        proc = subprocess.Popen(
            cmd, stdout=out, stderr=err, env=env, cwd=ROOT, start_new_session=True
        )
        error = None
        try:
            rc = proc.wait(timeout=max(timeout_s, 1.0))
            if rc != 0:
                error = f"exited with status {rc}"
                if rc < 0:
                    error += f" (signal {signal.Signals(-rc).name})"
        except subprocess.TimeoutExpired:
            error = f"killed at its time limit of {timeout_s:.0f} s (global --deadline_s)"
        _kill_group(proc)  # also whatever a crashed section left behind (env workers)
    seconds = time.monotonic() - t0
    result = _last_json_line(out_path.read_text(errors="replace"))
    return result, error, _tail(err_path), seconds


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGTERM the section's process group (its own session: env workers included, nothing
    else), SIGKILL what is left after 10 s. Returns at once when the group is already empty."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        give_up = time.monotonic() + 10.0
        while time.monotonic() < give_up:
            proc.poll()  # reap the leader: a zombie still counts as a member of the group
            try:
                os.killpg(proc.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.1)
        else:
            continue  # still there: next signal
        break
    proc.wait()


# --------------------------------------------------------------------------------------------
# Section: Pi0 (runs in a child process of this script: `--pi0_child`)


def pi0_child(args: argparse.Namespace) -> None:
    """Times the random-weight Pi0 in this process; prints a cumulative JSON line after each
    figure, so that a section killed at the deadline keeps what it measured."""
    import resource

    import jax
    import numpy as np

    from dsrl.base_policies.pi0 import model as pi0_model
    from dsrl.base_policies.pi0.random_init import random_model

    compile_events: list[float] = []

    def on_event(event: str, duration: float, **_):
        if event == "/jax/core/compile/backend_compile_duration":
            compile_events.append(duration)

    jax.monitoring.register_event_duration_secs_listener(on_event)
    try:
        device = jax.local_devices()[0]
    except Exception as e:
        raise RuntimeError(
            f"JAX could not start platform {args.platform!r} ({type(e).__name__}: {e}). On a GPU "
            "box: install the CUDA build with `DSRL_CUDA=12 bash scripts/setup_env.sh` and check "
            "that `nvidia-smi` sees the GPU; on CPU run with --small (or --platform cpu)."
        ) from e
    out: dict[str, Any] = {
        "backend": jax.default_backend(),
        "device_kind": device.device_kind,
        "jax_version": jax.__version__,
        "variant": args.pi0_variant,
        "dtype": "bfloat16",
        "num_steps": args.num_steps,
    }

    def emit():
        stats = device.memory_stats() or {}
        peak = stats.get("peak_bytes_in_use")
        out["peak_device_bytes"] = int(peak) if peak is not None else None
        out["peak_device_gib"] = round(peak / 2**30, 3) if peak is not None else None
        out["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
        print(json.dumps(out), flush=True)

    if args.platform == "cuda" and out["backend"] != "gpu":
        raise RuntimeError(f"asked for the GPU but JAX runs on {out['backend']!r}")
    t0 = time.perf_counter()
    model = random_model(args.pi0_variant, "bfloat16", seed=0)
    jax.block_until_ready(model.params)
    out["init_s"] = round(time.perf_counter() - t0, 4)
    leaves = jax.tree.leaves(model.params)
    out["param_count"] = int(sum(x.size for x in leaves))
    out["param_bytes"] = int(sum(x.nbytes for x in leaves))
    out["param_dtypes"] = sorted({str(x.dtype) for x in leaves})
    emit()

    config = model.config
    masked = (config.image_keys[-1],)  # LIBERO: two cameras, the right wrist masked
    rng = np.random.default_rng(0)

    def timed(fn) -> dict[str, float]:
        compile_events.clear()
        t = time.perf_counter()
        jax.block_until_ready(fn())
        first = time.perf_counter() - t
        compile_s = sum(compile_events)
        walls = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            jax.block_until_ready(fn())
            walls.append(time.perf_counter() - t)
        return {
            "ms": round(1000 * statistics.median(walls), 3),
            "min_ms": round(1000 * min(walls), 3),
            "first_call_s": round(first, 3),
            "compile_s": round(compile_s, 3),
        }

    def time_batch(batch: int) -> None:
        obs = pi0_model.fake_observation(
            config, batch, masked_cameras=masked, prompt_len=config.max_token_len
        )
        noise = rng.normal(size=(batch, *model.noise_shape)).astype(np.float32)
        obs, noise = jax.device_put((obs, noise))  # time the model, not the host transfer

        def sample():
            return model.sample_actions(None, obs, noise=noise, num_steps=args.num_steps)

        r = timed(sample)
        out[f"batch{batch}_ms"] = r["ms"]
        out[f"batch{batch}_min_ms"] = r["min_ms"]
        out[f"batch{batch}_first_call_s"] = r["first_call_s"]
        out[f"batch{batch}_compile_s"] = r["compile_s"]
        if batch > 1:
            out[f"batch{batch}_ms_per_chunk"] = round(r["ms"] / batch, 3)
        emit()

    def time_multi(k: int) -> None:
        obs1 = pi0_model.fake_observation(
            config, 1, masked_cameras=masked, prompt_len=config.max_token_len
        )
        noise_k = rng.normal(size=(1, k, *model.noise_shape)).astype(np.float32)
        obs1, noise_k = jax.device_put((obs1, noise_k))
        r = timed(lambda: model.sample_actions_multi(obs1, noise_k, num_steps=args.num_steps))
        out["multi_k"] = k
        out[f"multi{k}_ms"] = r["ms"]
        out[f"multi{k}_compile_s"] = r["compile_s"]
        # Against one noise: the batch-1 call (one prefix pass and one flow), timed before.
        out[f"multi{k}_vs_one"] = round(r["ms"] / out["batch1_ms"], 3)
        emit()

    # The two targets first: a section cut at its deadline keeps them.
    time_batch(1)
    time_multi(args.multi_k)
    time_batch(8)


def pi0_section(args, env, timeout_s, logdir) -> dict[str, Any]:
    cmd = [
        sys.executable, str(Path(__file__).resolve()), "--pi0_child",
        "--platform", args.platform, "--pi0_variant", args.pi0_variant,
        "--repeats", str(args.repeats), "--multi_k", str(args.multi_k),
        "--num_steps", str(args.num_steps),
    ]  # fmt: skip
    return _finish(run_section(cmd, env, timeout_s, logdir, "pi0"))


def _finish(outcome) -> dict[str, Any]:
    result, error, stderr_tail, seconds = outcome
    section = dict(result or {})
    section["section_s"] = round(seconds, 1)
    if error is None and result is None:
        error = "printed no JSON line"
    if error is not None:
        section["error"] = _with_reason(error, stderr_tail)
        section["log_tail"] = stderr_tail
    return section


def _with_reason(error: str, stderr_tail: str) -> str:
    """'exited with status 1' + the last line of the traceback or usage error, when there is one."""
    lines = [line.strip() for line in stderr_tail.splitlines() if line.strip()]
    if lines and not error.startswith("killed"):
        return f"{error}: {lines[-1][:500]}"
    return error


# --------------------------------------------------------------------------------------------
# Section: learner (scripts/bench_learner.py)


def learner_command(args) -> list[str]:
    cmd = [sys.executable, str(ROOT / "scripts" / "bench_learner.py"), "--update_mode", "scan"]
    return cmd + args.learner_args_list


def learner_section(args, env, timeout_s, logdir) -> dict[str, Any]:
    cmd = learner_command(args)
    section = _finish(run_section(cmd, env, timeout_s, logdir, "learner"))
    if "error" not in section and section.get("update_mode") != "scan":
        section["error"] = f"ran update_mode={section.get('update_mode')!r}, not the scan path"
    return section


# --------------------------------------------------------------------------------------------
# Section: a short loop with Pi0 (examples/launch_train_sim.py, LIBERO preset, demo_pi0 env)


def loop_plan(args) -> dict[str, int]:
    """Gradient-step budget for `rounds` collection rounds: each round runs one episode (of
    `episode_steps`) in every env, then its transitions x UTD gradient steps; updates start after
    the first round. One training row is logged per round."""
    queries = -(-args.episode_steps // args.query_freq)
    transitions = args.num_envs * queries
    grad_per_round = transitions * args.utd
    return {
        "transitions_per_round": transitions,
        "grad_steps_per_round": grad_per_round,
        "max_steps": grad_per_round * args.rounds,
        "start_online_updates": transitions - 1,
    }


def loop_command(args, runs: Path) -> list[str]:
    """The launcher's command line for the loop section (run dirs under `runs`)."""
    plan = loop_plan(args)
    cmd = [
        sys.executable, str(ROOT / "examples" / "launch_train_sim.py"),
        "--env", "libero", f"--config.env.name={LOOP_ENV}", "--num_envs", str(args.num_envs),
        "--pi0_checkpoint", "random", "--pi0_variant", args.pi0_variant,
        "--logdir", str(runs), "--no_progress", "--wandb_mode", "disabled",
        "--eval_episodes", "0", "--seed", "0",
        "--max_steps", str(plan["max_steps"]),
        "--start_online_updates", str(plan["start_online_updates"]),
        "--log_interval", str(plan["grad_steps_per_round"]),
        "--query_freq", str(args.query_freq), "--multi_grad_step", str(args.utd),
        f"--config.env_kwargs.max_episode_steps={args.episode_steps}",
    ]  # fmt: skip
    return cmd + args.loop_args_list


def loop_section(args, env, timeout_s, logdir) -> dict[str, Any]:
    plan = loop_plan(args)
    runs = logdir / "runs"
    cmd = loop_command(args, runs)
    result, error, stderr_tail, seconds = run_section(cmd, env, timeout_s, logdir, "loop")
    section: dict[str, Any] = {
        "num_envs": args.num_envs,
        "pi0_variant": args.pi0_variant,
        "episode_steps": args.episode_steps,
        "query_freq": args.query_freq,
        "utd": args.utd,
        **plan,
    }
    if error is not None:
        error = _with_reason(error, stderr_tail)
    rows = _training_rows(runs)
    section["training_rows"] = len(rows)
    try:
        section |= time_split(rows)
    except ValueError as e:
        error = error or str(e)
    section["section_s"] = round(seconds, 1)
    if error is not None:
        section["error"] = error
        section["log_tail"] = stderr_tail
    del result  # the launcher prints text, not JSON: its figures come from metrics.jsonl
    return section


def _training_rows(runs: Path) -> list[dict[str, Any]]:
    rows = []
    for path in sorted(runs.glob("*/metrics.jsonl")):
        for line in path.read_text(errors="replace").splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a line cut by a kill
            if isinstance(row, dict) and "time/total_s" in row and "env_steps" in row:
                rows.append(row)
    return rows


SPLIT = {"env": "env", "pi0": "base_policy", "update": "update", "agent": "agent", "io": "io"}


def time_split(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Env steps/s and the wall-time fractions: steady state between an early and the last
    training row, plus the whole run's (`run_*`). Rows come after each round's updates; the
    first round compiles Pi0 and the update, the second the actor's sampling (the first round
    explores with random latents), so with three rows or more the interval starts at the second."""
    if not rows:
        raise ValueError("the run logged no training row (metrics.jsonl has no time/* keys)")
    last = rows[-1]
    out: dict[str, Any] = {
        "env_steps": int(last["env_steps"]),
        "total_s": round(float(last["time/total_s"]), 2),
        "run_env_steps_per_s": round(last["env_steps"] / last["time/total_s"], 3),
    }
    for name, key in SPLIT.items():
        out[f"run_{name}_frac"] = round(float(last.get(f"time/{key}_frac", 0.0)), 4)
    if len(rows) < 2:
        raise ValueError("only one training row: no steady-state interval to measure")
    first_index = 1 if len(rows) >= 3 else 0
    first = rows[first_index]
    span = float(last["time/total_s"]) - float(first["time/total_s"])
    steps = int(last["env_steps"]) - int(first["env_steps"])
    if span <= 0 or steps <= 0:
        raise ValueError(f"no progress between the first and last rows ({steps} steps, {span} s)")
    out["steady_from_row"] = first_index
    out["steady_s"] = round(span, 2)
    out["steady_env_steps"] = steps
    out["env_steps_per_s"] = round(steps / span, 3)
    grad = int(last.get("step", 0)) - int(first.get("step", 0))
    out["updates_per_s"] = round(grad / span, 3) if grad > 0 else None
    parts = 0.0
    for name, key in SPLIT.items():
        sec = float(last.get(f"time/{key}_s", 0.0)) - float(first.get(f"time/{key}_s", 0.0))
        out[f"{name}_frac"] = round(sec / span, 4)
        parts += sec
    out["other_frac"] = round(max(span - parts, 0.0) / span, 4)
    return out


# --------------------------------------------------------------------------------------------
# The check


def targets(pi0: dict[str, Any], k: int) -> dict[str, Any]:
    """Issue 14's GPU targets; judged only where the figures come from a GPU."""
    on_gpu = pi0.get("backend") == "gpu"
    b1, ratio = pi0.get("batch1_ms"), pi0.get(f"multi{k}_vs_one")
    return {
        "batch1_ms_max": TARGET_BATCH1_MS,
        f"multi{k}_vs_one_max": TARGET_MULTI16_RATIO,
        "batch1_ok": (b1 <= TARGET_BATCH1_MS) if on_gpu and b1 is not None else None,
        f"multi{k}_ok": (ratio <= TARGET_MULTI16_RATIO) if on_gpu and ratio is not None else None,
    }


RUNNERS = {"pi0": pi0_section, "learner": learner_section, "loop": loop_section}


VERSIONED = ("jax", "jaxlib", "jax-cuda13-plugin", "jax-cuda12-plugin", "flax", "optax",
             "orbax-checkpoint", "chex", "numpy", "ml-collections", "sentencepiece")  # fmt: skip


def versions() -> dict[str, str]:
    """The installed versions the sections import (no import of jax in this process)."""
    from importlib import metadata

    found = {}
    for name in VERSIONED:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def check(args) -> dict[str, Any]:
    start = time.monotonic()
    env = dict(os.environ)
    env["JAX_PLATFORMS"] = args.platform  # bench_learner would default to cpu otherwise
    env.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # sections share one GPU
    env.setdefault("MUJOCO_GL", "egl")
    env.setdefault("PYOPENGL_PLATFORM", "egl")
    env["PYTHONUNBUFFERED"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH")) if p)
    report: dict[str, Any] = {
        "gpu_check": "dsrl",
        "mode": "small" if args.small else "full",
        "platform": args.platform,
        "sections": list(args.sections),
        "deadline_s": args.deadline_s,
        "python": sys.version.split()[0],
        "versions": versions(),
    }
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="gpu_check_"))
    workdir.mkdir(parents=True, exist_ok=True)
    try:
        for i, name in enumerate(args.sections):
            later = sum(SHARES[s] for s in args.sections[i + 1 :]) * args.deadline_s
            budget = args.deadline_s - (time.monotonic() - start) - later
            if budget < 5.0:
                report[name] = {"error": "skipped: no time left before the global deadline"}
                continue
            try:
                report[name] = RUNNERS[name](args, env, budget, workdir)
            except Exception as e:  # the check itself must still print its line
                report[name] = {"error": f"{type(e).__name__}: {e}"}
    finally:
        if not args.workdir:
            shutil.rmtree(workdir, ignore_errors=True)
    if "pi0" in report:
        report["targets"] = targets(report["pi0"], args.multi_k)
    report["errors"] = [s for s in args.sections if "error" in report.get(s, {})]
    report["wall_s"] = round(time.monotonic() - start, 1)
    return report


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="CPU-sized: tiny Pi0, short loop")
    parser.add_argument("--section", default=",".join(SECTIONS), help="comma list of sections")
    parser.add_argument("--deadline_s", type=float, default=None, help="global wall-clock limit")
    parser.add_argument("--platform", default=None, help="JAX_PLATFORMS for the sections")
    parser.add_argument("--pi0_variant", default=None, help="full (GPU) | tiny (--small) | ...")
    parser.add_argument("--repeats", type=int, default=None, help="timed Pi0 calls after warm-up")
    parser.add_argument("--num_steps", type=int, default=10, help="flow steps per Pi0 call")
    parser.add_argument("--multi_k", type=int, default=None, help="noises on one prefix")
    parser.add_argument("--num_envs", type=int, default=None, help="env workers of the loop")
    parser.add_argument("--rounds", type=int, default=None, help="collection rounds of the loop")
    parser.add_argument("--learner_args", default="", help="more bench_learner.py args")
    parser.add_argument("--loop_args", default="", help="more launch_train_sim.py args")
    parser.add_argument("--workdir", default=None, help="keep run dirs and section logs here")
    parser.add_argument("--output", default=None, help="also write the JSON line to this file")
    parser.add_argument("--pi0_child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    preset = settings(args.small)
    sections = tuple(s.strip() for s in args.section.split(",") if s.strip())
    unknown = [s for s in sections if s not in SECTIONS]
    if unknown or not sections:
        parser.error(f"--section: unknown {unknown}; choose from {','.join(SECTIONS)}")
    args.sections = sections
    args.platform = args.platform or os.environ.get("JAX_PLATFORMS") or preset["platform"]
    args.deadline_s = args.deadline_s if args.deadline_s is not None else preset["deadline_s"]
    args.pi0_variant = args.pi0_variant or preset["pi0_variant"]
    args.repeats = args.repeats or preset["pi0_repeats"]
    args.multi_k = args.multi_k or preset["multi_k"]
    args.num_envs = args.num_envs or preset["num_envs"]
    args.rounds = args.rounds or preset["loop_rounds"]
    args.episode_steps = preset["episode_steps"]
    args.query_freq = preset["query_freq"]
    args.utd = preset["utd"]
    args.learner_args_list = list(preset["learner_args"]) + shlex.split(args.learner_args)
    args.loop_args_list = list(preset["loop_args"]) + shlex.split(args.loop_args)
    for name in ("repeats", "multi_k", "num_envs", "rounds", "num_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name} must be >= 1")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.pi0_child:
        pi0_child(args)
        return 0
    report = check(args)
    line = json.dumps(report)
    if args.output:
        Path(args.output).write_text(line + "\n")
    print(line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

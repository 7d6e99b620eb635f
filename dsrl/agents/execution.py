"""How a block of K gradient steps runs on the backend, for any learner's pure step function.

A learner writes one pure step `step(learner, x, *consts) -> (learner, metrics)` on one batch `x`
(leaves without the K axis); a `BlockRunner` runs it over the leading K axis of `xs`:

  "loop"  a Python loop over one jitted step. Best on XLA:CPU, where convolutions inside a scan
          body run 30-80x slower (JAX issue #12868) and an unrolled scan compiles ~3x longer than
          one step for the same speed.
  "scan"  one jitted `lax.scan` per `scan_length` steps (the last block padded; padded steps are
          skipped on device). Best on GPU/TPU: one launch and no host round trip per step.
  "auto"  loop on CPU, scan elsewhere.

Data parallel (`num_devices` != 1): a `jax.sharding.Mesh` over local devices with one axis,
"batch". Every batch is split along its batch axis, the learner (parameters, optimizer state, key)
and `consts` are replicated, and XLA's SPMD partitioner turns the gradient means into all-reduces,
so each step is the same computation as on one device (up to float summation order). With
several processes (`jax.distributed.initialize()` before anything else) the mesh spans every
process's devices and each process passes its own share of the batch.

Either way the K batches reach the device(s) in one transfer, the metrics of the last step come back
(still on device: the caller converts them once), and `consts` (e.g. a frozen base policy's
parameters) are arguments of the compiled function, never baked-in constants. How many times a
runner compiled is read from its jitted functions (`compile_count`), not kept by hand.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dsrl.utils.jit import jit

MODES = ("auto", "scan", "loop")
BATCH_AXIS = "batch"

Step = Callable[..., tuple[Any, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    """How `learner.update` executes its block (not a learning choice: results are the same)."""

    mode: str = "auto"
    scan_length: int = 20  # steps per scanned call in "scan" mode
    # Devices each batch is split over (parameters replicated): 1 = one device, the default and
    # bit-identical to a build without data parallelism; 0 = all local devices; N = the first N.
    num_devices: int = 1

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"execution mode must be one of {MODES}, got {self.mode!r}")
        if int(self.scan_length) < 1:
            raise ValueError(f"scan_length must be >= 1, got {self.scan_length}")
        if int(self.num_devices) < 0:
            raise ValueError(
                f"num_devices must be >= 0 (0 = all local devices), got {self.num_devices}"
            )

    def mesh(self) -> Mesh | None:
        """The data-parallel mesh, or None for plain single-device execution."""
        return _mesh(int(self.num_devices))

    def resolved_mode(self) -> str:
        """'loop' or 'scan' on the current default backend."""
        if self.mode != "auto":
            return self.mode
        return "loop" if jax.default_backend() == "cpu" else "scan"


@functools.cache
def _mesh(num_devices: int) -> Mesh | None:
    local = jax.local_devices()
    if num_devices > len(local):
        raise ValueError(
            f"num_devices={num_devices} but this process sees {len(local)} device(s) "
            f"({local[0].platform}); use 0 for all of them or at most {len(local)}"
        )
    if jax.process_count() > 1:
        if num_devices != 0:
            raise ValueError(
                f"with {jax.process_count()} processes the mesh spans every device: set "
                f"num_devices=0, not {num_devices}"
            )
        return Mesh(np.array(jax.devices()), (BATCH_AXIS,))
    if num_devices == 1:
        return None
    return Mesh(np.array(local[: num_devices or len(local)]), (BATCH_AXIS,))


def _put(tree: Any, sharding: NamedSharding) -> Any:
    """Host arrays onto `sharding`; with several processes each gives its local rows."""
    if jax.process_count() == 1:
        return jax.device_put(tree, sharding)
    return jax.tree.map(lambda x: jax.make_array_from_process_local_data(sharding, x), tree)


def replicate(tree: Any, mesh: Mesh | None) -> Any:
    """`tree` on every device of `mesh` (unchanged without one)."""
    return tree if mesh is None else jax.device_put(tree, NamedSharding(mesh, P()))


class BlockRunner:
    """Runs a pure step function over K stacked inputs, the way `ExecutionConfig` says."""

    def __init__(self, step: Step):
        self.step = step
        self.step_jit = jit(step)

        def scan(learner, chunk, num_valid, *consts):
            # Metrics of a skipped (padded) step: zeros of the right shapes.
            one = jax.tree.map(lambda x: x[0], chunk)
            shapes = jax.eval_shape(step, learner, one, *consts)[1]
            zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

            def body(carry, indexed):
                index, x = indexed
                return jax.lax.cond(
                    index < num_valid,
                    lambda c, b: step(c, b, *consts),
                    lambda c, _: (c, zeros),
                    carry,
                    x,
                )

            length = jax.tree.leaves(chunk)[0].shape[0]
            learner, metrics = jax.lax.scan(body, learner, (jnp.arange(length), chunk))
            return learner, jax.tree.map(lambda m: m[num_valid - 1], metrics)

        self.scan_jit = jit(scan)

    def __call__(
        self, learner: Any, xs: Any, execution: ExecutionConfig, *consts: Any
    ) -> tuple[Any, dict[str, jax.Array]]:
        """(learner after K steps, metrics of step K) for `xs` with leading axis K >= 1."""
        num_steps = int(jax.tree.leaves(xs)[0].shape[0])
        if num_steps < 1:
            raise ValueError("a block needs at least one step (leading axis K >= 1)")
        mesh = execution.mesh()
        if mesh is not None:
            batch_size = int(jax.tree.leaves(xs)[0].shape[1])
            if batch_size % mesh.size:
                raise ValueError(
                    f"batch size {batch_size} does not split over {mesh.size} devices; use a "
                    f"batch size divisible by num_devices={mesh.size}"
                )
            learner, consts = replicate((learner, consts), mesh)
        metrics = None
        if execution.resolved_mode() == "loop":
            steps = [jax.tree.map(lambda x, k=k: x[k], xs) for k in range(num_steps)]
            if mesh is None:
                steps = jax.device_put(steps)
            else:
                steps = _put(steps, NamedSharding(mesh, P(BATCH_AXIS)))
            for x in steps:
                learner, metrics = self.step_jit(learner, x, *consts)
            return learner, metrics
        length = int(execution.scan_length)
        chunks, valid = [], []
        for start in range(0, num_steps, length):
            chunk = jax.tree.map(lambda x, s=start: np.asarray(x[s : s + length]), xs)
            n = min(length, num_steps - start)
            if n < length:  # pad with copies of the last step; they are skipped on device
                chunk = jax.tree.map(
                    lambda x, n=n: np.concatenate([x, np.repeat(x[-1:], length - n, 0)]), chunk
                )
            chunks.append(chunk)
            valid.append(np.int32(n))
        if mesh is None:
            chunks, valid = jax.device_put((chunks, valid))
        else:
            chunks = _put(chunks, NamedSharding(mesh, P(None, BATCH_AXIS)))
            valid = replicate(valid, mesh)
        for chunk, n in zip(chunks, valid, strict=True):
            learner, metrics = self.scan_jit(learner, chunk, n, *consts)
        return learner, metrics

    def compile_count(self) -> int:
        """Compiled variants of this runner's step and scan functions (in this process)."""
        return int(self.step_jit._cache_size() + self.scan_jit._cache_size())

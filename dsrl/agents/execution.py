"""How a block of K gradient steps runs on the backend, for any learner's pure step function.

A learner writes one pure step `step(learner, x, *consts) -> (learner, metrics)` on one batch `x`
(leaves without the K axis); a `BlockRunner` runs it over the leading K axis of `xs`:

  "loop"  a Python loop over one jitted step. Best on XLA:CPU, where convolutions inside a scan
          body run 30-80x slower (JAX issue #12868) and an unrolled scan compiles ~3x longer than
          one step for the same speed.
  "scan"  one jitted `lax.scan` per `scan_length` steps (the last block padded; padded steps are
          skipped on device). Best on GPU/TPU: one launch and no host round trip per step.
  "auto"  loop on CPU, scan elsewhere.

Either way the K batches reach the device in one transfer, the metrics of the last step come back
(still on device: the caller converts them once), and `consts` (e.g. a frozen base policy's
parameters) are arguments of the compiled function, never baked-in constants. How many times a
runner compiled is read from its jitted functions (`compile_count`), not kept by hand.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from dsrl.utils.jit import jit

MODES = ("auto", "scan", "loop")

Step = Callable[..., tuple[Any, dict[str, jax.Array]]]


@dataclasses.dataclass(frozen=True)
class ExecutionConfig:
    """How `learner.update` executes its block (not a learning choice: results are the same)."""

    mode: str = "auto"
    scan_length: int = 20  # steps per scanned call in "scan" mode

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"execution mode must be one of {MODES}, got {self.mode!r}")
        if int(self.scan_length) < 1:
            raise ValueError(f"scan_length must be >= 1, got {self.scan_length}")

    def resolved_mode(self) -> str:
        """'loop' or 'scan' on the current default backend."""
        if self.mode != "auto":
            return self.mode
        return "loop" if jax.default_backend() == "cpu" else "scan"


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
        metrics = None
        if execution.resolved_mode() == "loop":
            steps = jax.device_put(
                [jax.tree.map(lambda x, k=k: x[k], xs) for k in range(num_steps)]
            )
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
        chunks, valid = jax.device_put((chunks, valid))
        for chunk, n in zip(chunks, valid, strict=True):
            learner, metrics = self.scan_jit(learner, chunk, n, *consts)
        return learner, metrics

    def compile_count(self) -> int:
        """Compiled variants of this runner's step and scan functions (in this process)."""
        return int(self.step_jit._cache_size() + self.scan_jit._cache_size())

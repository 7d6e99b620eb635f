"""What the benchmark scripts measure speed against: this machine's float32 matmul rate, and the
matmul FLOPs of a traced step (counted from its jaxpr).

A step's speed is reported as a share of `matmul_gflops()` measured in the same process, so a
figure is comparable across runs on a shared, noisy machine (scripts/bench_learner.py,
scripts/bench_pi0_train.py).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.extend
import jax.numpy as jnp
import numpy as np


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    """GFLOP/s of an n x n float32 `jnp.dot` on the default device, best of `reps` (compiled
    and warmed up first)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.float32)
    dot = jax.jit(jnp.dot)
    dot(a, b).block_until_ready()
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        dot(a, b).block_until_ready()
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def _sub_jaxprs(params: Mapping[str, Any]) -> Iterator[Any]:
    for value in params.values():
        for v in value if isinstance(value, list | tuple) else (value,):
            if isinstance(v, jax.extend.core.ClosedJaxpr):
                yield v.jaxpr
            elif isinstance(v, jax.extend.core.Jaxpr):
                yield v


def matmul_flops(jaxpr: Any) -> float:
    """2 * M * N * K summed over every dot_general of a jaxpr, a scan's body counted `length`
    times (a cond counts its costliest branch; a while loop, whose trip count is unknown, once).
    XLA's cost analysis counts a loop body once, so it undercounts a scanned transformer."""
    total = 0.0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            (contract, _), _ = eqn.params["dimension_numbers"]
            k = np.prod([eqn.invars[0].aval.shape[d] for d in contract])
            total += 2.0 * np.prod(eqn.outvars[0].aval.shape) * k
            continue
        subs = [matmul_flops(j) for j in _sub_jaxprs(eqn.params)]
        if not subs:
            continue
        if eqn.primitive.name == "cond":
            total += max(subs)
        else:
            total += sum(subs) * eqn.params.get("length", 1)
    return total

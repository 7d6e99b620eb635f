"""`jax.jit` with the XLA:CPU options dsrl's pixel learners need.

jax 0.10.2 hands convolutions to YNNPACK by default on CPU. For the reference encoder's 3x3,
32-channel layers at batch 256 that path runs about 10x slower than XLA's own (Eigen)
convolution on the 2-core dev box (150 ms vs 14 ms for one layer, `scripts/bench_learner.py`
went from 0.30 to 1.3 updates/s with it off). The option below turns it off for the functions
compiled through `jit`, and nothing else in the process; other backends ignore it.
"""

from __future__ import annotations

import functools

import jax

CPU_COMPILER_OPTIONS = {"xla_cpu_experimental_ynn_fusion_type": ""}


def jit(fun=None, /, **kwargs):
    """`jax.jit(fun, **kwargs)` compiled with `CPU_COMPILER_OPTIONS`; usable as a decorator."""
    if fun is None:
        return functools.partial(jit, **kwargs)
    return jax.jit(fun, compiler_options=CPU_COMPILER_OPTIONS, **kwargs)

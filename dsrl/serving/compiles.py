"""Counting JAX compilations per server: start-up compiles are expected, a compile while serving
means a request used a shape not compiled at start-up (and stalled everyone for seconds).

Inference threads record which counter they belong to, so that a compilation is charged to that
server (other servers and the caller's own jit calls in the same process are not)."""

from __future__ import annotations

import logging
import threading
from typing import Any

logger = logging.getLogger(__name__)

_thread_owner = threading.local()
_listener_lock = threading.Lock()
_listener_installed = False
_BACKEND_COMPILE_EVENT = "/jax/core/compile/backend_compile_duration"


class CompileCounter:
    """Adds compilations made on claimed threads to `stats["compiles_at_startup"]` until
    `warm` is set, to `stats["compiles_while_serving"]` after (with a warning)."""

    def __init__(self, stats: dict[str, Any], lock: threading.Lock):
        self.stats = stats
        self.lock = lock
        self.warm = False
        _install_listener()

    def claim_thread(self) -> None:
        """Thread-pool initializer: compilations on this thread are ours."""
        _thread_owner.counter = self

    def record(self, fun_name: str, duration: float) -> None:
        with self.lock:
            key = "compiles_while_serving" if self.warm else "compiles_at_startup"
            self.stats[key] += 1
        if self.warm:
            logger.warning(
                "compiled %s while serving (%.2f s): a request used a shape not compiled at "
                "start-up (pass warmup_observation / check --batch_sizes)",
                fun_name,
                duration,
            )


def _on_jax_event(event: str, duration: float, **kwargs: Any) -> None:
    if event != _BACKEND_COMPILE_EVENT:
        return
    counter = getattr(_thread_owner, "counter", None)
    if counter is not None:
        counter.record(str(kwargs.get("fun_name", "?")), duration)


def _install_listener() -> None:
    global _listener_installed
    with _listener_lock:
        if _listener_installed:
            return
        try:
            import jax.monitoring
        except ImportError:  # a NumPy-only policy compiles nothing
            return
        jax.monitoring.register_event_duration_secs_listener(_on_jax_event)
        _listener_installed = True

"""Clean-room JAX Pi0 / Pi0.5 (openpi checkpoint-compatible, noise-injectable).

Model symbols are imported lazily so the I/O modules (checkpoints, tokenizer, transforms, norm
stats) stay importable on their own.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["Observation", "Pi0Config", "Pi0Policy", "load_pi0", "save_openpi_checkpoint"]

_LAZY = {
    "Pi0Config": "dsrl.base_policies.pi0.config",
    "Observation": "dsrl.base_policies.pi0.model",
    "Pi0": "dsrl.base_policies.pi0.model",
    "load_pi0": "dsrl.base_policies.pi0.checkpoint",
    "save_openpi_checkpoint": "dsrl.base_policies.pi0.checkpoint",
    "Pi0Policy": "dsrl.base_policies.pi0.policy",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'dsrl.base_policies.pi0' has no attribute {name!r}")

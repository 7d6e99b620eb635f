"""What several test files need to drive a run the way a user does: the repository's scripts
loaded as modules (examples/ and scripts/ are not packages), and a tiny random Pi0 written in
openpi's on-disk layout for LIBERO."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import jax
import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_script(relative_path: str, name: str | None = None) -> ModuleType:
    """The file ROOT/relative_path executed as module `name` (default: its stem), registered in
    sys.modules so that its dataclasses and pickles resolve."""
    path = ROOT / relative_path
    spec = importlib.util.spec_from_file_location(name or path.stem, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def write_tiny_libero_pi0(root: Path, corpus: Sequence[str]) -> tuple[Path, Path]:
    """(checkpoint dir, tokenizer model) of a tiny random Pi0 with LIBERO norm stats under
    `root`, its tokenizer trained on `corpus` (the prompts the test will send)."""
    from dsrl.base_policies.pi0 import model as model_lib
    from dsrl.base_policies.pi0 import normalize as nl
    from dsrl.base_policies.pi0 import save_openpi_checkpoint
    from dsrl.base_policies.pi0.config import Pi0Config
    from dsrl.base_policies.pi0.tokenizer import train_sentencepiece_model

    rng = np.random.default_rng(0)
    params = jax.tree.map(
        lambda s: (0.2 * rng.standard_normal(s.shape)).astype(np.float32),
        model_lib.param_shapes(Pi0Config.tiny()),
    )
    stats = {  # small action scale: the random policy nudges the arm instead of slamming it
        "state": nl.NormStats(rng.normal(size=8) * 0.1, rng.uniform(0.5, 2.0, 8)),
        "actions": nl.NormStats(np.zeros(7), np.full(7, 0.3)),
    }
    ckpt = save_openpi_checkpoint(
        params, root / "pi0_tiny", norm_stats=stats, asset_id="physical-intelligence/libero"
    )
    tokenizer = root / "tokenizer.model"
    tokenizer.write_bytes(train_sentencepiece_model(list(corpus) * 50, vocab_size=40))
    return ckpt, tokenizer

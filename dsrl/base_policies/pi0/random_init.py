"""A Pi0 policy with random weights and no files: `Pi0Policy.from_checkpoint("random", ...)`.

For benchmarks and smoke runs of the whole stack at the real model size where no checkpoint can
be had (`--pi0_checkpoint random --pi0_variant full` in the launcher, `scripts/gpu_check.py`). Its
actions are meaningless: the weights are random, the norm stats are placeholders (state
z-scored with mean 0 / std 1, actions scaled by `ACTION_STD` so the arm moves slowly), and the
tokenizer is a throwaway SentencePiece model trained in-process (the real PaliGemma file is
neither shipped nor downloadable here). The compute is the real model's: same shapes, same
dtypes, same prompt length.
"""

from __future__ import annotations

import pathlib
from typing import Any

import numpy as np

from dsrl.base_policies.pi0 import normalize as norm_lib

RANDOM_CHECKPOINT = "random"
ACTION_STD = 0.05  # placeholder action scale of the random policy
_WIDTH = 32  # norm stats longer than the data are sliced (openpi's Normalize): one size fits all
# Words of the LIBERO / Aloha / DROID prompts, so that typical prompts encode to word pieces.
_CORPUS = (
    "pick up the black bowl between the plate and the ramekin and place it on the plate",
    "put the cream cheese in the tray and open the top drawer of the cabinet",
    "turn on the stove and put the moka pot on it, push the plate to the front of the stove",
    "transfer cube, insertion, fold the towel, wipe the table with the sponge",
    "abcdefghijklmnopqrstuvwxyz 0123456789 , . ; : ! ? ' -",
)


def placeholder_norm_stats() -> dict[str, norm_lib.NormStats]:
    """State: identity z-score; actions: mean 0, std ACTION_STD (quantiles for Pi0.5 to match)."""
    zeros, ones = np.zeros(_WIDTH), np.ones(_WIDTH)
    return {
        "state": norm_lib.NormStats(zeros, ones, q01=-ones, q99=ones),
        "actions": norm_lib.NormStats(
            zeros, ACTION_STD * ones, q01=-ACTION_STD * ones, q99=ACTION_STD * ones
        ),
    }


def throwaway_tokenizer(max_len: int, vocab_size: int):
    """A `PaligemmaTokenizer` on a SentencePiece model trained now (well under a second)."""
    import sentencepiece

    from dsrl.base_policies.pi0.tokenizer import PaligemmaTokenizer, train_sentencepiece_model

    proto = train_sentencepiece_model(list(_CORPUS) * 20, vocab_size=min(200, vocab_size))
    return PaligemmaTokenizer(sentencepiece.SentencePieceProcessor(model_proto=proto), max_len)


def random_model(variant: Any = "full", dtype: str = "bfloat16", seed: int = 0):
    """A `model.Pi0` of `variant` (a name or a `Pi0Config`) with random weights in `dtype`
    (parameters and compute, as `checkpoint.load_pi0` gives them)."""
    import dataclasses

    from dsrl.base_policies.pi0 import model as model_lib
    from dsrl.base_policies.pi0.config import Pi0Config

    if dtype not in ("bfloat16", "float32"):
        raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {dtype!r}.")
    if isinstance(variant, Pi0Config):
        config = dataclasses.replace(variant, dtype=dtype)
    else:
        config = Pi0Config.from_name(variant, dtype=dtype)
    params = model_lib.init_params(config, seed, dtype=dtype)
    return model_lib.Pi0.create(config, params)


def random_parts(
    variant: Any = "full",
    dtype: str = "bfloat16",
    tokenizer_path: str | pathlib.Path | None = None,
    *,
    seed: int = 0,
):
    """(model, tokenizer, norm stats) of a random-weight Pi0: `Pi0Policy.from_checkpoint("random")`
    assembles the policy from them. The tokenizer is a throwaway one unless `tokenizer_path` names
    a SentencePiece file."""
    from dsrl.base_policies.pi0.tokenizer import PaligemmaTokenizer

    model = random_model(variant, dtype, seed)
    max_len = model.config.max_token_len
    if tokenizer_path:
        tokenizer = PaligemmaTokenizer(tokenizer_path, max_len=max_len)
    else:
        tokenizer = throwaway_tokenizer(max_len, model.config.vocab_size)
    return model, tokenizer, placeholder_norm_stats()

"""PaliGemma prompt tokenizer, with openpi's exact prompt format.

Pi0: `BOS + encode(cleaned prompt) + encode("\\n")`, right-padded with id 0 to `max_len` (48),
mask True on real tokens. Cleaning is `strip()`, `_` -> space, newline -> space; no lowercasing.
Pi0.5 with a discrete state: `BOS + encode("Task: {prompt}, State: {bins};\\nAction: ")` where
the state (already normalised to [-1, 1]) is cut into 256 bins.

Real checkpoints need the real PaliGemma SentencePiece file
(`$OPENPI_DATA_HOME/big_vision/paligemma_tokenizer.model`, see `download.py`); any other
SentencePiece model can be injected (tests train a throwaway one).
"""

from __future__ import annotations

import io
import logging
import pathlib
from collections.abc import Iterable
from typing import Any

import numpy as np
import sentencepiece

logger = logging.getLogger(__name__)

_NUM_STATE_BINS = 256
# The start of an over-long prompt that the truncation warning shows.
_LOGGED_PROMPT_CHARS = 120


def train_sentencepiece_model(sentences: Iterable[str], vocab_size: int, **options: Any) -> bytes:
    """A serialized SentencePiece model trained in-process on `sentences`, with Gemma's special
    ids (pad 0, eos 1, bos 2, unk 3) and a "\n" piece like the PaliGemma tokenizer. For tests and
    offline smoke runs: the real PaliGemma model cannot be made, only downloaded. `options` go to
    the trainer (e.g. normalization_rule_name)."""
    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=buf,
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        pad_id=0,
        eos_id=1,
        bos_id=2,
        unk_id=3,
        user_defined_symbols=["\n"],
        minloglevel=2,
        **options,
    )
    return buf.getvalue()


def clean_prompt(prompt: str) -> str:
    """openpi's Pi0 prompt cleaning (no lowercasing: that is pi0-FAST's)."""
    return prompt.strip().replace("_", " ").replace("\n", " ")


def discretize_state(state: np.ndarray) -> np.ndarray:
    """(d,) state normalised to [-1, 1] -> int bins in [0, 255] (values outside are clipped by
    digitize to the end bins, exactly as openpi)."""
    bins = np.linspace(-1.0, 1.0, _NUM_STATE_BINS + 1)[:-1]
    return np.digitize(np.asarray(state), bins=bins) - 1


class PaligemmaTokenizer:
    """Tokenizes prompts to fixed-length (ids int32 (max_len,), mask bool (max_len,)).

    Args:
      model: path to a SentencePiece `.model` file, or a `SentencePieceProcessor` (injectable).
      max_len: token budget (48 for Pi0, 200 for Pi0.5). Longer prompts are truncated with a
        warning, as openpi does.
    """

    def __init__(
        self, model: str | pathlib.Path | sentencepiece.SentencePieceProcessor, max_len: int = 48
    ):
        if isinstance(model, sentencepiece.SentencePieceProcessor):
            self._sp = model
        else:
            path = pathlib.Path(model)
            if not path.is_file():
                raise FileNotFoundError(
                    f"Tokenizer model not found at {path}. Pi0 checkpoints need the PaliGemma "
                    "SentencePiece file: see dsrl.base_policies.pi0.download.tokenizer_path()."
                )
            self._sp = sentencepiece.SentencePieceProcessor(model_proto=path.read_bytes())
        if max_len < 2:
            raise ValueError(f"max_len must be >= 2 (BOS and the answer token), got {max_len}.")
        self.max_len = max_len
        self._cache: dict[tuple[str, tuple[int, ...] | None], tuple[np.ndarray, np.ndarray]] = {}

    @property
    def vocab_size(self) -> int:
        return self._sp.get_piece_size()

    def encode_ids(self, prompt: str, state: np.ndarray | None = None) -> list[int]:
        """The unpadded, untruncated token ids of one prompt."""
        cleaned = clean_prompt(prompt)
        if state is not None:
            state_str = " ".join(str(int(b)) for b in discretize_state(state))
            return self._sp.encode(f"Task: {cleaned}, State: {state_str};\nAction: ", add_bos=True)
        # "\n" is encoded on its own: it is the model's "start of answer" token.
        return self._sp.encode(cleaned, add_bos=True) + self._sp.encode("\n")

    def tokenize(
        self, prompt: str, state: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """-> (ids int32 (max_len,), mask bool (max_len,)). Cached: DSRL repeats one prompt."""
        if isinstance(prompt, bytes):
            prompt = prompt.decode("utf-8")
        elif not isinstance(prompt, str):
            prompt = str(np.asarray(prompt).item())
        key = (prompt, None if state is None else tuple(discretize_state(state).tolist()))
        hit = self._cache.get(key)
        if hit is None:
            ids = self.encode_ids(prompt, state)
            n = len(ids)
            if n > self.max_len:
                # An excerpt only: a client may send a prompt of any length (one was 6,742
                # characters), and each new one is logged.
                logger.warning(
                    "Prompt is %d tokens, more than max_len=%d: truncating. Shorten the prompt or "
                    "raise max_token_len. Prompt (%d characters): %r%s",
                    n,
                    self.max_len,
                    len(prompt),
                    prompt[:_LOGGED_PROMPT_CHARS],
                    "..." if len(prompt) > _LOGGED_PROMPT_CHARS else "",
                )
                ids, n = ids[: self.max_len], self.max_len
            tokens = np.zeros(self.max_len, dtype=np.int32)
            tokens[:n] = ids
            mask = np.arange(self.max_len) < n
            hit = (tokens, mask)
            if len(self._cache) < 4096:
                self._cache[key] = hit
        return hit[0].copy(), hit[1].copy()

    def tokenize_batch(
        self, prompts: list[str], states: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """B prompts (and optional (B, d) normalised states) -> int32 (B, L), bool (B, L)."""
        pairs = [
            self.tokenize(p, None if states is None else states[i]) for i, p in enumerate(prompts)
        ]
        return np.stack([t for t, _ in pairs]), np.stack([m for _, m in pairs])

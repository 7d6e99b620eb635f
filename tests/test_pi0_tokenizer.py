"""PaligemmaTokenizer: openpi's prompt format, with a throwaway SentencePiece model."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import sentencepiece as spm

from dsrl.base_policies.pi0.tokenizer import (
    PaligemmaTokenizer,
    clean_prompt,
    discretize_state,
    train_sentencepiece_model,
)

CORPUS = [
    "pick up the cream cheese and put it in the tray",
    "Pick up the black bowl",
    "transfer cube",
    "Task: open the drawer, State: 0 12 255 128;\nAction: ",
]


def train_sentencepiece() -> spm.SentencePieceProcessor:
    """A tiny model with Gemma's special ids (pad 0, eos 1, bos 2, unk 3) and a "\\n" piece."""
    model_proto = train_sentencepiece_model(
        CORPUS * 50,
        vocab_size=64,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        add_dummy_prefix=False,
    )
    return spm.SentencePieceProcessor(model_proto=model_proto)


@pytest.fixture(scope="module")
def sp():
    return train_sentencepiece()


def test_clean_prompt_strips_and_replaces_underscores_without_lowercasing():
    assert clean_prompt("  Pick_up the\nbowl \n") == "Pick up the bowl"


def test_pi0_format_bos_prompt_newline_then_zero_padding(sp):
    tok = PaligemmaTokenizer(sp, max_len=32)
    ids, mask = tok.tokenize("  pick_up the tray\n")
    expected = [sp.bos_id(), *sp.encode("pick up the tray"), *sp.encode("\n")]
    n = len(expected)
    assert ids.dtype == np.int32 and mask.dtype == bool and ids.shape == mask.shape == (32,)
    assert ids[:n].tolist() == expected
    assert ids[0] == 2 and ids[n - 1] == sp.piece_to_id("\n")
    assert mask[:n].all() and not mask[n:].any()
    assert (ids[n:] == 0).all()


def test_case_is_preserved(sp):
    tok = PaligemmaTokenizer(sp, max_len=32)
    assert tok.encode_ids("Pick up") == [sp.bos_id(), *sp.encode("Pick up"), *sp.encode("\n")]
    assert tok.encode_ids("Pick up") != tok.encode_ids("pick up")


def test_truncation_warns_and_fills_mask(sp, caplog):
    tok = PaligemmaTokenizer(sp, max_len=5)
    full = tok.encode_ids(CORPUS[0])
    assert len(full) > 5
    with caplog.at_level(logging.WARNING):
        ids, mask = tok.tokenize(CORPUS[0])
    assert "truncating" in caplog.text
    assert ids.tolist() == full[:5] and mask.all()


def test_pi05_discrete_state_prompt(sp):
    tok = PaligemmaTokenizer(sp, max_len=64)
    state = np.array([-1.0, -0.9, 0.0, 0.999])
    bins = discretize_state(state)
    assert bins.tolist() == [0, 12, 128, 255]
    ids, mask = tok.tokenize("open the drawer", state)
    expected = sp.encode("Task: open the drawer, State: 0 12 128 255;\nAction: ", add_bos=True)
    assert ids[: mask.sum()].tolist() == expected


def test_batch_and_bytes_prompts(sp, tmp_path):
    path = tmp_path / "tok.model"
    path.write_bytes(sp.serialized_model_proto())
    tok = PaligemmaTokenizer(path, max_len=24)  # from a file, like the real PaliGemma model
    ids, mask = tok.tokenize_batch(["transfer cube", "pick up the tray"])
    assert ids.shape == mask.shape == (2, 24)
    assert tok.tokenize(b"transfer cube")[0].tolist() == ids[0].tolist()


def test_missing_tokenizer_file_says_where_to_get_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="PaliGemma SentencePiece"):
        PaligemmaTokenizer(tmp_path / "nope.model")

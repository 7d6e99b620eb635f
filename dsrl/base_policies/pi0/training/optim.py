"""Optimizer, learning-rate schedule and the split of parameters into trained and frozen ones.

Defaults are openpi's `TrainConfig`: AdamW(b1 0.9, b2 0.95, eps 1e-8, weight decay 1e-10) after
global-norm clipping at 1.0; warm-up from peak/(warmup+1) to 2.5e-5 over 1,000 steps, then cosine
decay to 2.5e-6 at 30,000 steps; EMA of the parameters with decay 0.99 (None: no EMA).

What trains (`trainable`):
  "full"    every parameter;
  "expert"  the action expert (every `*_1` Gemma leaf) and the action/state/time projections;
            SigLIP, PaliGemma's Gemma and the embedding stay frozen;
  "lora"    as openpi's `gemma_2b_lora` + `gemma_300m_lora` freeze filter: every Gemma weight
            is frozen except the LoRA leaves; SigLIP and the projections still train.
Frozen parameters live apart from the trained ones and get no optimizer state and no EMA.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Literal

import optax

from dsrl.base_policies.pi0.checkpoint import flatten, unflatten
from dsrl.base_policies.pi0.training.lora import LoraConfig

Params = dict[str, Any]
Trainable = Literal["full", "expert", "lora"]
TRAINABLE = ("full", "expert", "lora")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    trainable: Trainable = "full"
    lora: LoraConfig = LoraConfig()
    peak_lr: float = 2.5e-5
    warmup_steps: int = 1_000
    decay_steps: int = 30_000
    decay_lr: float = 2.5e-6
    b1: float = 0.9
    b2: float = 0.95
    eps: float = 1e-8
    weight_decay: float = 1e-10
    clip_gradient_norm: float = 1.0
    ema_decay: float | None = 0.99
    # openpi's training-time image augmentation (loss.augment_images; openpi always trains with
    # it). Off by default here: the shipped small Pi0 was trained without it.
    augment: bool = False

    def __post_init__(self):
        if self.trainable not in TRAINABLE:
            raise ValueError(f"trainable must be one of {TRAINABLE}, got {self.trainable!r}.")
        if self.ema_decay is not None and not 0.0 <= self.ema_decay < 1.0:
            raise ValueError(f"ema_decay must be in [0, 1) or None, got {self.ema_decay}.")
        if self.warmup_steps < 0 or self.decay_steps <= self.warmup_steps:
            raise ValueError(
                f"Need 0 <= warmup_steps < decay_steps, got {self.warmup_steps}, "
                f"{self.decay_steps}."
            )


def lr_schedule(config: TrainConfig) -> optax.Schedule:
    """openpi's CosineDecaySchedule."""
    return optax.warmup_cosine_decay_schedule(
        init_value=config.peak_lr / (config.warmup_steps + 1),
        peak_value=config.peak_lr,
        warmup_steps=config.warmup_steps,
        decay_steps=config.decay_steps,
        end_value=config.decay_lr,
    )


def make_optimizer(config: TrainConfig) -> optax.GradientTransformation:
    adamw = optax.adamw(
        lr_schedule(config),
        b1=config.b1,
        b2=config.b2,
        eps=config.eps,
        weight_decay=config.weight_decay,
    )
    return optax.chain(optax.clip_by_global_norm(config.clip_gradient_norm), adamw)


def is_trainable(path: tuple[str, ...], trainable: Trainable) -> bool:
    """Whether the leaf at `path` (keys from the params root) is trained."""
    if trainable == "full":
        return True
    in_llm = path[:2] == ("PaliGemma", "llm")
    if trainable == "lora":
        return not in_llm or any("lora" in k for k in path)
    if path[0] != "PaliGemma":  # action_in_proj, state_proj, time MLPs, action_out_proj
        return True
    return in_llm and any(k.endswith("_1") for k in path[2:])


def split_params(params: Params, trainable: Trainable) -> tuple[Params, Params]:
    """(trained, frozen): two nested dicts holding disjoint leaves of `params`."""
    flat = flatten(params)
    if trainable == "lora" and not any("lora" in p[-1] for p in flat):
        raise ValueError(
            "trainable='lora' but the params hold no LoRA leaves: add them with "
            "training.lora.add_lora (init_train_state does)."
        )
    train = {p: v for p, v in flat.items() if is_trainable(p, trainable)}
    frozen = {p: v for p, v in flat.items() if p not in train}
    if not train:
        raise ValueError(
            f"trainable={trainable!r} selects no parameter"
            + (
                " (no LoRA leaves: add them with training.lora.add_lora)."
                if trainable == "lora"
                else "."
            )
        )
    return unflatten(train), unflatten(frozen)


def combine(trained: Params, frozen: Params) -> Params:
    """The full parameter tree from its two halves."""
    return unflatten({**flatten(frozen), **flatten(trained)})

"""Configuration of the JAX Pi0 / Pi0.5 model (sizes, dtypes, camera layout).

The sizes mirror openpi's `Pi0Config`, Gemma variants and SigLIP variants so that an openpi
checkpoint restores unchanged; `tiny` adds sizes small enough for CPU unit tests.
"""

from __future__ import annotations

import dataclasses
from typing import Literal

PALIGEMMA_VOCAB_SIZE = 257_152
IMAGE_KEYS = ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")
IMAGE_RESOLUTION = (224, 224)

Dtype = Literal["bfloat16", "float32"]


@dataclasses.dataclass(frozen=True)
class GemmaConfig:
    """One expert of the mixture-of-transformers (a Gemma-1 style decoder stack)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    num_kv_heads: int
    head_dim: int


GEMMA_VARIANTS: dict[str, GemmaConfig] = {
    # openpi's sizes (gemma.py: get_config).
    "gemma_2b": GemmaConfig(2048, 18, 16_384, 8, 1, 256),
    "gemma_300m": GemmaConfig(1024, 18, 4096, 8, 1, 256),
    "dummy": GemmaConfig(64, 4, 128, 8, 1, 16),
    # Test sizes: the two tiny experts have different widths so that a mix-up of the two weight
    # sets fails loudly instead of silently running.
    "tiny": GemmaConfig(48, 2, 96, 2, 1, 16),
    "tiny_expert": GemmaConfig(32, 2, 64, 2, 1, 16),
    # A CPU-sized Pi0 (fine-tuning benchmarks): matmuls large enough to run near the CPU's peak.
    "small": GemmaConfig(256, 4, 1024, 4, 1, 64),
    "small_expert": GemmaConfig(128, 4, 512, 4, 1, 64),
    # The LIBERO CPU Pi0 (`mini`, scripts/make_pi0_libero.py): sized to train on 2 cores.
    "mini": GemmaConfig(64, 3, 256, 4, 1, 16),
    "mini_expert": GemmaConfig(128, 3, 512, 4, 1, 16),
}


@dataclasses.dataclass(frozen=True)
class VisionConfig:
    """A big_vision ViT used as PaliGemma's SigLIP image encoder (no pooling, no CLS token)."""

    width: int
    depth: int
    mlp_dim: int
    num_heads: int
    patch_size: int


_VIT_SIZES = {  # name -> (width, depth, mlp_dim, num_heads), from the big_vision variant table
    "So400m": (1152, 27, 4304, 16),
    "mu": (32, 1, 128, 2),
    "S": (384, 12, 1536, 6),
    "xs": (64, 2, 256, 2),  # not a big_vision size: the `mini` Pi0's encoder
}
_VISION_ALIASES = {"tiny": "mu/8"}


def get_gemma_config(variant: str) -> GemmaConfig:
    if variant not in GEMMA_VARIANTS:
        raise ValueError(
            f"Unknown Gemma variant {variant!r}; choose one of {sorted(GEMMA_VARIANTS)}."
        )
    return GEMMA_VARIANTS[variant]


def get_vision_config(variant: str) -> VisionConfig:
    """Parses `"<size>/<patch>"`, e.g. `"So400m/14"`, or an alias such as `"tiny"`."""
    name = _VISION_ALIASES.get(variant, variant)
    size, _, patch = name.partition("/")
    if size not in _VIT_SIZES or not patch.isdigit():
        raise ValueError(
            f"Unknown vision variant {variant!r}; use '<size>/<patch>' with size in "
            f"{sorted(_VIT_SIZES)} (e.g. 'So400m/14') or one of {sorted(_VISION_ALIASES)}."
        )
    width, depth, mlp_dim, num_heads = _VIT_SIZES[size]
    return VisionConfig(width, depth, mlp_dim, num_heads, int(patch))


@dataclasses.dataclass(frozen=True)
class Pi0Config:
    """Pi0 (pi05=False) or Pi0.5 (pi05=True) model configuration.

    `dtype` is the activation/compute dtype (openpi's default is bfloat16); parameters keep whatever
    dtype they were loaded with. Hashable, so it can be a static argument of `jax.jit`.
    """

    paligemma_variant: str = "gemma_2b"
    action_expert_variant: str = "gemma_300m"
    vision_variant: str = "So400m/14"
    vocab_size: int = PALIGEMMA_VOCAB_SIZE
    action_dim: int = 32
    action_horizon: int = 50
    max_token_len: int = 48
    pi05: bool = False
    dtype: Dtype = "bfloat16"
    image_keys: tuple[str, ...] = IMAGE_KEYS
    image_resolution: tuple[int, int] = IMAGE_RESOLUTION
    # Training only: recompute each Gemma layer's activations in the backward pass instead of
    # keeping them (openpi rematerialises its layers the same way). Same gradients, far less
    # memory, about a third more compute. Inference does not differentiate: no effect there.
    remat: bool = False
    # One noise row for the whole chunk: the flow starts from row 0 of the (H, action_dim) noise
    # repeated over the horizon, in training and in sampling (the flow MLP's `shared_noise`; not
    # openpi's, whose noise is i.i.d. per step). Then a latent that 'repeat' steering copies over
    # the chunk is exactly the model's prior. The small LIBERO Pi0 (`mini`) is trained this way.
    shared_noise: bool = False

    def __post_init__(self):
        if self.dtype not in ("bfloat16", "float32"):
            raise ValueError(f"dtype must be 'bfloat16' or 'float32', got {self.dtype!r}.")
        vlm, expert = self.paligemma, self.action_expert
        for field in ("depth", "num_heads", "num_kv_heads", "head_dim"):
            if getattr(vlm, field) != getattr(expert, field):
                raise ValueError(
                    f"paligemma_variant {self.paligemma_variant!r} and action_expert_variant "
                    f"{self.action_expert_variant!r} must share {field} (they attend jointly)."
                )
        if vlm.num_heads % vlm.num_kv_heads:
            raise ValueError("num_heads must be a multiple of num_kv_heads.")
        patch = self.vision.patch_size
        if any(r % patch for r in self.image_resolution):
            raise ValueError(
                f"image_resolution {self.image_resolution} must be divisible by the patch size "
                f"{patch} of vision_variant {self.vision_variant!r}."
            )
        if not self.image_keys:
            raise ValueError("image_keys must name at least one camera.")

    # Derived sizes -------------------------------------------------------------------------

    @property
    def paligemma(self) -> GemmaConfig:
        return get_gemma_config(self.paligemma_variant)

    @property
    def action_expert(self) -> GemmaConfig:
        return get_gemma_config(self.action_expert_variant)

    @property
    def vision(self) -> VisionConfig:
        return get_vision_config(self.vision_variant)

    @property
    def tokens_per_image(self) -> int:
        h, w = self.image_resolution
        return (h // self.vision.patch_size) * (w // self.vision.patch_size)

    @property
    def prefix_len(self) -> int:
        """Prefix tokens when every camera is encoded: cameras x tokens_per_image + prompt."""
        return len(self.image_keys) * self.tokens_per_image + self.max_token_len

    @property
    def suffix_len(self) -> int:
        """Action tokens, plus the state token for Pi0 (Pi0.5 puts the state in the prompt)."""
        return self.action_horizon + (0 if self.pi05 else 1)

    # Presets ---------------------------------------------------------------------------------

    @classmethod
    def full(cls, *, pi05: bool = False, **overrides) -> Pi0Config:
        """The released Pi0 / Pi0.5 size: SigLIP So400m/14 + Gemma 2B + Gemma 300M expert."""
        return cls(pi05=pi05, **{"max_token_len": 200 if pi05 else 48, **overrides})

    @classmethod
    def dummy(cls, *, pi05: bool = False, **overrides) -> Pi0Config:
        """openpi's debug size: dummy Gemmas (width 64), but the full So400m vision tower."""
        base = {
            "paligemma_variant": "dummy",
            "action_expert_variant": "dummy",
            "max_token_len": 200 if pi05 else 48,
        }
        return cls(pi05=pi05, **{**base, **overrides})

    @classmethod
    def tiny(cls, *, pi05: bool = False, **overrides) -> Pi0Config:
        """A model that runs in well under a second on CPU (unit tests, demos)."""
        base = {
            "paligemma_variant": "tiny",
            "action_expert_variant": "tiny_expert",
            "vision_variant": "tiny",
            "vocab_size": 1024,
            "image_resolution": (32, 32),
            "action_horizon": 10,
            "max_token_len": 16,
            "dtype": "float32",
        }
        return cls(pi05=pi05, **{**base, **overrides})

    @classmethod
    def small(cls, *, pi05: bool = False, **overrides) -> Pi0Config:
        """A CPU-sized model (~30M parameters): SigLIP S/16 on 112x112 images, two 4-layer
        Gemmas of width 256 / 128, a 1,024-token vocabulary, float32."""
        base = {
            "paligemma_variant": "small",
            "action_expert_variant": "small_expert",
            "vision_variant": "S/16",
            "vocab_size": 1024,
            "image_resolution": (112, 112),
            "action_horizon": 10,
            "max_token_len": 16,
            "dtype": "float32",
        }
        return cls(pi05=pi05, **{**base, **overrides})

    @classmethod
    def mini(cls, *, pi05: bool = False, **overrides) -> Pi0Config:
        """The LIBERO CPU size (~1M parameters, scripts/make_pi0_libero.py): a 2-layer ViT of
        width 64 on 64x64 images in 16x16 patches (16 tokens a camera), two 3-layer Gemmas of
        width 64 / 128, a 256-token vocabulary, 16-dim actions and state (the LIBERO state plus
        object poses fits), 16-step chunks, float32. Sized so that a 30-minute CPU run trains it
        and the DSRL loop's base-policy queries cost little next to rendering."""
        base = {
            "paligemma_variant": "mini",
            "action_expert_variant": "mini_expert",
            "vision_variant": "xs/16",
            "vocab_size": 256,
            "image_resolution": (64, 64),
            "action_dim": 16,
            "action_horizon": 16,
            "max_token_len": 24,
            "dtype": "float32",
        }
        return cls(pi05=pi05, **{**base, **overrides})

    @classmethod
    def from_name(cls, variant: str, **overrides) -> Pi0Config:
        """`full` (alias `pi0`), `dummy`, `tiny`, `small`, `mini`, and `pi05_full` (alias `pi05`), `pi05_dummy`,
        `pi05_tiny`; keyword overrides replace fields, e.g. `from_name("full", action_horizon=10)`."""
        name = {"pi0": "full", "pi05": "pi05_full"}.get(variant, variant)
        pi05 = name.startswith("pi05_")
        size = name.removeprefix("pi05_")
        makers = {
            "full": cls.full,
            "dummy": cls.dummy,
            "tiny": cls.tiny,
            "small": cls.small,
            "mini": cls.mini,
        }
        if size not in makers:
            raise ValueError(
                f"Unknown Pi0 variant {variant!r}; choose one of pi0, full, dummy, tiny, small, "
                "mini, pi05, pi05_full, pi05_dummy, pi05_tiny, pi05_small, pi05_mini."
            )
        unknown = set(overrides) - {f.name for f in dataclasses.fields(cls)}
        if unknown:
            raise ValueError(f"Unknown Pi0Config fields {sorted(unknown)}.")
        return makers[size](pi05=overrides.pop("pi05", pi05), **overrides)

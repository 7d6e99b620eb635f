"""The learning choices both DSRL learners share (SACConfig); defaults are the reference's LIBERO
values. DSRL-NA's config adds its own fields to these (dsrl.agents.noise_aliasing.config). How an
update block executes on the backend is not a learning choice: see dsrl.agents.execution."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import ml_collections

from dsrl.networks.encoders import ENCODERS, POOLINGS
from dsrl.networks.mlp import ACTIVATIONS

ENCODER_SHARING = ("separate", "shared")
REDUCTIONS = ("mean", "min")
# What one number means for a layer-list field: the reference's `--hidden_dims 128` is three
# layers of 128; any other list field given one number N is (N,).
ONE_VALUE_LAYERS = {"hidden_dims": 3}
# Keys older configs held that now belong to dsrl.agents.execution.ExecutionConfig.
EXECUTION_KEYS = ("update_mode", "scan_length")


@dataclasses.dataclass(frozen=True)
class SACConfig:
    """Validated, hashable learner config (a static field of the jitted learner).

    Build it with `cls.from_config_dict(cls.default_config())` after overriding the ConfigDict.
    """

    actor_lr: float = 1e-4
    critic_lr: float = 3e-4
    temp_lr: float = 3e-4
    hidden_dims: tuple[int, ...] = (128, 128, 128)
    # Hidden-layer activation of the actor and critic MLPs (dsrl.networks.mlp.ACTIVATIONS):
    # "relu" as in the pixel reference (jaxrl2), "tanh" as in the authors' state-based release.
    activation: str = "relu"
    num_qs: int = 10
    critic_reduction: str = "mean"
    # REDQ: the TD target reduces a random subset of this many heads; 0 = all heads (reference).
    num_min_qs: int = 0
    backup_entropy: bool = False
    # "auto" = -action_dim / 2 (the reference's LIBERO value), or a number (Aloha / real: 0).
    target_entropy: float | str = "auto"
    init_temperature: float = 1.0
    tau: float = 0.005
    encoder: str = "small"
    cnn_features: tuple[int, ...] = (32, 32, 32, 32)
    cnn_strides: tuple[int, ...] = (2, 1, 1, 1)
    cnn_padding: str = "VALID"
    encoder_pooling: str = "flatten"
    softmax_temperature: float = 1.0
    # Encoder bottleneck width (the reference's `latent_dim`, accepted as an alias). Not the size
    # of the agent's output: that is the learner's `latent_dim`, set by the steering.
    bottleneck_dim: int = 50
    # "separate": the actor has its own encoder trained by the actor loss (reference).
    # "shared": the actor reads the critic encoder's features under stop_gradient (DrQ): the
    # online critic encoder for s (actor loss, acting), the target critic encoder for s' (the
    # TD target's a'), so a step needs 5 encoder passes instead of 9.
    encoder_sharing: str = "separate"
    critic_layer_norm: bool = True
    actor_layer_norm: bool = False
    # Dropout in the critic heads (0 = none, the reference's value).
    dropout_rate: float = 0.0
    crop_padding: int = 4
    color_jitter: bool = True
    jitter_brightness: float = 0.2
    jitter_contrast: float = 0.1
    jitter_saturation: float = 0.1
    jitter_hue: float = 0.03
    jitter_prob: float = 0.8
    aug_next: bool = True
    # Critic-only updates for the first N gradient steps of the run (RLinf's `train_actor_steps`
    # idea, counted in gradient steps here): the actor and temperature start at step N. 0: off.
    train_actor_steps: int = 0
    # The original SAC's policy mean regularizer: this times the mean squared norm of the actor's
    # pre-tanh mean is added to the actor loss. 0: off (the reference).
    actor_mean_reg: float = 0.0
    # The advantage-weighted actor (AWAC): > 0 replaces SAC's reparameterised actor step by a
    # weighted fit to the replay batch's own latents, weights exp(advantage / this), the
    # advantage in the critic's units (its value at the batch's latent less its value at the
    # actor's sample). The actor then moves only towards latents that were tried, never to
    # where the critic extrapolates. 0: off (SAC's step, the reference). DSRL-SAC only.
    actor_awr_beta: float = 0.0
    # The advantage-weighted actor's exploration: its pre-tanh std, held fixed (1.0: before the
    # tanh, the base policy's own N(0, I) spread). Unused when actor_awr_beta is 0.
    actor_awr_std: float = 1.0

    def __post_init__(self):
        def need(cond: bool, msg: str):
            if not cond:
                raise ValueError(f"{type(self).__name__}: {msg}")

        for name in ("actor_lr", "critic_lr", "temp_lr", "init_temperature"):
            value = float(getattr(self, name))
            need(
                math.isfinite(value) and value > 0,
                f"{name} must be a finite number > 0, got {getattr(self, name)}; set it with "
                f"--{name} (or --config.agent.{name}), e.g. 3e-4 for a learning rate",
            )
        need(0 < self.tau <= 1, f"tau must be in (0, 1], got {self.tau}")
        need(
            len(self.hidden_dims) > 0 and all(int(h) > 0 for h in self.hidden_dims),
            f"hidden_dims must be non-empty positive sizes, got {self.hidden_dims}",
        )
        need(
            self.activation in ACTIVATIONS,
            f"activation must be one of {sorted(ACTIVATIONS)}, got {self.activation!r}",
        )
        need(int(self.num_qs) >= 1, f"num_qs must be >= 1, got {self.num_qs}")
        need(
            0 <= int(self.num_min_qs) <= int(self.num_qs),
            f"num_min_qs (REDQ subset) must be in [0, num_qs={self.num_qs}], got {self.num_min_qs}",
        )
        need(
            self.critic_reduction in REDUCTIONS,
            f"critic_reduction must be one of {REDUCTIONS}, got {self.critic_reduction!r}",
        )
        need(
            self.encoder in ENCODERS, f"unknown encoder {self.encoder!r}; choose one of {ENCODERS}"
        )
        need(
            self.encoder_pooling in POOLINGS,
            f"encoder_pooling must be one of {POOLINGS}, got {self.encoder_pooling!r}",
        )
        need(
            len(self.cnn_features) > 0 and all(int(f) > 0 for f in self.cnn_features),
            f"cnn_features must be non-empty positive channel counts, got {self.cnn_features}",
        )
        if self.encoder == "small":
            need(
                len(self.cnn_strides) == len(self.cnn_features),
                f"cnn_strides {self.cnn_strides} must have one entry per cnn_features layer "
                f"{self.cnn_features}",
            )
            need(
                all(int(s) > 0 for s in self.cnn_strides),
                f"cnn_strides must be > 0: {self.cnn_strides}",
            )
        need(
            self.cnn_padding in ("VALID", "SAME"),
            f"cnn_padding must be VALID or SAME, got {self.cnn_padding!r}",
        )
        need(int(self.bottleneck_dim) > 0, f"bottleneck_dim must be > 0, got {self.bottleneck_dim}")
        need(
            self.encoder_sharing in ENCODER_SHARING,
            f"encoder_sharing must be one of {ENCODER_SHARING}, got {self.encoder_sharing!r}",
        )
        need(0 <= self.dropout_rate < 1, f"dropout_rate must be in [0, 1), got {self.dropout_rate}")
        need(int(self.crop_padding) >= 0, f"crop_padding must be >= 0, got {self.crop_padding}")
        need(
            math.isfinite(float(self.actor_mean_reg)) and float(self.actor_mean_reg) >= 0,
            f"actor_mean_reg must be a finite number >= 0 (0: off), got {self.actor_mean_reg}",
        )
        need(
            math.isfinite(float(self.actor_awr_beta)) and float(self.actor_awr_beta) >= 0,
            f"actor_awr_beta must be a finite number >= 0 (0: SAC's actor step), got "
            f"{self.actor_awr_beta}",
        )
        need(
            math.isfinite(float(self.actor_awr_std)) and float(self.actor_awr_std) > 0,
            f"actor_awr_std must be a finite number > 0 (the pre-tanh std), got "
            f"{self.actor_awr_std}",
        )
        need(
            int(self.train_actor_steps) >= 0,
            f"train_actor_steps must be >= 0 (0: the actor updates from the first step), got "
            f"{self.train_actor_steps}",
        )
        need(0 <= self.jitter_prob <= 1, f"jitter_prob must be in [0, 1], got {self.jitter_prob}")
        if isinstance(self.target_entropy, str) and self.target_entropy != "auto":
            try:
                float(self.target_entropy)
            except ValueError:
                raise ValueError(
                    f"{type(self).__name__}: target_entropy must be 'auto' or a number, got "
                    f"{self.target_entropy!r}"
                ) from None

    def resolved_target_entropy(self, action_dim: int) -> float:
        if self.target_entropy == "auto":
            return -action_dim / 2.0
        return float(self.target_entropy)

    @classmethod
    def from_config_dict(cls, config: ml_collections.ConfigDict | Mapping[str, Any]) -> SACConfig:
        """ConfigDict -> config; unknown keys are an error (a typo must not be ignored)."""
        values = dict(config.to_dict() if hasattr(config, "to_dict") else config)
        moved = sorted(set(values) & set(EXECUTION_KEYS))
        if moved:
            raise ValueError(
                f"{cls.__name__}: {moved} are not learning choices any more; set them in the "
                "execution settings (dsrl.agents.execution.ExecutionConfig(mode=..., "
                "scan_length=...), --config.execution.mode=...)"
            )
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - set(fields))
        if unknown:
            raise ValueError(
                f"{cls.__name__}: unknown config keys {unknown}; valid keys are {sorted(fields)}"
            )
        for name, value in values.items():
            kind = fields[name].type
            if kind == "int":
                values[name] = int(value)
            elif kind == "tuple[int, ...]":
                if isinstance(value, int):
                    value = (value,) * ONE_VALUE_LAYERS.get(name, 1)
                values[name] = tuple(int(v) for v in value)
        return cls(**values)

    @classmethod
    def default_config(cls) -> ml_collections.ConfigDict:
        """The defaults as an overridable ConfigDict."""
        values: dict[str, Any] = dataclasses.asdict(cls())
        # Either "auto" or a number: an untyped field, so `config.target_entropy = 0.0` works.
        values["target_entropy"] = ml_collections.FieldReference("auto", field_type=object)
        return ml_collections.ConfigDict(values)

"""NoiseAliasingConfig: the DSRL-SAC learner settings plus the DSRL-NA-specific ones.

The shared settings (critic heads and reduction, entropy backup, target entropy, encoder,
augmentation, widths) default to SACConfig's, so a preset compares the two algorithms on
equal terms. The official DSRL-NA code (SB3, Robomimic) uses 2 heads reduced by min, entropy
backup and target entropy 0: set `num_qs=2, critic_reduction="min", backup_entropy=True,
target_entropy=0.0` to match it (on the demo those settings did not reach 0.9 success in 10k env
steps; see docs/dsrl_na.md). The NA-specific defaults are the official ones: 10 distillation
steps per 20 critic steps, distillation matched head by head.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from dsrl.agents.config import SACConfig

DISTILL_TARGETS = ("per_head", "mean")
# Aliases stored per transition when `num_aliases` is "auto" and the base policy has no pure-JAX
# sampler (Pi0). They share the query's prefix pass: 16 cost 1.33x a plain query on the `dummy`
# Pi0 (CPU), 2.9x by FLOPs on the full one (K = 4: 1.47x); see docs/dsrl_na.md.
AUTO_ALIASES = 16
NOISE_CRITIC_ENCODERS = ("separate", "shared")


@dataclasses.dataclass(frozen=True)
class NoiseAliasingConfig(SACConfig):
    """Validated, hashable DSRL-NA learner config (a static field of the jitted learner).

    `num_qs`, `critic_reduction`, `num_min_qs`, `critic_layer_norm`, `dropout_rate` and `tau`
    describe the action-space critic Q^A; the noise-space critic Q^W has the same number of heads
    and widths, and no target network.
    """

    # Q^W learning rate (the official code uses one lr for every network).
    noise_critic_lr: float = 3e-4
    # Distillation steps per `utd` critic/actor steps (official: 10 per 20). `update(batches)`
    # with K batches runs K critic/actor steps, then round(K * noise_critic_grad_steps / utd)
    # (at least 1) distillation steps.
    utd: int = 20
    noise_critic_grad_steps: int = 10
    # "per_head": Q^W head i regresses on Q^A head i (official); "mean": every Q^W head regresses
    # on the mean over Q^A heads (LeRobot).
    distill_target: str = "per_head"
    # Clip the fresh distillation noise w ~ N(0, I) to +-action_magnitude, the actor's range. The
    # official code does not clip (Q^W then also sees noise the actor can never emit).
    distill_noise_clip: bool = False
    # Also regress Q^W on each state's own transition: Q^W(s, z_taken) <- Q^A(s, a_taken), the
    # latent the loop executed and the chunk it produced (both in the buffer), beside the M fresh
    # noises or K stored aliases. Q^A is fitted on exactly those chunks, so this is the one pair
    # per state where its value is in-sample rather than extrapolated; when the actor's latents
    # are few and far from N(0, I) (held exploration) Q^W otherwise learns only Q^A's
    # extrapolation (docs/dsrl_na.md, "In-sample distillation"). Not in the official code.
    distill_taken: bool = False
    # "separate": Q^W has its own encoder, trained by the distillation loss (official: separate
    # networks). "shared": Q^W reads Q^A's encoder features under stop_gradient (cheaper).
    noise_critic_encoder: str = "separate"
    # Fresh noises per buffer state in one distillation step: the step regresses Q^W on
    # B states x M noises (the encoders run once per state, the base policy and the critic heads
    # on all B * M pairs). M = 1 is the official code. More noises per state cover the noise
    # space around each state in one step, which is what Q^W is distilled for.
    distill_noises_per_state: int = 1
    # K aliases stored per transition. K = 0: each distillation step runs the base policy inside
    # the update on fresh noise, and so does the Q^A target (needs a pure-JAX sampler, e.g. the
    # demo's flow MLP). K > 0: the loop draws K latents z ~ N(0, I) at each query and stores them
    # with the executed part of their chunks, computed in the query's own base-policy call (Pi0:
    # one prefix pass for all 1 + K noises); each distillation step regresses Q^W on the
    # B states x K stored aliases, and the Q^A target bootstraps through a target copy of Q^W.
    # No base-policy call inside the update. -1 ("auto"): 0 for a base policy with a pure-JAX
    # sampler, AUTO_ALIASES otherwise (Pi0, local or remote).
    num_aliases: int = -1

    def __post_init__(self):
        super().__post_init__()

        def need(cond: bool, msg: str):
            if not cond:
                raise ValueError(f"NoiseAliasingConfig: {msg}")

        need(
            float(self.actor_awr_beta) == 0,
            f"actor_awr_beta={self.actor_awr_beta}: the advantage-weighted actor fits the latents "
            "the replay buffer stores, and DSRL-NA stores the executed action chunks instead; "
            "use it with --algorithm dsrl_sac, or leave actor_awr_beta at 0",
        )
        need(
            float(self.noise_critic_lr) > 0,
            f"noise_critic_lr must be > 0, got {self.noise_critic_lr}",
        )
        need(int(self.utd) >= 1, f"utd must be >= 1, got {self.utd}")
        need(
            int(self.noise_critic_grad_steps) >= 1,
            f"noise_critic_grad_steps must be >= 1, got {self.noise_critic_grad_steps}",
        )
        need(
            int(self.distill_noises_per_state) >= 1,
            f"distill_noises_per_state must be >= 1, got {self.distill_noises_per_state}",
        )
        need(
            int(self.num_aliases) >= -1,
            f"num_aliases must be >= 0 (stored aliases per transition) or -1 (auto), got "
            f"{self.num_aliases}; set --num_aliases",
        )
        need(
            int(self.num_aliases) <= 0 or int(self.distill_noises_per_state) == 1,
            f"distill_noises_per_state={self.distill_noises_per_state} draws fresh noises inside "
            f"the update, but with num_aliases={self.num_aliases} each distillation step uses the "
            "K stored aliases of each state: leave distill_noises_per_state at 1, or set "
            "num_aliases=0",
        )
        need(
            self.distill_target in DISTILL_TARGETS,
            f"distill_target must be one of {DISTILL_TARGETS}, got {self.distill_target!r}",
        )
        need(
            self.noise_critic_encoder in NOISE_CRITIC_ENCODERS,
            f"noise_critic_encoder must be one of {NOISE_CRITIC_ENCODERS}, got "
            f"{self.noise_critic_encoder!r}",
        )

    def num_distill_steps(self, num_critic_steps: int) -> int:
        """Distillation steps that go with `num_critic_steps` critic/actor steps (>= 1)."""
        return max(1, round(num_critic_steps * self.noise_critic_grad_steps / self.utd))

    def resolved_num_aliases(self, has_jax_sampler: bool) -> int:
        """K for a base policy with or without a pure-JAX sampler ("auto" = -1 resolved)."""
        if int(self.num_aliases) >= 0:
            return int(self.num_aliases)
        return 0 if has_jax_sampler else AUTO_ALIASES


def default_config() -> ml_collections.ConfigDict:
    """The DSRL-NA learner settings as an overridable ConfigDict."""
    return NoiseAliasingConfig.default_config()

"""What a learner asks the training loop to store with each transition.

Every transition holds the agent's view of the env ("observations", "next_observations": "pixels"
and "state"), the agent's output (the `latent`, size `latent_dim`, which the steering maps to the
base policy's noise), "rewards", "masks" and "discounts". A learner may need more: DSRL-NA scores
the executed action chunk and re-runs the base policy on the stored base-policy observations. It
says so through `learner.transition_spec()`, and the loop stores exactly that; the loop's own
config carries no algorithm-specific field.
"""

from __future__ import annotations

import dataclasses

# Keys of the agent's observation: "pixels" is absent for a state-only agent.
PIXELS, STATE = "pixels", "state"
# Keys of a stored transition (and of a sampled batch, with leading (K, B) axes).
OBSERVATIONS = "observations"
NEXT_OBSERVATIONS = "next_observations"
LATENTS = "latents"  # the agent's output (B, latent_dim); never called "actions"
ACTION_CHUNKS = "action_chunks"  # the executed part of the base policy's chunk (query_freq, A)
NOISE = "noise"  # the base policy's noise (H, D) that produced the chunk
# DSRL-NA's stored aliases: K extra latents drawn at the query and the executed part of the chunk
# the base policy made of each, computed in the same base-policy call as the executed chunk.
ALIAS_LATENTS = "alias_latents"  # (K, latent_dim), float16
ALIAS_CHUNKS = "alias_chunks"  # (K, query_freq, A), float16
ALIAS_DTYPE = "float16"
REWARDS, MASKS, DISCOUNTS = "rewards", "masks", "discounts"
COMMON_KEYS = (OBSERVATIONS, LATENTS, REWARDS, MASKS, DISCOUNTS, NEXT_OBSERVATIONS)


@dataclasses.dataclass(frozen=True)
class TransitionSpec:
    """Fields a learner needs stored beyond `COMMON_KEYS`.

    action_chunks: also store the executed chunk ("action_chunks", (query_freq, robot action dim))
      and the noise that produced it ("noise", (H, D)).
    policy_observation_keys: base-policy observation keys stored next to the agent's "pixels" and
      "state" in "observations" and "next_observations".
    num_aliases: K > 0 also stores K aliases per transition: latents z_k ~ N(0, I) drawn at the
      query ("alias_latents") and the executed part of pi_dp(s, noise(z_k)) ("alias_chunks"),
      both float16 (z_k is drawn float16-exact, so the stored pair is consistent).
    clip_aliases: clip the alias latents to +-action_magnitude before use.
    """

    action_chunks: bool = False
    policy_observation_keys: tuple[str, ...] = ()
    num_aliases: int = 0
    clip_aliases: bool = False

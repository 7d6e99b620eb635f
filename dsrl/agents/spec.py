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

# Keys of a stored transition (and of a sampled batch, with leading (K, B) axes).
OBSERVATIONS = "observations"
NEXT_OBSERVATIONS = "next_observations"
LATENTS = "latents"  # the agent's output (B, latent_dim); never called "actions"
ACTION_CHUNKS = "action_chunks"  # the executed part of the base policy's chunk (query_freq, A)
NOISE = "noise"  # the base policy's noise (H, D) that produced the chunk
REWARDS, MASKS, DISCOUNTS = "rewards", "masks", "discounts"
COMMON_KEYS = (OBSERVATIONS, LATENTS, REWARDS, MASKS, DISCOUNTS, NEXT_OBSERVATIONS)


@dataclasses.dataclass(frozen=True)
class TransitionSpec:
    """Fields a learner needs stored beyond `COMMON_KEYS`.

    action_chunks: also store the executed chunk ("action_chunks", (query_freq, robot action dim))
      and the noise that produced it ("noise", (H, D)).
    policy_observation_keys: base-policy observation keys stored next to the agent's "pixels" and
      "state" in "observations" and "next_observations".
    """

    action_chunks: bool = False
    policy_observation_keys: tuple[str, ...] = ()

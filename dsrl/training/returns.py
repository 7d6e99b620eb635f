"""Multi-step (n-step) transitions: what the loop stores with `loop.n_step` = n > 1.

A one-step critic learns a return k queries away only after k rounds of bootstrapping through
its slowly moving target network (tau = 0.005 moves it ~1/200 of the way per gradient step), so
early in a run a success 25 queries away is invisible to it and the actor follows the critic's
noise. An n-step transition carries the next n queries' discounted rewards and bootstraps from
the state after them, which shortens that chain n-fold (the rewards come from the behaviour
policy's own latents: off-policy bias, as in the n-step SAC/DrQ-v2 variants).

Transition t of an episode becomes
  rewards   = sum_{k<m} (d_t ... d_{t+k-1}) r_{t+k}
  discounts = d_t ... d_{t+m-1}
  masks, next_observations = those of transition t+m-1
with m = min(n, queries left in the episode, queries up to and including the first terminal one)
and d the stored per-transition discounts (discount ** env steps of the chunk). So a terminal
within the window stops it (mask 0, no bootstrap) and the tail of an episode cut by its time
limit keeps bootstrapping (mask 1) from its last observation. Every other field (observations,
latents, executed chunks, aliases) stays transition t's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dsrl.agents import spec as keys


def n_step_transitions(transitions: Sequence[dict[str, Any]], n: int) -> list[dict[str, Any]]:
    """One episode's stored transitions, in order, as n-step transitions (new dicts; n = 1
    returns them unchanged). Raises on n < 1 or on a terminal transition before the last."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"n_step must be an integer >= 1, got {n!r}")
    masks = [float(t[keys.MASKS]) for t in transitions]
    if any(m == 0.0 for m in masks[:-1]):
        raise ValueError(
            "n_step_transitions takes ONE episode in order: a terminal transition (mask 0) "
            f"came at position {masks.index(0.0)} of {len(masks)}"
        )
    if n == 1:
        return list(transitions)
    out = []
    for t, first in enumerate(transitions):
        window = transitions[t : t + n]
        reward, discount = 0.0, 1.0
        for step in window:
            reward += discount * float(step[keys.REWARDS])
            discount *= float(step[keys.DISCOUNTS])
        last = window[-1]
        out.append(
            first
            | {
                keys.REWARDS: type(first[keys.REWARDS])(reward),
                keys.DISCOUNTS: type(first[keys.DISCOUNTS])(discount),
                keys.MASKS: last[keys.MASKS],
                keys.NEXT_OBSERVATIONS: last[keys.NEXT_OBSERVATIONS],
            }
        )
    return out

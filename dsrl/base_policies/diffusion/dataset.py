"""Demonstration episodes -> (observation, action chunk) training pairs, as DPPO makes them.

DPPO's pretraining data (`agent/dataset/sequence.py`, StitchedSequenceDataset, irom-lab/dppo
7b10df6) is one npz of stitched episodes: `states` (sum L, obs_dim), `actions` (sum L,
action_dim) and `traj_lengths` (episodes,). A training pair starts at every step t of an episode
whose chunk actions[t : t + horizon] fits inside it (t <= L - horizon); its condition is the last
`cond_steps` states up to t, oldest first, repeating the episode's first state before its start.
DPPO normalizes the data beforehand (its normalization.npz); `train_diffusion_policy` can fit
that normalization itself (`BCConfig.normalize`).
"""

from __future__ import annotations

import pathlib

import numpy as np


def chunk_episodes(
    states: np.ndarray,
    actions: np.ndarray,
    traj_lengths: np.ndarray,
    horizon_steps: int,
    cond_steps: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(N, cond_steps * obs_dim) conditions and (N, horizon_steps, action_dim) chunks."""
    states = np.asarray(states, np.float32)
    actions = np.asarray(actions, np.float32)
    lengths = np.asarray(traj_lengths, np.int64).reshape(-1)
    if states.ndim != 2 or actions.ndim != 2 or len(states) != len(actions):
        raise ValueError(
            f"states {states.shape} and actions {actions.shape} must be (T, obs_dim) and "
            "(T, action_dim) with the same T (episodes stitched end to end)."
        )
    if (lengths < 1).any() or lengths.sum() > len(states):
        raise ValueError(
            f"traj_lengths sum to {int(lengths.sum())} over {len(states)} steps (each >= 1 and "
            "their sum at most the number of steps)."
        )
    if horizon_steps < 1 or cond_steps < 1:
        raise ValueError("horizon_steps and cond_steps must be >= 1.")
    conds, chunks = [], []
    episode_start = 0
    for length in lengths:
        starts = np.arange(episode_start, episode_start + length - horizon_steps + 1)
        if len(starts):
            # History index t - k for k = cond_steps-1..0, clamped to the episode's first step.
            offsets = np.arange(cond_steps - 1, -1, -1)
            history = np.maximum(starts[:, None] - offsets[None, :], episode_start)
            conds.append(states[history].reshape(len(starts), -1))
            chunks.append(actions[starts[:, None] + np.arange(horizon_steps)[None, :]])
        episode_start += int(length)
    if not conds:
        raise ValueError(f"No episode is at least horizon_steps={horizon_steps} long.")
    return np.concatenate(conds), np.concatenate(chunks)


def load_dppo_dataset(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """DPPO's train.npz: {"states", "actions", "traj_lengths"} (other keys ignored)."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"No dataset at {path} (DPPO's train.npz format).")
    with np.load(path, allow_pickle=False) as data:
        missing = [k for k in ("states", "actions", "traj_lengths") if k not in data.files]
        if missing:
            raise ValueError(
                f"{path} lacks {missing}; DPPO's train.npz has states, actions, traj_lengths."
            )
        return {k: np.asarray(data[k]) for k in ("states", "actions", "traj_lengths")}

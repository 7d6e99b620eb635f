"""Replay storage and data augmentation for the RL agent."""

from dsrl.data.replay_buffer import ReplayBuffer

__all__ = ["ReplayBuffer"]

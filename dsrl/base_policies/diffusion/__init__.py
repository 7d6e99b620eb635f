"""DPPO-style diffusion base policies (DiffusionMLP + deterministic DDIM) in JAX; see docs/diffusion.md."""

from dsrl.base_policies.diffusion.dataset import chunk_episodes, load_dppo_dataset
from dsrl.base_policies.diffusion.ddim import SamplerConfig, ddim_sample, ddpm_loss
from dsrl.base_policies.diffusion.dppo import Normalization, load_dppo_params
from dsrl.base_policies.diffusion.network import DiffusionMLP, NetworkConfig
from dsrl.base_policies.diffusion.policy import DiffusionMLPPolicy, DiffusionPolicyConfig
from dsrl.base_policies.diffusion.release import RELEASE_TASKS, release_config
from dsrl.base_policies.diffusion.train import BCConfig, train_diffusion_policy

__all__ = [
    "BCConfig",
    "DiffusionMLP",
    "DiffusionMLPPolicy",
    "DiffusionPolicyConfig",
    "NetworkConfig",
    "Normalization",
    "RELEASE_TASKS",
    "SamplerConfig",
    "chunk_episodes",
    "ddim_sample",
    "ddpm_loss",
    "load_dppo_dataset",
    "load_dppo_params",
    "release_config",
    "train_diffusion_policy",
]

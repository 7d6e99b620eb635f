"""DPPO-style diffusion base policies (DiffusionMLP + deterministic DDIM) in JAX; see docs/diffusion.md."""

from dsrl.base_policies.diffusion.ddim import SamplerConfig, ddim_sample, ddpm_loss
from dsrl.base_policies.diffusion.dppo import Normalization, load_dppo_params
from dsrl.base_policies.diffusion.network import DiffusionMLP, NetworkConfig
from dsrl.base_policies.diffusion.policy import DiffusionMLPPolicy, DiffusionPolicyConfig

__all__ = [
    "DiffusionMLP",
    "DiffusionMLPPolicy",
    "DiffusionPolicyConfig",
    "NetworkConfig",
    "Normalization",
    "SamplerConfig",
    "ddim_sample",
    "ddpm_loss",
    "load_dppo_params",
]

"""The DSRL release's base-policy settings, and conversion of a DPPO checkpoint to a policy
directory that a run names with `base_policy.kind = "diffusion_mlp"`.

Settings from ajwagen/dsrl 8d21b9c, `cfg/gym/dsrl_*.yaml` and `cfg/robomimic/dsrl_*.yaml` (the
`model:` section, which instantiates DPPO's DiffusionMLP and samples it by DDIM, eta = 0, with
`controllable_noise`). Entries the release leaves out take DPPO's defaults: activation Mish,
no layer norm, no final-action clip.

    python -m dsrl.base_policies.diffusion.release --task hopper \
        --checkpoint state_3000.pt --normalization normalization.npz --out policies/hopper
"""

from __future__ import annotations

import argparse
import pathlib

from dsrl.base_policies.diffusion.ddim import SamplerConfig
from dsrl.base_policies.diffusion.network import NetworkConfig
from dsrl.base_policies.diffusion.policy import DiffusionMLPPolicy, DiffusionPolicyConfig

# task: (obs_dim, action_dim, horizon_steps, time_dim, mlp_dims, cond_mlp_dims, activation,
#        denoising_steps, ddim_steps)
_RELEASE = {
    "hopper": (11, 3, 4, 16, (512,) * 3, None, "ReLU", 20, 5),
    "walker2d": (17, 6, 4, 16, (512,) * 3, None, "ReLU", 20, 5),
    "halfcheetah": (17, 6, 4, 16, (512,) * 3, None, "ReLU", 20, 5),
    "lift": (19, 7, 4, 16, (512,) * 3, None, "Mish", 20, 8),
    "can": (23, 7, 4, 16, (512,) * 3, None, "Mish", 20, 8),
    "square": (23, 7, 4, 32, (1024,) * 3, (512, 64), "Mish", 100, 8),
    "transport": (59, 14, 8, 32, (2048,) * 3, None, "Mish", 100, 100),
}
RELEASE_TASKS = tuple(_RELEASE)


def release_config(task: str, state_key: str = "policy_state") -> DiffusionPolicyConfig:
    """The DiffusionMLP + DDIM configuration the DSRL release uses for `task` (cond_steps 1)."""
    if task not in _RELEASE:
        raise ValueError(f"Unknown DSRL release task {task!r}; known: {', '.join(RELEASE_TASKS)}.")
    obs, act, horizon, time_dim, mlp, cond_mlp, activation, steps, ddim = _RELEASE[task]
    network = NetworkConfig(
        action_dim=act,
        horizon_steps=horizon,
        cond_dim=obs,
        time_dim=time_dim,
        mlp_dims=mlp,
        cond_mlp_dims=cond_mlp,
        activation_type=activation,
        residual_style=True,
    )
    sampler = SamplerConfig(denoising_steps=steps, ddim_steps=ddim, denoised_clip_value=1.0)
    return DiffusionPolicyConfig(network, sampler, state_key)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--task", required=True, choices=RELEASE_TASKS)
    parser.add_argument("--checkpoint", required=True, help="DPPO's state_<epoch>.pt")
    parser.add_argument(
        "--normalization",
        default="",
        help="DPPO's normalization.npz; without it the policy reads and writes DPPO's [-1, 1] "
        "normalized observations and actions",
    )
    parser.add_argument("--weights", choices=("ema", "model"), default=None)
    parser.add_argument("--state-key", default="policy_state")
    parser.add_argument("--out", required=True, help="directory to write the policy into")
    args = parser.parse_args(argv)
    out = pathlib.Path(args.out)
    if out.exists() and any(out.iterdir()):
        parser.error(f"--out {out} exists and is not empty; name a new directory.")
    try:
        policy = DiffusionMLPPolicy.from_dppo_checkpoint(
            args.checkpoint,
            release_config(args.task, args.state_key),
            normalization=args.normalization or None,
            weights=args.weights,
        )
    except (ValueError, FileNotFoundError) as err:  # nothing written yet
        parser.exit(2, f"error: {err}\n")
    policy.save(out)
    print(f"wrote {out} (noise_shape {policy.noise_shape})")


if __name__ == "__main__":
    main()

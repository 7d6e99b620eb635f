"""Writes the DPPO parity fixture (run with torch, against a DPPO checkout; see README.md).

Usage: python make_fixture.py DPPO_CHECKOUT OUT_DIR
DPPO_CHECKOUT is a checkout of irom-lab/dppo (its `model/` package is imported from there; none
of DPPO's code is copied here). For each case this builds DPPO's own DiffusionModel with a random
DiffusionMLP, saves a DPPO-style checkpoint {"epoch", "model", "ema"} (the "model" weights are a
perturbed copy, so a loader that picks the wrong entry fails), reloads it through DPPO's
`network_path` loading, and records DPPO's DDIM output for given observations and initial noise.
"""

import json
import pathlib
import sys

import numpy as np
import torch

CASES = {
    # The DSRL release's Gym settings (residual MLP, ReLU, T = 20, 5 DDIM steps), made small.
    "residual_relu": dict(
        network=dict(
            action_dim=3,
            horizon_steps=4,
            cond_dim=11,
            time_dim=16,
            mlp_dims=[64, 64, 64],
            activation_type="ReLU",
            residual_style=True,
        ),
        sampler=dict(denoising_steps=20, ddim_steps=5, denoised_clip_value=1.0),
        eps_scale=2.0,
        noise_scale=0.2,
    ),
    # Residual with layer norms and Mish (the Robomimic default activation), T = 100, 8 steps.
    "residual_layernorm_mish": dict(
        network=dict(
            action_dim=7,
            horizon_steps=4,
            cond_dim=23,
            time_dim=32,
            mlp_dims=[64, 64, 64, 64, 64],
            cond_mlp_dims=[32, 16],
            use_layernorm=True,
            residual_style=True,
        ),
        sampler=dict(denoising_steps=100, ddim_steps=8, denoised_clip_value=1.0),
        eps_scale=1.0,
        noise_scale=0.05,
    ),
    # Plain MLP with layer norms, GELU, Tanh output, a looser x0 clip, eps and final clipping.
    "mlp_clips": dict(
        network=dict(
            action_dim=2,
            horizon_steps=3,
            cond_dim=10,
            time_dim=8,
            mlp_dims=[48, 48],
            activation_type="GELU",
            out_activation_type="Tanh",
            use_layernorm=True,
        ),
        sampler=dict(
            denoising_steps=30,
            ddim_steps=7,
            denoised_clip_value=2.0,
            eps_clip_value=1.5,
            final_action_clip_value=1.2,
        ),
        eps_scale=1.0,
        noise_scale=0.2,
    ),
}
BATCH = 6


def build(case, seed):
    from model.diffusion.diffusion import DiffusionModel
    from model.diffusion.mlp_diffusion import DiffusionMLP

    net_kwargs, sampler = case["network"], case["sampler"]
    torch.manual_seed(seed)
    network = DiffusionMLP(**net_kwargs)
    return DiffusionModel(
        network,
        horizon_steps=net_kwargs["horizon_steps"],
        obs_dim=net_kwargs["cond_dim"],
        action_dim=net_kwargs["action_dim"],
        device="cpu",
        use_ddim=True,
        **sampler,
    )


def make_case(name, case, out_dir):
    model = build(case, seed=0)
    with torch.no_grad():
        # Scale the output layer so the predicted eps matters next to x_t.
        last = [p for n, p in model.network.mlp_mean.named_parameters() if n.endswith("weight")][-1]
        last.mul_(case["eps_scale"])
    ema = {k: v.clone() for k, v in model.state_dict().items()}
    perturbed = {k: v + 0.05 * torch.randn_like(v) for k, v in ema.items()}
    ckpt = out_dir / f"{name}.pt"
    torch.save({"epoch": 7, "model": perturbed, "ema": ema}, ckpt)

    # DPPO's own loading path (picks "ema"), into a differently initialised model.
    loaded = build({**case, "sampler": {**case["sampler"], "network_path": str(ckpt)}}, seed=1)
    loaded.eval()
    for k, v in ema.items():
        assert torch.equal(loaded.state_dict()[k], v), k

    rng = np.random.default_rng(123)
    net = case["network"]
    obs = rng.uniform(-1.0, 1.0, (BATCH, net["cond_dim"])).astype(np.float32)
    # An untrained eps is no denoiser: DDIM then scales x_T by ~1/sqrt(alphas_cumprod[t_max]) and
    # most outputs would sit on the x0 clip. A smaller x_T keeps most of them inside it (the
    # clips still act on some), so the comparison covers unclipped values too.
    noise = case["noise_scale"] * rng.standard_normal(
        (BATCH, net["horizon_steps"], net["action_dim"])
    )
    noise = noise.astype(np.float32)
    cond = {"state": torch.from_numpy(obs)[:, None, :]}

    # DPPO's forward draws x_T with torch.randn; hand it our noise instead (the DSRL release's
    # controllable_noise does the same), and run DPPO's forward unchanged.
    real_randn = torch.randn
    torch.randn = lambda *a, **k: torch.from_numpy(noise.copy())
    try:
        with torch.no_grad():
            actions = loaded(cond, deterministic=True).trajectories.numpy()
    finally:
        torch.randn = real_randn

    # One network call, to localise a failure to the network or the sampler.
    t = torch.arange(BATCH) * (case["sampler"]["denoising_steps"] // BATCH)
    with torch.no_grad():
        eps = loaded.network(torch.from_numpy(noise), t, cond=cond).numpy()
    np.savez(
        out_dir / f"{name}.npz",
        obs=obs,
        noise=noise,
        actions=actions.astype(np.float32),
        eps_t=t.numpy().astype(np.int32),
        eps=eps.astype(np.float32),
    )
    (out_dir / f"{name}.json").write_text(json.dumps(case, indent=2) + "\n")
    saturated = float(
        np.mean(np.isclose(np.abs(actions), case["sampler"].get("final_action_clip_value") or 1.0))
    )
    print(
        f"{name}: actions {actions.shape}, range [{actions.min():.3f}, {actions.max():.3f}], "
        f"fraction at the clip {saturated:.2f}"
    )


def main():
    dppo, out_dir = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
    sys.path.insert(0, str(dppo))
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.set_default_dtype(torch.float32)
    for name, case in CASES.items():
        make_case(name, case, out_dir)


if __name__ == "__main__":
    main()

"""Makes tests/data/pi0_loss_openpi.npz: openpi's own `compute_loss` on our tiny Pi0 / Pi0.5.

Two stages, because openpi pins jax 0.5 / flax 0.10 and dsrl needs newer ones:

  1. In dsrl's venv: random tiny parameters (our `init_params`, seeded) and a batch.
       python scripts/make_pi0_loss_fixture.py export --work /tmp/pi0_fixture
  2. In a venv with openpi's JAX model (no GPU, no checkpoint needed), e.g.
       python3.11 -m venv /tmp/openpi-venv && /tmp/openpi-venv/bin/pip install jax==0.5.3 \
         jaxlib==0.5.3 flax==0.10.2 augmax==0.4.1 jaxtyping==0.2.36 beartype==0.19.0 einops \
         "numpy<2" orbax-checkpoint==0.11.13 safetensors ml_collections typing_extensions
       PYTHONPATH=<openpi checkout>/src /tmp/openpi-venv/bin/python \
         scripts/make_pi0_loss_fixture.py openpi --work /tmp/pi0_fixture \
         --out tests/data/pi0_loss_openpi.npz
     It builds openpi's `Pi0` at our tiny size (its Gemma config, SigLIP variant and vocabulary
     size are swapped for the tiny ones; torch, which openpi imports but the JAX model never
     uses, is stubbed), loads our parameters, and records `compute_loss(rng, obs, actions)` with
     the noise and time openpi drew from rng, and for Pi0 also with train=True (openpi's image
     augmentation, augmax 0.4.1 as openpi's uv.lock pins).

The fixture holds the batch, the key, openpi's noise, time and loss; the test rebuilds the
parameters from the seed. Nothing from openpi is stored in this repository.
"""

from __future__ import annotations

import argparse
import pathlib
import sys
import types

import numpy as np

SEED = 3
BATCH = 2
VARIANTS = {"pi0": False, "pi05": True, "pi0_lora": False}
# LoRA on both Gemmas (alpha = rank, as openpi's presets); large init so that it matters.
LORA = {"vlm_rank": 4, "vlm_alpha": 4.0, "expert_rank": 2, "expert_alpha": 2.0, "init_stddev": 0.1}
# Our tiny sizes with 224x224 images (openpi resizes anything else) and 32-pixel patches.
TINY = {"image_resolution": (224, 224), "vision_variant": "mu/32"}
# openpi's compute_loss(train=True) (image augmentation) is recorded for these variants, with a
# 32x32 centre patch of the augmented images (a whole 224x224 image would not compress).
AUGMENTED = ("pi0",)
AUGMENTED_CAMERAS = ("base_0_rgb", "left_wrist_0_rgb")
CENTRE = (slice(96, 128), slice(96, 128))


def tiny_config(pi05: bool):
    from dsrl.base_policies.pi0.config import Pi0Config

    return Pi0Config.tiny(pi05=pi05, **TINY)


def make_params(name: str):
    """Our tiny parameters for a fixture variant (the test rebuilds them the same way)."""
    from dsrl.base_policies.pi0 import model
    from dsrl.base_policies.pi0.training import lora

    params = model.init_params(tiny_config(VARIANTS[name]), SEED)
    if name.endswith("_lora"):
        params = lora.add_lora(params, lora.LoraConfig(**LORA), seed=SEED)
    return params


def export(work: pathlib.Path) -> None:
    from dsrl.base_policies.pi0 import checkpoint, model

    work.mkdir(parents=True, exist_ok=True)
    for name, pi05 in VARIANTS.items():
        cfg = tiny_config(pi05)
        params = make_params(name)
        flat = {"/".join(p): np.asarray(v) for p, v in checkpoint.flatten(params).items()}
        np.savez(work / f"params_{name}.npz", **flat)
        obs = model.fake_observation(
            cfg, BATCH, seed=SEED, masked_cameras=("right_wrist_0_rgb",), prompt_len=11
        )
        rng = np.random.default_rng(SEED)
        # Blocky 8x8-pixel images (28x28 random levels upsampled) keep the fixture small.
        for k, v in obs.images.items():
            if obs.image_masks[k].any():
                coarse = rng.integers(0, 256, (BATCH, 28, 28, 3)).astype(np.float32)
                v[...] = np.repeat(np.repeat(coarse, 8, axis=1), 8, axis=2) / 127.5 - 1.0
        batch = {f"image/{k}": v for k, v in obs.images.items()}
        batch |= {f"image_mask/{k}": v for k, v in obs.image_masks.items()}
        batch |= {
            "state": obs.state,
            "tokenized_prompt": obs.tokenized_prompt,
            "tokenized_prompt_mask": obs.tokenized_prompt_mask,
            "actions": rng.normal(size=(BATCH, cfg.action_horizon, cfg.action_dim)).astype(
                np.float32
            ),
            "key": np.asarray([0, SEED + 100], np.uint32),  # raw threefry key data
        }
        np.savez(work / f"batch_{name}.npz", **batch)
    print(f"wrote parameters and batches to {work}")


def _stub_torch() -> None:
    """openpi's model.py imports torch and its PyTorch port at module level; the JAX path never
    calls them, so empty modules are enough."""
    names = ("torch", "torch.nn", "torch.nn.functional", "safetensors.torch", "transformers")
    for mod in (*names, "openpi.models_pytorch"):
        sys.modules.setdefault(mod, types.ModuleType(mod))
    sys.modules["torch"].Tensor = type("Tensor", (), {})  # only named in type aliases
    port = types.ModuleType("openpi.models_pytorch.pi0_pytorch")
    sys.modules["openpi.models_pytorch.pi0_pytorch"] = port
    sys.modules["openpi.models_pytorch"].pi0_pytorch = port


def _openpi_at_tiny_size() -> None:
    """Makes openpi build our tiny sizes: its Gemma configs (plus LoRA variants), vocabulary
    size and SigLIP variant are swapped for the tiny ones."""
    from openpi.models import gemma as o_gemma
    from openpi.models import lora as o_lora
    from openpi.models import siglip as o_siglip

    real_get_config = o_gemma.get_config
    tiny = {
        "tiny": o_gemma.Config(
            width=48, depth=2, mlp_dim=96, num_heads=2, num_kv_heads=1, head_dim=16
        ),
        "tiny_expert": o_gemma.Config(
            width=32, depth=2, mlp_dim=64, num_heads=2, num_kv_heads=1, head_dim=16
        ),
    }
    for key, rank in (("tiny", LORA["vlm_rank"]), ("tiny_expert", LORA["expert_rank"])):
        cfg = o_lora.LoRAConfig(rank=rank, alpha=float(rank))
        tiny[f"{key}_lora"] = tiny[key].__class__(
            **{**vars(tiny[key]), "lora_configs": {"attn": cfg, "ffn": cfg}}
        )
    o_gemma.get_config = lambda v: tiny[v] if v in tiny else real_get_config(v)
    o_gemma.PALIGEMMA_VOCAB_SIZE = 1024
    real_siglip = o_siglip.Module
    o_siglip.Module = lambda **kw: real_siglip(**{**kw, "variant": TINY["vision_variant"]})


def run_openpi(work: pathlib.Path, out: pathlib.Path) -> None:
    _stub_torch()
    import jax
    from flax import nnx
    from openpi.models import model as o_model
    from openpi.models import pi0_config as o_cfg

    _openpi_at_tiny_size()
    fixture = {}
    for name, pi05 in VARIANTS.items():
        suffix = "_lora" if name.endswith("_lora") else ""
        cfg = o_cfg.Pi0Config(
            paligemma_variant="tiny" + suffix,
            action_expert_variant="tiny_expert" + suffix,
            action_horizon=10,
            max_token_len=16,
            dtype="float32",
            pi05=pi05,
        )
        model = cfg.create(jax.random.key(0))
        graphdef, state = nnx.split(model)
        flat = dict(np.load(work / f"params_{name}.npz"))
        params: dict = {}
        for path, value in flat.items():
            node = params
            *head, leaf = path.split("/")
            for key in head:
                node = node.setdefault(key, {})
            node[leaf] = jax.numpy.asarray(value)
        state.replace_by_pure_dict(params)
        model = nnx.merge(graphdef, state)
        batch = dict(np.load(work / f"batch_{name}.npz"))
        arrays = {k: jax.numpy.asarray(v) for k, v in batch.items()}  # openpi type-checks
        obs = o_model.Observation(
            images={k[6:]: v for k, v in arrays.items() if k.startswith("image/")},
            image_masks={k[11:]: v for k, v in arrays.items() if k.startswith("image_mask/")},
            state=arrays["state"],
            tokenized_prompt=arrays["tokenized_prompt"],
            tokenized_prompt_mask=arrays["tokenized_prompt_mask"],
        )
        drawn = {}
        real_normal, real_beta = jax.random.normal, jax.random.beta

        def recorder(name, real, drawn=drawn):
            # Parameter initialisers also call jax.random under jit: keep concrete draws only.
            def draw(*a, **kw):
                value = real(*a, **kw)
                if not isinstance(value, jax.core.Tracer):
                    drawn[name] = value
                return value

            return draw

        normal, beta = recorder("noise", real_normal), recorder("beta", real_beta)

        jax.random.normal, jax.random.beta = normal, beta
        try:
            key = jax.random.wrap_key_data(batch["key"])
            loss = model.compute_loss(key, obs, arrays["actions"], train=False)
        finally:
            jax.random.normal, jax.random.beta = real_normal, real_beta
        if name in AUGMENTED:  # openpi's train=True: augmax on the images first
            loss_aug = model.compute_loss(key, obs, arrays["actions"], train=True)
            prep = o_model.preprocess_observation(jax.random.split(key, 3)[0], obs, train=True)
            fixture[f"{name}/loss_augmented"] = np.asarray(loss_aug)
            for cam in AUGMENTED_CAMERAS:
                fixture[f"{name}/augmented/{cam}"] = np.asarray(prep.images[cam])[
                    (slice(None), *CENTRE)
                ]
            print(name, "openpi loss, train=True", np.asarray(loss_aug).mean())
        fixture |= {f"{name}/{k}": v for k, v in batch.items()}
        fixture[f"{name}/noise"] = np.asarray(drawn["noise"])
        fixture[f"{name}/time"] = np.asarray(drawn["beta"]) * 0.999 + 0.001
        fixture[f"{name}/loss"] = np.asarray(loss)
        print(name, "openpi loss", np.asarray(loss).mean())
    fixture["seed"] = np.asarray(SEED)
    out.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(out, **fixture)
    print(f"wrote {out}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage", choices=["export", "openpi"])
    parser.add_argument("--work", type=pathlib.Path, default=pathlib.Path("/tmp/pi0_fixture"))
    parser.add_argument(
        "--out", type=pathlib.Path, default=pathlib.Path("tests/data/pi0_loss_openpi.npz")
    )
    args = parser.parse_args()
    if args.stage == "export":
        export(args.work)
    else:
        run_openpi(args.work, args.out)


if __name__ == "__main__":
    main()

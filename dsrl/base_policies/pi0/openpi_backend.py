"""Optional backend: openpi's own `Policy` behind our BasePolicy contract (for parity checks).

Needs the `openpi` package (the `openpi/` git submodule, pinned to a commit whose `Policy.infer`
accepts `noise`): `git submodule update --init openpi && pip install -e openpi` (openpi pins its
own jax/flax versions: use a separate virtual environment). Nothing else in dsrl imports it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from dsrl.base_policies.pi0 import transforms as tf

_INSTALL_HINT = (
    "The openpi backend needs the `openpi` package: run `git submodule update --init openpi` "
    "then `pip install -e openpi` in a separate virtual environment (openpi pins its own jax and "
    "flax). Our own Pi0Policy (dsrl.base_policies.pi0.Pi0Policy) needs no openpi."
)


def _import_openpi():
    try:
        from openpi.policies import policy_config
        from openpi.training import config as train_config
    except ImportError as e:
        raise ImportError(f"{_INSTALL_HINT} ({e})") from e
    return policy_config, train_config


def to_openpi_observation(robot: str, obs: Mapping[str, Any]) -> dict:
    """One unbatched robot observation (our keys, see transforms.py) -> openpi's input dict."""
    if robot == "libero":
        return {
            "observation/image": np.asarray(
                obs.get("agentview_image", obs.get("observation/image"))
            ),
            "observation/wrist_image": np.asarray(
                obs.get("wrist_image", obs.get("observation/wrist_image"))
            ),
            "observation/state": np.asarray(obs.get("observation/state", obs.get("state"))),
            **({"prompt": obs["prompt"]} if "prompt" in obs else {}),
        }
    if robot in ("aloha", "aloha_real"):
        cams = obs.get("images", obs)
        images = {}
        for name in ("cam_high", "cam_low", "cam_left_wrist", "cam_right_wrist"):
            if name in cams:
                img = tf.to_uint8_hwc(np.asarray(cams[name])[None])[0]
                images[name] = img.transpose(2, 0, 1)  # openpi's Aloha inputs are CHW
        out = {"images": images, "state": np.asarray(obs["state"])}
        if "prompt" in obs:
            out["prompt"] = obs["prompt"]
        return out
    if robot == "droid":
        return {k if k.startswith("observation/") or k == "prompt" else f"observation/{k}": v
                for k, v in obs.items()}  # fmt: skip
    raise ValueError(f"Unknown robot {robot!r}.")


class OpenpiPolicy:
    """openpi's `Policy` (built by `create_trained_policy`) as a BasePolicy.

    Args:
      config_name: openpi train config, e.g. "pi0_libero", "pi0_aloha_sim", "pi0_droid".
      checkpoint_dir: local checkpoint directory (params/ + assets/).
      robot: which of our observation layouts to convert from ("libero", "aloha", "droid").
      model_overrides: fields replaced in the openpi model config (e.g. Gemma variants).
    """

    def __init__(
        self,
        config_name: str,
        checkpoint_dir: str,
        robot: str = "libero",
        model_overrides: Mapping[str, Any] | None = None,
        **policy_kwargs: Any,
    ):
        import dataclasses

        policy_config, train_config = _import_openpi()
        cfg = train_config.get_config(config_name)
        if model_overrides:  # e.g. {"paligemma_variant": "dummy", ...} for a small parity model
            cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, **model_overrides))
        self._policy = policy_config.create_trained_policy(cfg, checkpoint_dir, **policy_kwargs)
        self.robot = tf.get_robot(robot)
        self.noise_shape = (cfg.model.action_horizon, cfg.model.action_dim)
        self.action_dim = self.robot.action_dim

    def infer(self, observation: Mapping[str, Any], noise: np.ndarray | None = None) -> dict:
        obs = to_openpi_observation(self.robot.name, observation)
        if noise is None:
            return self._policy.infer(obs)
        return self._policy.infer(obs, noise=np.asarray(noise, np.float32))

    def sample_actions(self, observation: Mapping[str, Any], noise: np.ndarray) -> np.ndarray:
        """Batched by looping: openpi's Policy takes one observation at a time."""
        noise = np.asarray(noise, np.float32)
        out = []
        for i in range(noise.shape[0]):

            def pick(x, i=i):
                if isinstance(x, Mapping):
                    return {k: pick(v) for k, v in x.items()}
                if isinstance(x, str | bytes):
                    return x
                if isinstance(x, list | tuple):
                    return x[i]
                return np.asarray(x)[i]

            out.append(self.infer(pick(observation), noise[i])["actions"])
        return np.stack(out).astype(np.float32)

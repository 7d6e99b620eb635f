"""Pi0Policy: a Pi0 model + tokenizer + norm stats + robot transforms behind the BasePolicy contract.

Observation keys expected by `sample_actions` (batched: a leading axis B on every array; the
prompt is a list of B strings or one string for all; see `transforms.py` for the full list):
  robot="libero":  "agentview_image", "wrist_image": uint8 (B, 224, 224, 3), already rotated
                   180 degrees (openpi's client does `img[::-1, ::-1]`); "state": (B, 8) = eef
                   pos 3 + axis-angle 3 + gripper qpos 2; "prompt": task language.
                   (openpi's "observation/image", "observation/wrist_image", "observation/state"
                   are accepted too.)
  robot="aloha":   "cam_high" uint8 (B, 224, 224, 3) (optional "cam_left_wrist",
                   "cam_right_wrist"; or openpi's "images" dict of CHW images); "state" (B, 14).
  robot="droid":   "observation/exterior_image_1_left", "observation/wrist_image_left",
                   "observation/joint_position" (B, 7), "observation/gripper_position" (B, 1).
Images of another size are resized with padding (PIL bilinear, as openpi) to the model's size.
Other keys ("pixels", ...) are ignored.

The pipeline is openpi's: robot inputs -> Normalize(state) -> tokenize prompt -> pad state to 32
-> model.sample_actions(noise) -> Unnormalize(actions, state) -> AbsoluteActions (LIBERO) ->
robot outputs. Noise is (B, H, 32) in the model's normalised, padded action space, N(0, I) prior.
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np

from dsrl.base_policies.pi0 import normalize as norm_lib
from dsrl.base_policies.pi0 import transforms as tf
from dsrl.base_policies.pi0.tokenizer import PaligemmaTokenizer


def _batch_size(obs: Mapping[str, Any]) -> int:
    for key, value in obs.items():
        if key == "prompt":
            continue
        if isinstance(value, Mapping):
            return _batch_size(value)
        arr = np.asarray(value)
        if arr.ndim >= 1:
            return arr.shape[0]
    raise ValueError("Observation has no batched array to take the batch size from.")


class Pi0Policy:
    """Frozen Pi0 / Pi0.5 policy: (robot observation, noise) -> unnormalised robot action chunk.

    Args:
      model: a `model.Pi0` (e.g. from `checkpoint.load_pi0`).
      tokenizer: a `PaligemmaTokenizer` (its max_len must equal the model's max_token_len).
      norm_stats: {"state": NormStats, "actions": NormStats} (openpi's norm_stats.json).
      robot: "libero", "aloha" (pi0_aloha_sim), "aloha_real", "droid", or a `RobotTransforms`.
      prompt: default prompt when the observation has none (Aloha sim: "Transfer cube").
      num_steps: Euler steps of the flow (openpi: 10).
      discrete_state_input: Pi0.5 only: put the discretised state in the prompt (openpi's
        default for pi05 except pi05_libero). Default: `config.pi05`.
    """

    def __init__(
        self,
        model,
        tokenizer: PaligemmaTokenizer,
        norm_stats: Mapping[str, norm_lib.NormStats],
        robot: str | tf.RobotTransforms = "libero",
        prompt: str | None = None,
        num_steps: int = 10,
        discrete_state_input: bool | None = None,
        seed: int = 0,
    ):
        self.model = model
        self.config = model.config
        self.robot = tf.get_robot(robot)
        self.tokenizer = tokenizer
        if tokenizer.max_len != self.config.max_token_len:
            raise ValueError(
                f"Tokenizer max_len={tokenizer.max_len} differs from the model's max_token_len="
                f"{self.config.max_token_len}; build PaligemmaTokenizer(..., max_len="
                f"{self.config.max_token_len})."
            )
        for key in ("state", "actions"):
            if key not in norm_stats:
                raise ValueError(f"norm_stats needs a {key!r} entry, got {sorted(norm_stats)}.")
        self.norm_stats = dict(norm_stats)
        self.use_quantiles = bool(self.config.pi05)
        self.discrete_state_input = (
            self.config.pi05 if discrete_state_input is None else discrete_state_input
        )
        self.prompt = prompt if prompt is not None else self.robot.default_prompt
        self.num_steps = int(num_steps)
        self.noise_shape = (self.config.action_horizon, self.config.action_dim)
        self.action_dim = self.robot.action_dim
        self._rng = jax.random.key(seed)

    # ---------------------------------------------------------------------------------------
    # Construction from files

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | pathlib.Path,
        robot: str = "libero",
        variant: Any = "full",
        dtype: str = "bfloat16",
        tokenizer_path: str | pathlib.Path | None = None,
        *,
        asset_id: str | None = None,
        prompt: str | None = None,
        num_steps: int = 10,
        seed: int = 0,
        **overrides,
    ) -> Pi0Policy:
        """Loads an openpi checkpoint: a local directory, a name ("pi0_libero") or a gs:// / s3://
        URL (resolved in openpi's cache, see `download.py`). Norm stats come from
        `<ckpt>/assets/<asset_id>` (default: the robot's usual asset id, else the only one).
        `overrides` go to `Pi0Config.from_name` (e.g. action_horizon=10 for pi0_droid).
        `checkpoint="random"`: random weights (drawn from `seed`), no files (benchmarks; see
        `random_init.py`)."""
        from dsrl.base_policies.pi0 import checkpoint as ckpt_lib
        from dsrl.base_policies.pi0 import config as config_lib
        from dsrl.base_policies.pi0 import download

        robot_tf = tf.get_robot(robot)
        if str(checkpoint) == "random":
            from dsrl.base_policies.pi0.random_init import random_parts

            if isinstance(variant, str):
                variant = config_lib.Pi0Config.from_name(variant, **overrides)
            model, tokenizer, stats = random_parts(variant, dtype, tokenizer_path, seed=seed)
            return cls(
                model, tokenizer, stats, robot_tf, prompt=prompt, num_steps=num_steps, seed=seed
            )
        ckpt_dir = download.resolve_checkpoint(str(checkpoint))
        if isinstance(variant, str):
            variant = config_lib.Pi0Config.from_name(variant, **overrides)
        if asset_id is None:
            ids = norm_lib.list_asset_ids(ckpt_dir)
            asset_id = robot_tf.default_asset_id if robot_tf.default_asset_id in ids else None
        stats = norm_lib.load_checkpoint_norm_stats(ckpt_dir, asset_id)
        tokenizer = PaligemmaTokenizer(
            download.resolve_tokenizer(tokenizer_path), max_len=variant.max_token_len
        )
        model = ckpt_lib.load_pi0(ckpt_dir, variant, dtype=dtype)
        return cls(model, tokenizer, stats, robot_tf, prompt=prompt, num_steps=num_steps, seed=seed)

    # ---------------------------------------------------------------------------------------
    # Input / output pipelines (host side, numpy)

    def _prompts(self, obs: Mapping[str, Any], batch: int) -> list[str]:
        prompt = obs.get("prompt", self.prompt)
        if prompt is None:
            raise ValueError(
                "No prompt: put 'prompt' in the observation or pass Pi0Policy(..., prompt=...)."
            )
        if isinstance(prompt, str | bytes):
            return [prompt] * batch
        prompts = list(np.asarray(prompt).reshape(-1).tolist())
        if len(prompts) != batch:
            raise ValueError(f"Got {len(prompts)} prompts for a batch of {batch}.")
        return prompts

    def prepare(self, observation: Mapping[str, Any]) -> tuple[Any, np.ndarray]:
        """Robot observation -> (model Observation, normalised padded state float32 (B, 32))."""
        from dsrl.base_policies.pi0.model import Observation

        batch = _batch_size(observation)
        inputs = self.robot.inputs(observation)
        state = inputs["state"]
        if state.ndim != 2 or state.shape[0] != batch:
            raise ValueError(f"state must be (B={batch}, d), got shape {state.shape}.")
        if state.shape[1] > self.config.action_dim:
            raise ValueError(f"state has {state.shape[1]} dims > model action_dim.")
        state_norm = norm_lib.normalize(state, self.norm_stats["state"], self.use_quantiles)
        prompts = self._prompts(observation, batch)
        tokens, token_mask = self.tokenizer.tokenize_batch(
            prompts, state_norm if self.discrete_state_input else None
        )
        padded = np.zeros((batch, self.config.action_dim), np.float32)
        padded[:, : state.shape[1]] = state_norm
        h, w = self.config.image_resolution
        images = {
            k: tf.images_to_model(tf.resize_with_pad(v, h, w)) for k, v in inputs["images"].items()
        }
        obs = Observation(
            images=images,
            image_masks={k: np.asarray(v, bool) for k, v in inputs["image_masks"].items()},
            state=padded,
            tokenized_prompt=tokens,
            tokenized_prompt_mask=token_mask,
        )
        return obs, padded

    def postprocess(self, actions: np.ndarray, state: np.ndarray) -> np.ndarray:
        """Normalised (B, [K,] H, 32) actions + normalised padded (B, 32) state -> robot actions
        float32 (B, [K,] H, action_dim)."""
        actions = np.asarray(actions, dtype=np.float32)
        lead = actions.shape[:-2]
        flat = actions.reshape(-1, *actions.shape[-2:])
        if len(lead) == 2:  # (B, K): each of the K chunks shares its observation's state
            state = np.repeat(state, lead[1], axis=0)
        act = norm_lib.unnormalize(flat, self.norm_stats["actions"], self.use_quantiles)
        st = norm_lib.unnormalize(state, self.norm_stats["state"], self.use_quantiles)
        if self.robot.delta_action_mask is not None:
            act = tf.absolute_actions(act, st, self.robot.delta_action_mask)
        out = self.robot.outputs(act, st)
        return out.astype(np.float32).reshape(*lead, *out.shape[-2:])

    def _check_noise(self, noise: np.ndarray, batch: int, multi: bool) -> np.ndarray:
        noise = np.asarray(noise, dtype=np.float32)
        want = (batch, *self.noise_shape) if not multi else (batch, None, *self.noise_shape)
        ok = noise.ndim == len(want) and all(
            w is None or w == s for w, s in zip(want, noise.shape, strict=True)
        )
        if not ok:
            form = "(B, H, 32)" if not multi else "(B, K, H, 32)"
            raise ValueError(
                f"noise must be float32 {form} with B={batch}, H, 32 = {self.noise_shape}; got "
                f"shape {noise.shape}."
            )
        if not np.isfinite(noise).all():
            raise ValueError("noise contains NaN or inf.")
        return noise

    # ---------------------------------------------------------------------------------------
    # BasePolicy contract

    def sample_actions(self, observation: Mapping[str, Any], noise: np.ndarray) -> np.ndarray:
        """Batched: observation with leading axis B, noise (B, H, 32) -> float32 (B, H, action_dim).
        Deterministic in (observation, noise)."""
        obs, state = self.prepare(observation)
        noise = self._check_noise(noise, state.shape[0], multi=False)
        actions = self.model.sample_actions(None, obs, noise=noise, num_steps=self.num_steps)
        return self.postprocess(np.asarray(actions), state)

    def sample_actions_multi(self, observation: Mapping[str, Any], noise: np.ndarray) -> np.ndarray:
        """K noises per observation, one prefix pass: noise (B, K, H, 32) -> (B, K, H, action_dim)."""
        obs, state = self.prepare(observation)
        noise = self._check_noise(noise, state.shape[0], multi=True)
        actions = self.model.sample_actions_multi(obs, noise, num_steps=self.num_steps)
        return self.postprocess(np.asarray(actions), state)

    # ---------------------------------------------------------------------------------------
    # Prefix feature (the real-robot agent's Pi0 embedding)

    @property
    def prefix_feature_dim(self) -> int:
        """Width of `prefix_feature` (PaliGemma's width: 2048 for the full model)."""
        return self.config.paligemma.width

    def prefix_feature(self, observation: Mapping[str, Any]) -> np.ndarray:
        """Batched robot observation (as `sample_actions`) -> float32 (B, prefix_feature_dim):
        the final-normed PaliGemma prefix hidden states averaged over the valid prefix tokens
        (images of unmasked cameras, non-padding prompt tokens); see `Pi0.prefix_feature`."""
        obs, _ = self.prepare(observation)
        return np.asarray(self.model.prefix_feature(obs), np.float32)

    def sample_actions_and_prefix_feature(
        self, observation: Mapping[str, Any], noise: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """`sample_actions` and `prefix_feature` from one prefix pass: noise (B, H, 32) ->
        (float32 (B, H, action_dim), float32 (B, prefix_feature_dim))."""
        obs, state = self.prepare(observation)
        noise = self._check_noise(noise, state.shape[0], multi=False)
        actions, feature = self.model.sample_actions_and_feature(
            obs, noise, num_steps=self.num_steps
        )
        return self.postprocess(np.asarray(actions), state), np.asarray(feature, np.float32)

    def infer(
        self,
        observation: Mapping[str, Any],
        noise: np.ndarray | None = None,
        *,
        return_prefix_feature: bool = False,
    ) -> dict:
        """openpi's `Policy.infer`: ONE unbatched observation, noise (H, 32) or (1, H, 32) or None
        (then drawn from the policy's own key) -> {"actions": (H, action_dim), "policy_timing"}
        (+ "prefix_feature" (prefix_feature_dim,) from the same prefix pass when asked)."""

        def add_batch(x):
            if isinstance(x, Mapping):
                return {k: add_batch(v) for k, v in x.items()}
            if isinstance(x, str | bytes):
                return x
            return np.asarray(x)[None]

        start = time.monotonic()
        batched = add_batch(observation)
        if noise is None:
            self._rng, key = jax.random.split(self._rng)
            noise = np.asarray(jax.random.normal(key, (1, *self.noise_shape)), np.float32)
        noise = np.asarray(noise, dtype=np.float32)
        if noise.ndim == 2:
            noise = noise[None]
        out: dict[str, Any] = {}
        if return_prefix_feature:
            actions, feature = self.sample_actions_and_prefix_feature(batched, noise)
            out["prefix_feature"] = feature[0]
        else:
            actions = self.sample_actions(batched, noise)
        out["actions"] = actions[0]
        out["policy_timing"] = {"infer_ms": 1000 * (time.monotonic() - start)}
        return out

    @property
    def metadata(self) -> dict:
        return {
            "robot": self.robot.name,
            "noise_shape": list(self.noise_shape),
            "action_dim": self.action_dim,
            "action_horizon": self.config.action_horizon,
            "prefix_feature_dim": self.prefix_feature_dim,
        }

"""The fine-tuning data interface: an iterator of dict batches, and their conversion to model
inputs (normalised, padded, tokenized) as openpi's transforms produce them.

A batch (numpy, B examples):
  images:  {camera: uint8 (B, H, W, 3)}, camera names as the model's `image_keys`; a camera
           absent from the dict is fed black with its mask False;
  state:   float (B, s), actions: float (B, horizon, a), in robot units (s, a <= action_dim);
  prompt:  B strings.
`NpzDataset` reads that layout from one .npz (keys `images/<camera>`, `state`, `actions`,
`prompt`); any other reader (e.g. LeRobot) only has to yield the same dicts.
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import numpy as np

from dsrl.base_policies.pi0 import normalize as nl
from dsrl.base_policies.pi0 import transforms as tf
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.model import Observation

Batch = dict[str, Any]


class NpzDataset:
    """Examples from one .npz file, served as shuffled batches (a new permutation per epoch)."""

    def __init__(self, path: str | pathlib.Path):
        path = pathlib.Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"No dataset at {path} (an .npz with images/<camera>, ...).")
        with np.load(path, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
        missing = [k for k in ("state", "actions", "prompt") if k not in arrays]
        cams = {k.split("/", 1)[1]: v for k, v in arrays.items() if k.startswith("images/")}
        if missing or not cams:
            raise ValueError(
                f"{path} lacks {missing or ['images/<camera>']}: a dataset needs images/<camera> "
                "uint8 (N, H, W, 3), state (N, s), actions (N, horizon, a) and prompt (N,)."
            )
        n = len(arrays["state"])
        sizes = {k: len(v) for k, v in {**arrays, **cams}.items() if k != "images"}
        if any(s != n for s in sizes.values()):
            raise ValueError(f"{path}: arrays disagree on the number of examples: {sizes}.")
        if arrays["actions"].ndim != 3:
            raise ValueError(
                f"{path}: actions must be (N, horizon, a), got {arrays['actions'].shape}."
            )
        self.images, self.state, self.actions = cams, arrays["state"], arrays["actions"]
        self.prompt = arrays["prompt"].astype(str)
        self.path = path

    def __len__(self) -> int:
        return len(self.state)

    def take(self, index: np.ndarray) -> Batch:
        return {
            "images": {k: v[index] for k, v in self.images.items()},
            "state": self.state[index],
            "actions": self.actions[index],
            "prompt": [str(p) for p in self.prompt[index]],
        }

    def batches(self, batch_size: int, seed: int = 0, start: int = 0) -> Iterator[Batch]:
        """Endless batches from batch number `start` on (a resumed run gets exactly the batches
        the uninterrupted one would have); see `batch_indices`."""
        for index in batch_indices(len(self), batch_size, seed, start, self.path):
            yield self.take(index)

    def all(self, batch_size: int = 1024) -> Iterator[Mapping[str, np.ndarray]]:
        """state / actions of every example, in order (for norm stats)."""
        for start in range(0, len(self), batch_size):
            sl = slice(start, start + batch_size)
            yield {"state": self.state[sl], "actions": self.actions[sl]}


def batch_indices(
    num_examples: int, batch_size: int, seed: int = 0, start: int = 0, source: Any = "dataset"
) -> Iterator[np.ndarray]:
    """The example indices of every batch from batch number `start` on: every example once per
    epoch, the last partial batch dropped, a new permutation per epoch (seeded by (seed,
    epoch), so a resumed run gets exactly the batches the uninterrupted one would have)."""
    if batch_size > num_examples:
        raise ValueError(f"batch_size {batch_size} > {num_examples} examples in {source}.")
    per_epoch = num_examples // batch_size
    epoch, skip = divmod(start, per_epoch)
    while True:
        order = np.random.default_rng((seed, epoch)).permutation(num_examples)
        for i in range(skip, per_epoch):
            yield order[i * batch_size : (i + 1) * batch_size]
        epoch, skip = epoch + 1, 0


def delta_batch(batch: Mapping[str, Any], mask: tuple[bool, ...] | None) -> dict[str, Any]:
    """openpi's DeltaActions data transform: action dims where `mask` is True become relative to
    the state (`transforms.delta_actions`); the policy's AbsoluteActions undoes it at inference
    (pi0_libero: the first 6 dims). None: the batch unchanged. Applied before norm stats and
    training, as openpi's data transforms are, so that a fine-tuned model loads with its robot."""
    if mask is None:
        return dict(batch)
    actions = tf.delta_actions(np.asarray(batch["actions"]), np.asarray(batch["state"]), mask)
    return {**batch, "actions": actions.astype(np.float32)}


def drop_images(obs: Observation, rate: float, rng: np.random.Generator) -> Observation:
    """Image dropout: each example loses all its cameras with probability `rate` (black, mask
    False: how openpi feeds an absent camera), so the model cannot lean on images alone. A
    regulariser for small datasets; not part of openpi's recipe. rate 0: `obs` unchanged."""
    if rate <= 0:
        return obs
    keep = rng.random(len(obs.state)) >= rate
    images = {k: np.where(keep[:, None, None, None], v, -1.0) for k, v in obs.images.items()}
    masks = {k: np.asarray(v) & keep for k, v in obs.image_masks.items()}
    return dataclasses.replace(obs, images=images, image_masks=masks)


def _pad(x: np.ndarray, dim: int) -> np.ndarray:
    out = np.zeros((*x.shape[:-1], dim), np.float32)
    out[..., : x.shape[-1]] = x
    return out


def to_model_inputs(
    batch: Batch,
    config: Pi0Config,
    norm_stats: Mapping[str, nl.NormStats],
    tokenizer,
) -> tuple[Observation, np.ndarray]:
    """A batch -> (Observation, normalised padded actions float32 (B, horizon, action_dim)).

    Normalisation as openpi: z-score for Pi0, quantiles for Pi0.5 (whose state also enters the
    prompt as discrete tokens)."""
    state, actions = np.asarray(batch["state"]), np.asarray(batch["actions"])
    b, horizon = actions.shape[:2]
    if (
        horizon != config.action_horizon
        or max(state.shape[-1], actions.shape[-1]) > config.action_dim
    ):
        raise ValueError(
            f"actions (B, {horizon}, {actions.shape[-1]}) / state (B, {state.shape[-1]}) do not fit "
            f"the model: horizon {config.action_horizon}, at most {config.action_dim} dims."
        )
    quantiles = config.pi05
    state_norm = nl.normalize(state, norm_stats["state"], quantiles)
    actions_norm = nl.normalize(actions, norm_stats["actions"], quantiles)
    tokens, mask = tokenizer.tokenize_batch(
        list(batch["prompt"]), state_norm if config.pi05 else None
    )
    h, w = config.image_resolution
    images, masks = {}, {}
    unknown = set(batch["images"]) - set(config.image_keys)
    if unknown:
        raise ValueError(f"Cameras {sorted(unknown)} are not model cameras {config.image_keys}.")
    for key in config.image_keys:
        img = batch["images"].get(key)
        if img is None:
            images[key] = -np.ones((b, h, w, 3), np.float32)
            masks[key] = np.zeros((b,), bool)
        else:
            images[key] = tf.images_to_model(tf.resize_with_pad(np.asarray(img), h, w))
            masks[key] = np.ones((b,), bool)
    obs = Observation(images, masks, _pad(state_norm, config.action_dim), tokens, mask)
    return obs, _pad(actions_norm, config.action_dim)

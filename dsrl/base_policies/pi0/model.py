"""Pi0 / Pi0.5 flow-matching policy in JAX, checkpoint-compatible with openpi, noise-injectable.

Inference is split at the one place the computation allows it: the image+prompt prefix never
attends to the state/action suffix, so `encode_prefix` runs SigLIP and the PaliGemma Gemma once per
observation and keeps their keys/values (a `PrefixCache`), and `denoise` integrates the flow for
any number of noises per observation against that cache. `sample_actions` (openpi's call) and
`sample_actions_multi` (K noises per observation) each run as one jitted call.

Conventions as openpi: t = 1 is noise and t = 0 data; Euler steps dt = -1/num_steps from t = 1;
x_t stays float32; actions come out normalised and padded to `action_dim` (32).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import flax.struct as struct
import jax
import jax.numpy as jnp
import numpy as np

from dsrl.base_policies.pi0 import gemma, siglip
from dsrl.base_policies.pi0.config import Pi0Config
from dsrl.base_policies.pi0.params import init_params, param_shapes

Params = dict[str, Any]
# Re-exported: callers build and size models through this module.
__all__ = ["Observation", "Pi0", "PrefixCache", "init_params", "param_shapes"]


@struct.dataclass
class Observation:
    """Model inputs, openpi's field names. B is the batch size.

    images: camera name -> float32 (B, H, W, 3) in [-1, 1], for every name in
      `config.image_keys` (other names are ignored); an absent camera is a black image (-1) with
      its mask False.
    image_masks: camera name -> bool (B,); a missing entry means True.
    state: float32 (B, action_dim), normalised and zero-padded to action_dim.
    tokenized_prompt: int32 (B, L) or None; tokenized_prompt_mask: bool (B, L), False = padding.
    """

    images: dict[str, jax.Array]
    image_masks: dict[str, jax.Array]
    state: jax.Array
    tokenized_prompt: jax.Array | None = None
    tokenized_prompt_mask: jax.Array | None = None

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Observation:
        """From openpi's dict layout (`image`, `image_mask`, `state`, `tokenized_prompt`, ...)."""
        return cls(
            images=dict(data["image"]),
            image_masks=dict(data.get("image_mask", {})),
            state=data["state"],
            tokenized_prompt=data.get("tokenized_prompt"),
            tokenized_prompt_mask=data.get("tokenized_prompt_mask"),
        )


@struct.dataclass
class PrefixCache:
    """The per-observation part of Pi0 inference, computed once and reused for every noise.

    k, v: (L, B, P, Kv, H) keys (after RoPE) and values of every Gemma layer for the P prefix
      tokens (activation dtype). Cameras masked for the whole batch are not in P at all.
    mask: bool (B, P), True for valid prefix tokens (masked cameras and prompt padding False).
    state: float32 (B, action_dim), needed by Pi0's state token.
    feature: float32 (B, D0) or None: the prefix feature (see `prefix_feature`), present only
      when asked for, since it needs the last Gemma layer's MLP that the action path skips.
    """

    k: jax.Array
    v: jax.Array
    mask: jax.Array
    state: jax.Array
    feature: jax.Array | None = None

    @property
    def batch_size(self) -> int:
        return self.mask.shape[0]

    @property
    def prefix_len(self) -> int:
        return self.mask.shape[1]


def _siglip(config: Pi0Config) -> siglip.SigLIP:
    return siglip.SigLIP(config.vision, config.paligemma.width, config.dtype, config.remat)


# ----------------------------------------------------------------------------------------------
# Pure model functions (config is static)
# ----------------------------------------------------------------------------------------------


def posemb_sincos(t: jax.Array, dim: int, min_period: float, max_period: float) -> jax.Array:
    """Sine-cosine embedding of scalars t (N,) -> (N, dim): sin block then cos block, periods
    geometric from min_period to max_period."""
    if dim % 2:
        raise ValueError(f"posemb_sincos needs an even dim, got {dim}.")
    fraction = jnp.linspace(0.0, 1.0, dim // 2)
    period = min_period * (max_period / min_period) ** fraction
    arg = jnp.einsum("i,j->ij", t, 1.0 / period * 2 * jnp.pi, precision=jax.lax.Precision.HIGHEST)
    return jnp.concatenate([jnp.sin(arg), jnp.cos(arg)], axis=-1)


def _dense(p: Params, x: jax.Array) -> jax.Array:
    """nnx.Linear semantics: float32 inputs with bf16 weights compute in float32 (promotion)."""
    return x @ p["kernel"] + p["bias"]


def _embed_prefix(
    config: Pi0Config, params: Params, obs: Observation, encoded: tuple[str, ...]
) -> tuple[jax.Array, jax.Array]:
    """Image tokens of the `encoded` cameras (in config order) then prompt tokens.

    Returns tokens (B, P, D0) and valid mask bool (B, P). All cameras go through SigLIP as one
    batch; a camera left out of `encoded` (masked for the whole batch) contributes no tokens,
    which is exact: masked tokens are invisible to every valid token and do not advance positions.
    """
    tokens, masks = [], []
    if encoded:
        imgs = jnp.stack([obs.images[k] for k in encoded])  # (n, B, H, W, 3)
        n, b = imgs.shape[:2]
        out = _siglip(config).apply(
            {"params": params["PaliGemma"]["img"]}, imgs.reshape(n * b, *imgs.shape[2:])
        )
        t, d = out.shape[1:]
        tokens.append(out.reshape(n, b, t, d).transpose(1, 0, 2, 3).reshape(b, n * t, d))
        cam_masks = jnp.stack([jnp.asarray(obs.image_masks[k], bool) for k in encoded], axis=1)
        masks.append(jnp.repeat(cam_masks, t, axis=1))
    if obs.tokenized_prompt is not None:
        dtype = jnp.dtype(config.dtype)
        tokens.append(gemma.embed_tokens(params["PaliGemma"]["llm"], obs.tokenized_prompt, dtype))
        masks.append(jnp.asarray(obs.tokenized_prompt_mask, bool))
    dtype = jnp.dtype(config.dtype)
    return jnp.concatenate([x.astype(dtype) for x in tokens], axis=1), jnp.concatenate(masks, 1)


def prefix_attention(mask: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Prefix attention (bidirectional among valid tokens) and RoPE positions.

    mask: bool (B, P) -> (attn bool (B, P, P) query-by-key, positions int32 (B, P)). Invalid
    tokens keep the previous token's position (they do not advance it).
    """
    attn = mask[:, None, :] & mask[:, :, None]
    return attn, jnp.cumsum(mask, axis=1, dtype=jnp.int32) - 1


def suffix_attention(config: Pi0Config) -> np.ndarray:
    """bool (S, S) query-by-key among suffix tokens: Pi0's state token sees only itself (and the
    prefix); action tokens see the state and all action tokens (a bidirectional block)."""
    ar = np.zeros(config.suffix_len, np.int32)
    ar[0] = 1  # the first suffix token opens a new block the prefix cannot see
    if not config.pi05:
        ar[1] = 1  # the action block opens another one the state token cannot see
    block = np.cumsum(ar)
    return block[None, :] <= block[:, None]


def masked_mean(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean over valid tokens: hidden (B, P, D), mask bool (B, P) -> float32 (B, D).

    Invalid tokens are selected away (not multiplied by 0, so no value there can leak in); a row
    with no valid token gives zeros.
    """
    hidden = jnp.where(mask[..., None], hidden.astype(jnp.float32), 0.0)
    count = jnp.maximum(jnp.sum(mask, axis=1, dtype=jnp.float32), 1.0)
    return jnp.sum(hidden, axis=1) / count[:, None]


def encode_prefix(
    config: Pi0Config,
    params: Params,
    obs: Observation,
    encoded: tuple[str, ...],
    with_feature: bool = False,
) -> PrefixCache:
    """The prefix KV cache; with `with_feature` also the prefix feature, from the same pass."""
    tokens, mask = _embed_prefix(config, params, obs, encoded)
    attn, positions = prefix_attention(mask)
    llm, dtype = params["PaliGemma"]["llm"], config.dtype
    state = jnp.asarray(obs.state, jnp.float32)
    if not with_feature:
        k, v = gemma.prefix_forward(
            llm, config.paligemma, tokens, attn, positions, dtype, remat=config.remat
        )
        return PrefixCache(k=k, v=v, mask=mask, state=state)
    k, v, hidden = gemma.prefix_forward(
        llm,
        config.paligemma,
        tokens,
        attn,
        positions,
        dtype,
        return_hidden=True,
        remat=config.remat,
    )
    return PrefixCache(k=k, v=v, mask=mask, state=state, feature=masked_mean(hidden, mask))


def denoise(
    config: Pi0Config, params: Params, cache: PrefixCache, noise: jax.Array, num_steps: int
) -> jax.Array:
    """Euler integration of the flow from x_1 = noise (B, K, H, A) to x_0, against the cache
    (from row 0 of the noise repeated over H when `config.shared_noise`)."""
    if config.shared_noise:
        noise = jnp.broadcast_to(noise[..., :1, :], noise.shape)
    expert = config.action_expert
    b, k = noise.shape[:2]
    dt = -1.0 / num_steps  # a Python float: dt * v_t stays in v_t's dtype, as openpi
    positions = jnp.sum(cache.mask, axis=-1, dtype=jnp.int32)[:, None] + jnp.arange(
        config.suffix_len, dtype=jnp.int32
    )
    suffix_mask = suffix_attention(config)
    # Noise-independent pieces, hoisted out of the loop.
    state_token = None if config.pi05 else _dense(params["state_proj"], cache.state)

    def velocity(x_t: jax.Array, time: jax.Array) -> jax.Array:
        time_emb = posemb_sincos(time[None], expert.width, min_period=4e-3, max_period=4.0)
        action_tokens = _dense(params["action_in_proj"], x_t)  # (B, K, H, D1)
        if config.pi05:
            cond = jax.nn.swish(_dense(params["time_mlp_in"], time_emb))
            cond = jax.nn.swish(_dense(params["time_mlp_out"], cond))[:, None, None]
            tokens = action_tokens
        else:
            cond = None
            time_tokens = jnp.broadcast_to(time_emb, action_tokens.shape)
            h = _dense(
                params["action_time_mlp_in"], jnp.concatenate([action_tokens, time_tokens], -1)
            )
            h = _dense(params["action_time_mlp_out"], jax.nn.swish(h))
            state = jnp.broadcast_to(state_token[:, None, None], (b, k, 1, h.shape[-1]))
            tokens = jnp.concatenate([state, h], axis=2)
        out = gemma.suffix_forward(
            params["PaliGemma"]["llm"],
            expert,
            tokens,
            (cache.k, cache.v),
            cache.mask,
            suffix_mask,
            positions,
            cond,
            config.dtype,
            remat=config.remat,
        )
        return _dense(params["action_out_proj"], out[:, :, -config.action_horizon :])

    def step(_, carry):
        x_t, time = carry
        return x_t + dt * velocity(x_t, time), time + dt

    x_0, _ = jax.lax.fori_loop(0, num_steps, step, (noise.astype(jnp.float32), jnp.float32(1.0)))
    return x_0


def _denoise_any(config, params, cache, noise, num_steps):
    """noise (B, H, A) or (B, K, H, A) -> actions of the same shape."""
    if noise.ndim == 3:
        return denoise(config, params, cache, noise[:, None], num_steps)[:, 0]
    return denoise(config, params, cache, noise, num_steps)


@functools.partial(jax.jit, static_argnames=("config", "encoded", "with_feature"))
def _encode_prefix_jit(params, obs, *, config, encoded, with_feature):
    return encode_prefix(config, params, obs, encoded, with_feature)


@functools.partial(jax.jit, static_argnames=("config", "encoded"))
def _prefix_feature_jit(params, obs, *, config, encoded):
    # Only the feature is returned, so XLA drops the stacked KV cache outputs.
    return encode_prefix(config, params, obs, encoded, with_feature=True).feature


@functools.partial(jax.jit, static_argnames=("config", "num_steps"))
def _denoise_jit(params, cache, noise, *, config, num_steps):
    return _denoise_any(config, params, cache, noise, num_steps)


@functools.partial(jax.jit, static_argnames=("config", "num_steps", "encoded"))
def _sample_jit(params, obs, noise, *, config, num_steps, encoded):
    cache = encode_prefix(config, params, obs, encoded)
    return _denoise_any(config, params, cache, noise, num_steps)


@functools.partial(jax.jit, static_argnames=("config", "num_steps", "encoded"))
def _sample_with_feature_jit(params, obs, noise, *, config, num_steps, encoded):
    cache = encode_prefix(config, params, obs, encoded, with_feature=True)
    return _denoise_any(config, params, cache, noise, num_steps), cache.feature


# ----------------------------------------------------------------------------------------------
# Input checks (host side, before the jitted call)
# ----------------------------------------------------------------------------------------------


def _is_concrete(x) -> bool:
    return not isinstance(x, jax.core.Tracer)


def _as_array(x, dtype):
    return x if isinstance(x, jax.Array | np.ndarray) else np.asarray(x, dtype)


def prepare_observation(
    config: Pi0Config, observation: Observation | Mapping[str, Any]
) -> tuple[Observation, tuple[str, ...]]:
    """Validates an observation and returns it restricted to `config.image_keys` (in order, all
    masks present) with the cameras to encode: those not masked for the whole batch."""
    obs = (
        observation if isinstance(observation, Observation) else Observation.from_dict(observation)
    )
    missing = [k for k in config.image_keys if k not in obs.images]
    if missing:
        raise ValueError(
            f"Observation lacks cameras {missing}; Pi0 needs all of {list(config.image_keys)}. "
            "Pass a black image (all -1) with image_masks[name]=False for an absent camera."
        )
    state = _as_array(obs.state, np.float32)
    if state.ndim != 2 or state.shape[1] != config.action_dim:
        raise ValueError(
            f"state must be float32 (B, {config.action_dim}) (normalised, zero-padded to "
            f"action_dim), got shape {tuple(state.shape)}."
        )
    batch = state.shape[0]
    h, w = config.image_resolution
    images, masks = {}, {}
    for key in config.image_keys:
        img = obs.images[key]
        if tuple(img.shape) != (batch, h, w, 3):
            raise ValueError(
                f"images[{key!r}] has shape {tuple(img.shape)}, expected ({batch}, {h}, {w}, 3): "
                f"resize (e.g. resize-with-pad) to {h}x{w} and batch like state."
            )
        if not jnp.issubdtype(img.dtype, jnp.floating):
            raise ValueError(
                f"images[{key!r}] is {img.dtype}; Pi0 takes float images in [-1, 1] "
                "(uint8 x -> x / 255 * 2 - 1)."
            )
        images[key] = img
        mask = obs.image_masks.get(key)
        masks[key] = np.ones((batch,), bool) if mask is None else _as_array(mask, bool)
        if tuple(masks[key].shape) != (batch,):
            raise ValueError(f"image_masks[{key!r}] must be bool ({batch},).")
    prompt, prompt_mask = obs.tokenized_prompt, obs.tokenized_prompt_mask
    if prompt is not None:
        if prompt_mask is None or tuple(prompt_mask.shape) != tuple(prompt.shape):
            raise ValueError("tokenized_prompt needs a tokenized_prompt_mask of the same shape.")
        if prompt.ndim != 2 or prompt.shape[0] != batch:
            raise ValueError(f"tokenized_prompt must be int (B={batch}, L), got {prompt.shape}.")
    encoded = tuple(
        k
        for k in config.image_keys
        if not (_is_concrete(masks[k]) and not np.asarray(masks[k]).any())
    )
    if not encoded and prompt is None:
        encoded = config.image_keys[:1]  # keep a non-empty prefix
    clean = Observation(images, masks, state, prompt, prompt_mask)
    return clean, encoded


def _check_noise(config: Pi0Config, noise, batch: int, multi: bool | None) -> None:
    horizon, dim = config.action_horizon, config.action_dim
    ok = noise.ndim in (3, 4) if multi is None else noise.ndim == (4 if multi else 3)
    if not ok or noise.shape[0] != batch or tuple(noise.shape[-2:]) != (horizon, dim):
        want = {None: "(B, [K,] H, A)", True: "(B, K, H, A)", False: "(B, H, A)"}[multi]
        raise ValueError(
            f"noise must be {want} = ({batch}, ..., {horizon}, {dim}) for this model/observation, "
            f"got shape {tuple(noise.shape)}."
        )


# ----------------------------------------------------------------------------------------------
# The model object
# ----------------------------------------------------------------------------------------------


class Pi0(struct.PyTreeNode):
    """A Pi0 / Pi0.5 model: its static config and its parameters (float32 or bfloat16 leaves).

    Every method compiles once per input shape (and per set of whole-batch-masked cameras) and
    runs as one jitted call with no host synchronisation inside.
    """

    params: Params
    config: Pi0Config = struct.field(pytree_node=False)

    @classmethod
    def create(cls, config: Pi0Config, params: Params | None = None, *, seed: int = 0) -> Pi0:
        """Wraps loaded params (see `checkpoint.load_pi0`), or random ones when params is None."""
        if params is None:
            params = init_params(config, jax.random.key(seed))
        return cls(params=params, config=config)

    @property
    def noise_shape(self) -> tuple[int, int]:
        return (self.config.action_horizon, self.config.action_dim)

    def encode_prefix(
        self, observation: Observation | Mapping[str, Any], *, return_feature: bool = False
    ) -> PrefixCache:
        """The per-observation KV cache; `return_feature` also fills `PrefixCache.feature` from
        the same pass (it runs the last Gemma layer in full, which the plain cache skips)."""
        obs, encoded = prepare_observation(self.config, observation)
        return _encode_prefix_jit(
            self.params, obs, config=self.config, encoded=encoded, with_feature=return_feature
        )

    def prefix_feature(self, observation: Observation | Mapping[str, Any]) -> jax.Array:
        """float32 (B, paligemma width): PaliGemma's final-normed prefix hidden states averaged
        over the VALID prefix tokens (image tokens of unmasked cameras, non-padding prompt
        tokens). It depends on nothing else: padding slots and masked cameras are invisible.

        (The DSRL reference took the last prefix position instead, almost always a padding slot
        whose fully masked attention row makes it a uniform average of all values.)
        """
        obs, encoded = prepare_observation(self.config, observation)
        return _prefix_feature_jit(self.params, obs, config=self.config, encoded=encoded)

    def sample_actions_and_feature(
        self, observation: Observation | Mapping[str, Any], noise: jax.Array, num_steps: int = 10
    ) -> tuple[jax.Array, jax.Array]:
        """Actions and `prefix_feature` from ONE prefix pass: noise (B, H, A) or (B, K, H, A) ->
        (float32 actions of noise's shape, float32 feature (B, width))."""
        obs, encoded = prepare_observation(self.config, observation)
        _check_noise(self.config, noise, obs.state.shape[0], None)
        return _sample_with_feature_jit(
            self.params, obs, noise, config=self.config, num_steps=num_steps, encoded=encoded
        )

    def denoise(self, prefix: PrefixCache, noise: jax.Array, num_steps: int = 10) -> jax.Array:
        """noise (B, H, A) or (B, K, H, A), B = prefix.batch_size -> float32 actions, same shape."""
        _check_noise(self.config, noise, prefix.batch_size, None)
        return _denoise_jit(self.params, prefix, noise, config=self.config, num_steps=num_steps)

    def sample_actions(
        self,
        rng: jax.Array | None,
        observation: Observation | Mapping[str, Any],
        *,
        noise: jax.Array | None = None,
        num_steps: int = 10,
    ) -> jax.Array:
        """openpi's call: float32 normalised actions (B, H, A). With `noise` (B, H, A) given the
        result is a deterministic function of (observation, noise) and `rng` is unused."""
        obs, encoded = prepare_observation(self.config, observation)
        batch = obs.state.shape[0]
        if noise is None:
            if rng is None:
                raise ValueError("sample_actions needs an rng when no noise is given.")
            noise = jax.random.normal(rng, (batch, *self.noise_shape), jnp.float32)
        _check_noise(self.config, noise, batch, multi=False)
        return _sample_jit(
            self.params, obs, noise, config=self.config, num_steps=num_steps, encoded=encoded
        )

    def sample_actions_multi(
        self, observation: Observation | Mapping[str, Any], noise: jax.Array, num_steps: int = 10
    ) -> jax.Array:
        """K noises per observation: noise (B, K, H, A) -> actions (B, K, H, A). The prefix is
        encoded once per observation and all K flows are integrated as one batch against it."""
        obs, encoded = prepare_observation(self.config, observation)
        _check_noise(self.config, noise, obs.state.shape[0], multi=True)
        return _sample_jit(
            self.params, obs, noise, config=self.config, num_steps=num_steps, encoded=encoded
        )


def fake_observation(
    config: Pi0Config,
    batch_size: int = 1,
    *,
    seed: int = 0,
    masked_cameras: tuple[str, ...] = (),
    prompt_len: int | None = None,
) -> Observation:
    """A random observation (tests, benchmarks): random images in [-1, 1], the `masked_cameras`
    black with mask False, random state, a prompt of `prompt_len` valid tokens (default: 3/4 of
    max_token_len) padded to max_token_len."""
    rng = np.random.default_rng(seed)
    h, w = config.image_resolution
    images, masks = {}, {}
    for key in config.image_keys:
        off = key in masked_cameras
        images[key] = (
            -np.ones((batch_size, h, w, 3), np.float32)
            if off
            else rng.uniform(-1, 1, (batch_size, h, w, 3)).astype(np.float32)
        )
        masks[key] = np.full((batch_size,), not off)
    length = config.max_token_len
    valid = (3 * length) // 4 if prompt_len is None else prompt_len
    tokens = rng.integers(1, config.vocab_size, (batch_size, length)).astype(np.int32)
    mask = np.arange(length)[None, :] < valid
    tokens = np.where(mask, tokens, 0).astype(np.int32)
    state = rng.normal(size=(batch_size, config.action_dim)).astype(np.float32)
    return Observation(images, masks, state, tokens, np.broadcast_to(mask, tokens.shape).copy())

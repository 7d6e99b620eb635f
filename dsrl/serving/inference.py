"""Running decoded requests on the served policy (in the inference thread pool): validation that
needs the policy's shapes, batching to a compiled size, the policy call, the reply frame; and
the start-up warm-up that compiles every batch size before the port is bound."""

from __future__ import annotations

import logging
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import numpy as np

from dsrl.serving import batching, msgpack_numpy
from dsrl.serving.compiles import CompileCounter
from dsrl.serving.decoding import Request
from dsrl.serving.protocol import MAX_ERROR_CHARS, RequestError, clip, error_frame
from dsrl.serving.specs import Field, check_fields
from dsrl.serving.validation import check_noise, check_output

logger = logging.getLogger(__name__)

# One log record: a hostile request must not produce a megabyte log line.
_MAX_LOG_CHARS = 4000


def is_pi0_style(policy: Any) -> bool:
    """Pi0-like policies have `infer(obs, noise)` for one unbatched openpi observation."""
    return callable(getattr(policy, "infer", None))


def log_failure(what: str, error: BaseException) -> None:
    # The message is clipped before it is formatted into the record; the frames are source
    # lines only, so the record stays small whatever the request held.
    frames = "".join(traceback.format_tb(error.__traceback__))
    message = clip(f"{type(error).__name__}: {error}", MAX_ERROR_CHARS)
    logger.error("%s", clip(f"{what}: {message}\n{frames}", _MAX_LOG_CHARS))


class Inference:
    """The served policy with what it takes to answer a request: noise shape, compiled batch
    sizes, the observation's fields and the seeded stream of default noise."""

    def __init__(
        self,
        policy: Any,
        *,
        batch_sizes: tuple[int, ...],
        fields: tuple[Field, ...],
        compiles: CompileCounter,
        seed: int,
    ):
        self.policy = policy
        self.noise_shape = tuple(int(d) for d in policy.noise_shape)
        self.batch_sizes = batch_sizes
        self.max_batch = batch_sizes[-1]
        self.fields = fields
        self.compiles = compiles
        # Default noise (requests without "noise") comes from one seeded stream.
        self._rng = np.random.default_rng(seed)
        self._rng_lock = threading.Lock()

    def serve(self, request: Request, start: float, prev_total_ms: float | None) -> bytes | str:
        """Inference thread: run one decoded request; the reply frame or the error frame."""
        try:
            reply = self.run(request)
            check_output(reply, None if request.method != "infer_batch" else len(reply["actions"]))
        except RequestError as e:
            return error_frame(e.kind, str(e))
        except Exception as e:  # noqa: BLE001 - any policy failure becomes a reply
            log_failure("inference failed", e)
            return error_frame("inference_failed", f"{type(e).__name__}: {e}")
        timing = {"infer_ms": (time.perf_counter() - start) * 1000.0}
        if prev_total_ms is not None:
            timing["prev_total_ms"] = prev_total_ms
        reply["server_timing"] = timing
        return msgpack_numpy.packb(reply)

    def run(self, request: Request) -> dict[str, Any]:
        """Validation that needs no I/O, then the policy call."""
        if request.method == "infer_batch":
            return self._run_batch(request.obs, request.noise, request.want_feature)
        obs = request.obs
        check_fields(obs, self.fields, None)
        if request.method == "get_prefix_feature":
            return {"prefix_feature": self._prefix_feature(obs, batched=False)}
        noise = request.noise
        noise = check_noise(noise, self.noise_shape, None) if noise is not None else None
        combined = self._combined(request.want_feature)
        if combined is not None:
            actions, feature = combined(
                batching.add_batch_axis(obs), noise if noise is not None else self._noise(1)
            )
            return {
                "actions": np.asarray(actions, np.float32)[0],
                "prefix_feature": np.asarray(feature, np.float32)[0],
            }
        out: dict[str, Any] = {}
        if is_pi0_style(self.policy):
            result = self.policy.infer(obs, noise)
            out.update({k: v for k, v in dict(result).items() if k != "server_timing"})
        else:
            noise = noise if noise is not None else self._noise(1)
            batched = batching.add_batch_axis(obs)
            out["actions"] = np.asarray(self.policy.sample_actions(batched, noise), np.float32)[0]
        if request.want_feature:
            out["prefix_feature"] = self._prefix_feature(obs, batched=False)
        return out

    def _run_batch(self, obs: dict, noise: Any, want_feature: bool) -> dict[str, Any]:
        batch = batching.batch_size_of(obs)
        if batch < 1:
            raise RequestError("bad_shape", "infer_batch needs at least one observation")
        if batch > self.max_batch:
            raise RequestError(
                "batch_too_large",
                f"infer_batch of {batch} observations exceeds max_batch={self.max_batch}; split "
                f"it into requests of at most {self.max_batch} (or restart the server with "
                f"--max_batch {batch})",
            )
        check_fields(obs, self.fields, batch)
        if noise is None:
            raise RequestError("missing_key", "infer_batch needs 'noise' (B, H, D)")
        noise = check_noise(noise, self.noise_shape, batch)
        obs, noise = batching.pad_to_compiled(obs, noise, batch, self.batch_sizes)
        combined = self._combined(want_feature)
        if combined is not None:
            actions, feature = combined(obs, noise)
            return {
                "actions": np.asarray(actions, np.float32)[:batch],
                "prefix_feature": np.asarray(feature, np.float32)[:batch],
            }
        out = {"actions": np.asarray(self.policy.sample_actions(obs, noise), np.float32)[:batch]}
        if want_feature:
            out["prefix_feature"] = self._prefix_feature(obs, batched=True)[:batch]
        return out

    def _noise(self, batch: int) -> np.ndarray:
        with self._rng_lock:
            return self._rng.standard_normal((batch, *self.noise_shape), dtype=np.float32)

    def _combined(self, want_feature: bool) -> Callable | None:
        """The policy's one-prefix-pass actions+feature call, when a feature is wanted."""
        if not want_feature:
            return None
        return getattr(self.policy, "sample_actions_and_prefix_feature", None)

    def _prefix_feature(self, obs: dict, *, batched: bool) -> np.ndarray:
        fn: Callable | None = getattr(self.policy, "prefix_feature", None)
        if fn is None:
            raise RequestError(
                "unsupported",
                f"the served policy ({type(self.policy).__name__}) has no prefix feature; only "
                "Pi0 policies expose one",
            )
        feature = np.asarray(fn(obs if batched else batching.add_batch_axis(obs)), np.float32)
        return feature if batched else feature[0]

    def warmup(self, example: Mapping[str, Any] | None) -> float:
        """Run every batch size and method once on `example` (inference thread); the seconds it
        took. Afterwards any compilation counts as one while serving."""
        if example is None:
            logger.warning("no warm-up observation: each batch size compiles on its first request")
            self.compiles.warm = True
            return 0.0
        t0 = time.perf_counter()
        try:
            for request in self._warmup_requests(example):
                self.run(request)
        except Exception as e:
            raise RuntimeError(
                f"warm-up on the example observation failed ({type(e).__name__}: "
                f"{clip(str(e), MAX_ERROR_CHARS)}); the observation must be one the policy "
                "accepts, unbatched"
            ) from e
        self.compiles.warm = True
        return time.perf_counter() - t0

    def _warmup_requests(self, example: Mapping[str, Any]) -> Iterator[Request]:
        has_feature = any(
            callable(getattr(self.policy, name, None))
            for name in ("prefix_feature", "sample_actions_and_prefix_feature")
        )
        rng = np.random.default_rng(0)  # not the serving stream: warm-up must not shift it
        for batch in self.batch_sizes:
            obs = batching.tile_batch(example, batch)
            noise = rng.standard_normal((batch, *self.noise_shape), dtype=np.float32)
            yield Request("infer_batch", obs, noise, False)
            if has_feature:
                yield Request("infer_batch", obs, noise, True)
        noise = rng.standard_normal(self.noise_shape, dtype=np.float32)
        yield Request("infer", dict(example), noise, False)
        if is_pi0_style(self.policy):  # draws its own noise: a path of its own to compile
            yield Request("infer", dict(example), None, False)
        if has_feature:
            yield Request("infer", dict(example), noise, True)
            yield Request("get_prefix_feature", dict(example), None, False)

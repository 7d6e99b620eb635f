"""Image helpers shared by the envs: letterbox resizing for the base policy, plain resizing for the agent.

Two resizes matter and they are deliberately different:
  * `resize_with_pad`: aspect-preserving resize plus zero padding (PIL bilinear), the preprocessing
    openpi applies to every Pi0 camera image (224x224). A 480x640 Aloha frame becomes a 168x224
    image centred between black bars; a square LIBERO frame is simply resized.
  * `resize`: plain resize to the target size (PIL bicubic by default), what the DSRL reference
    does for the SAC agent's 64x64 "pixels"; non-square frames are stretched.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

_METHODS = {
    "nearest": Image.NEAREST,
    "bilinear": Image.BILINEAR,
    "bicubic": Image.BICUBIC,
    "lanczos": Image.LANCZOS,
}


def _method(method: str) -> int:
    if method not in _METHODS:
        raise ValueError(f"Unknown resize method {method!r}; choose one of {sorted(_METHODS)}.")
    return _METHODS[method]


def _check_images(images: np.ndarray) -> np.ndarray:
    images = np.asarray(images)
    if images.ndim < 3 or images.shape[-1] not in (1, 3, 4):
        raise ValueError(
            f"Expected images shaped (..., H, W, C) with C in (1, 3, 4), got {images.shape}."
        )
    if images.dtype != np.uint8:
        raise ValueError(
            f"Expected uint8 images, got {images.dtype}; convert with (img * 255).astype(np.uint8)."
        )
    return images


def _map_images(images: np.ndarray, fn) -> np.ndarray:
    """Applies `fn(PIL image) -> PIL image` to every (H, W, C) image of a (..., H, W, C) batch."""
    lead = images.shape[:-3]
    flat = images.reshape(-1, *images.shape[-3:])
    out = []
    for img in flat:
        squeeze = img.shape[-1] == 1  # PIL wants (H, W) for one channel.
        pil = Image.fromarray(img[..., 0] if squeeze else img)
        res = np.asarray(fn(pil))
        out.append(res[..., None] if squeeze else res)
    stacked = np.stack(out)
    return stacked.reshape(*lead, *stacked.shape[1:])


def resize_with_pad(
    images: np.ndarray, height: int, width: int, method: str = "bilinear"
) -> np.ndarray:
    """Aspect-preserving resize into (height, width) with zero padding, like openpi's client.

    images: uint8 (..., H, W, C). Returns uint8 (..., height, width, C). Images already at the target
    size are returned unchanged. The resized image is pasted at offset
    (floor((height - h') / 2), floor((width - w') / 2)).
    """
    images = _check_images(images)
    if images.shape[-3:-1] == (height, width):
        return images
    resample = _method(method)

    def one(img: Image.Image) -> Image.Image:
        cur_w, cur_h = img.size
        ratio = max(cur_w / width, cur_h / height)
        new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
        resized = img.resize((new_w, new_h), resample=resample)
        canvas = Image.new(resized.mode, (width, height), 0)
        canvas.paste(resized, (max(0, (width - new_w) // 2), max(0, (height - new_h) // 2)))
        return canvas

    return _map_images(images, one)


def resize(images: np.ndarray, height: int, width: int, method: str = "bicubic") -> np.ndarray:
    """Plain (possibly aspect-distorting) resize of uint8 (..., H, W, C) to (..., height, width, C)."""
    images = _check_images(images)
    if images.shape[-3:-1] == (height, width):
        return images
    resample = _method(method)
    return _map_images(images, lambda img: img.resize((width, height), resample=resample))


def flip_180(image: np.ndarray) -> np.ndarray:
    """Rotates (H, W, C) by 180 degrees (robosuite renders upside down in OpenGL orientation).

    Returns a contiguous copy so that later PIL / buffer code never sees negative strides."""
    return np.ascontiguousarray(image[::-1, ::-1])

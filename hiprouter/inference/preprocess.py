"""Model input from a display-space crop: aspect-preserving resize with padding ("letterbox"),
then the input channels the model card names (`parameters.channels`, default ``[grey]``).

The `Letterbox` transform is kept so a heat map computed on the model input can be mapped
back onto the crop, and from there (with the crop's box) onto the source radiograph.

Channels (each computed from the letterboxed display-space crop, then scaled like grey):

- ``grey``: the display pixels.
- ``metal``: what is nearly as bright as the brightest structure of the crop,
  ``clip((x - median) / (p99.7 - median), 0, 1) ** 6`` over the non-padding pixels. Implants
  are the densest things on a radiograph, so this isolates their silhouette (cup, stem,
  head, screws, spacer) whatever tone curve the console applied; without metal it shows the
  densest bone.
"""

from __future__ import annotations

import threading
import weakref
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
from PIL import Image

INPUT_MEAN = 0.5
"""Model inputs are (pixel - INPUT_MEAN) / INPUT_STD with pixels in [0, 1]."""
INPUT_STD = 0.25
PAD_VALUE = 0.0
"""Padding is black in display space."""


@dataclass(frozen=True)
class Letterbox:
    """Where a (height, width) crop sits inside the square model input of side `size`."""

    src_height: int
    src_width: int
    size: int
    scale: float
    top: int
    left: int
    height: int
    """Height of the resized crop inside the input (without padding)."""
    width: int

    def to_source(self, model_map: np.ndarray,
                  shape: tuple[int, int] | None = None) -> np.ndarray:
        """Map an array in model-input space (any resolution) back to the crop's geometry,
        or straight to the crop at another size (`shape`: rows, columns; e.g. an SC's).

        The same as resizing the map to the model input, cutting out the crop's part and
        resizing that to the crop (PIL bilinear, both steps), done as one product of
        separable weight matrices: `rows @ map @ cols.T`. The maps are tiny (the network's
        last feature map, e.g. 5 x 5) and the crops large, so this costs a fraction of two
        full-size resizes (tests/inference/test_cam_runtime.py compares the two).
        """
        h, w = model_map.shape
        out_rows, out_cols = shape if shape is not None else (self.src_height, self.src_width)
        rows = _axis_weights(h, self.size, self.top, self.height, out_rows)
        cols = _axis_weights(w, self.size, self.left, self.width, out_cols)
        return _matmul_here(rows @ model_map.astype(np.float32), cols.T)


_SINGLE_THREAD_PRODUCT = 200_000
"""m * n * k of a matrix product OpenBLAS computes on the calling thread (its threshold for
using its threads is 4 * 65536)."""


def _matmul_here(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """`a @ b` (float32) in row blocks small enough for OpenBLAS to compute each on the
    calling thread: one large product wakes its worker threads, which then spin for a while
    and take the cores from the ONNX Runtime sessions that run next."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.float32)
    step = max(1, _SINGLE_THREAD_PRODUCT // max(1, b.shape[0] * b.shape[1]))
    for start in range(0, a.shape[0], step):
        np.matmul(a[start : start + step], b, out=out[start : start + step])
    return out


@lru_cache(maxsize=256)
def _axis_weights(n_model: int, size: int, offset: int, length: int, n_src: int) -> np.ndarray:
    """(n_src, n_model) weights along one axis of `Letterbox.to_source`: the model map's
    n_model samples resized to the input's `size`, the crop's `length` samples from `offset`
    kept, and those resized to the crop's n_src. Cached per crop geometry (n_model is the
    feature map's side, so an entry is at most tens of kilobytes)."""
    inner = np.ascontiguousarray(_resize_weights(n_model, size)[offset : offset + length])
    weights = _matmul_here(_resize_weights(length, n_src), inner)
    weights.setflags(write=False)
    return weights


def _resize_weights(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of `_resize` along one axis: `_resize` of an (n_in, w) array to
    (n_out, w) equals `weights @ array` (PIL resamples each axis separately). Read off by
    resizing an identity matrix along that axis. Not cached: n_in x n_out can be megabytes;
    `_axis_weights` caches the small composite."""
    if n_in == n_out:
        return np.eye(n_in, dtype=np.float32)
    eye = Image.fromarray(np.eye(n_in, dtype=np.float32), mode="F")
    return np.asarray(eye.resize((n_in, n_out), Image.Resampling.BILINEAR), dtype=np.float32)


def _resize(img: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Bilinear (antialiased when shrinking) resize of a float32 2-D array to (h, w)."""
    h, w = shape
    if img.shape == (h, w):
        return img.astype(np.float32, copy=False)
    pil = Image.fromarray(np.ascontiguousarray(img, dtype=np.float32), mode="F")
    return np.asarray(pil.resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)


_RECENT = 32
"""How many letterboxed crops `letterbox` remembers (a study's crops x input sizes)."""
_recent: OrderedDict[tuple[int, int], tuple[weakref.ref[np.ndarray], np.ndarray, Letterbox]] = (
    OrderedDict())
_recent_lock = threading.Lock()


def letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    """Resize a float [0, 1] crop to fit `size` x `size`, keeping its aspect, pad the rest.

    The result is read-only. For a read-only array (a study's crops, study.py) it is
    remembered while that array object lives: the pipelines of a job share the crops and
    several use the same input size, so each crop is resized once per size (a few
    milliseconds for a full-size hip crop).
    """
    if img.flags.writeable:
        out, box = _letterbox(img, size)
        out.setflags(write=False)
        return out, box
    key = (id(img), size)
    with _recent_lock:
        hit = _recent.get(key)
        if hit is not None and hit[0]() is img:
            _recent.move_to_end(key)
            return hit[1], hit[2]
    out, box = _letterbox(img, size)
    out.setflags(write=False)
    with _recent_lock:
        _recent[key] = (weakref.ref(img), out, box)
        while len(_recent) > _RECENT:
            _recent.popitem(last=False)
    return out, box


def _letterbox(img: np.ndarray, size: int) -> tuple[np.ndarray, Letterbox]:
    if img.ndim != 2 or min(img.shape) < 1:
        raise ValueError(f"expected a non-empty 2-D image, got shape {img.shape}")
    src_h, src_w = img.shape
    scale = size / max(src_h, src_w)
    height = max(1, min(size, round(src_h * scale)))
    width = max(1, min(size, round(src_w * scale)))
    resized = _resize(img, (height, width))
    top, left = (size - height) // 2, (size - width) // 2
    out = np.full((size, size), PAD_VALUE, dtype=np.float32)
    out[top : top + height, left : left + width] = resized
    return out, Letterbox(src_h, src_w, size, scale, top, left, height, width)


def normalise(batch: np.ndarray) -> np.ndarray:
    """Display-space [0, 1] pixels -> model input scale."""
    return ((batch - INPUT_MEAN) / INPUT_STD).astype(np.float32)


CHANNELS = ("grey", "metal")
"""Input channels a model card may list in `parameters.channels`."""
METAL_PERCENTILES = (50.0, 99.7)
METAL_POWER = 6.0


def metal_channel(img: np.ndarray) -> np.ndarray:
    """The metal channel of one letterboxed display-space image (S, S) in [0, 1]."""
    x = np.asarray(img, dtype=np.float32)
    values = x[x > 0.0]
    if values.size < 16:
        return np.zeros_like(x)
    mid, high = np.percentile(values, METAL_PERCENTILES)
    rel = np.clip((x - mid) / max(float(high - mid), 0.05), 0.0, 1.0)
    return (rel**METAL_POWER).astype(np.float32)


def check_channels(channels: list[str] | tuple[str, ...] | None) -> tuple[str, ...]:
    """The channel recipe as a tuple; ValueError names unknown channels."""
    out = tuple(channels or ("grey",))
    unknown = [c for c in out if c not in CHANNELS]
    if unknown:
        raise ValueError(f"unknown input channel(s) {unknown}; known: {', '.join(CHANNELS)}")
    return out


def model_input(boxed: np.ndarray, channels: list[str] | tuple[str, ...] | None = None,
                ) -> np.ndarray:
    """Letterboxed display crops (B, S, S) in [0, 1] -> model input (B, C, S, S) float32."""
    chans = check_channels(channels)
    batch = np.asarray(boxed, dtype=np.float32)
    if batch.ndim == 2:
        batch = batch[None]
    planes = []
    for name in chans:
        if name == "grey":
            planes.append(batch)
        else:
            planes.append(np.stack([metal_channel(b) for b in batch]))
    return normalise(np.stack(planes, axis=1))

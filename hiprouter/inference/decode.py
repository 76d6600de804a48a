"""DICOM radiograph -> float image in display space (MONOCHROME2, 0 = black, 1 = white).

Pixel data are decoded by pydicom with the pylibjpeg/openjpeg/libjpeg/rle plug-ins (every
transfer syntax they support). Then, in the order PS3.3 C.11 prescribes: Modality LUT (or
Rescale Slope/Intercept), VOI LUT or Window Center/Width (first of several), MONOCHROME1
inversion. BitsStored masking and sign extension happen in pydicom's decoders.

A radiograph stored as colour (RGB or YBR: a film digitiser's or a web page's export, R = G
= B up to compression error) is read as the greyscale image it is; an image whose colour
channels really differ is refused.

Images a radiograph model must not see are refused with `RefusedImage` and a reason a PACS
administrator can act on: wrong modality, multi-frame, colour, no pixel data, undecodable,
or larger than `decode.max_decoded_mb` (pixel data are decoded by `pixels.py`: the declared
size is checked first, compressed data are decoded in a memory-limited process).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.pixels import apply_modality_lut, apply_voi_lut

from hiprouter.inference import pixels

RADIOGRAPH_MODALITIES: tuple[str, ...] = ("CR", "DX")
"""Modalities accepted by default; RG/OT etc. need an explicit opt-in."""

_PERCENTILE_WINDOW = (0.5, 99.5)
"""Window used when the file carries neither a VOI LUT nor a window (robust min/max)."""

_MIN_UNSATURATED = 0.01
"""A stored window leaving fewer pixels than this inside (black, white) is ignored."""

COLOUR_PHOTOMETRICS = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT",
                       "YBR_PARTIAL_420")
"""Three-sample encodings that may hold a greyscale radiograph (pydicom decodes them to RGB)."""

GREY_CHROMA = 0.025
"""A colour-encoded image is greyscale when, in 99 % of its pixels, no channel is further
than this fraction of the full range from the pixel's mean (lossy compression leaves a
grey image's channels a level or two apart; the synthetic photographs of `synth-ood`
differ by 7 % to 40 %)."""


class RefusedImage(Exception):
    """An image that cannot be used by a radiograph model, with the reason why."""

    def __init__(self, reason: str, sop_instance_uid: str = "") -> None:
        super().__init__(reason)
        self.reason = reason
        self.sop_instance_uid = sop_instance_uid


@dataclass
class DecodedImage:
    """A decoded single-frame greyscale radiograph in display space."""

    sop_instance_uid: str
    pixels: np.ndarray
    """float32 in [0, 1], shape (Rows, Columns), MONOCHROME2 (bright = dense)."""
    modality: str
    photometric: str
    voi_source: str
    """Which display transform was used: 'voi_lut', 'window', or 'percentile'."""

    def display_uint8(self) -> np.ndarray:
        """uint8 greyscale rendering of the same pixels (for overlays)."""
        scaled = np.multiply(self.pixels, np.float32(255.0), dtype=np.float32)
        np.rint(scaled, out=scaled)
        np.clip(scaled, 0, 255, out=scaled)
        return scaled.astype(np.uint8)


def read_dataset(path: str | Path) -> Dataset:
    """Read a DICOM file (also without file meta header), or refuse it with the reason."""
    try:
        return pydicom.dcmread(str(path), force=True)
    except Exception as exc:  # pydicom raises many types for broken files
        raise RefusedImage(f"unreadable DICOM file: {type(exc).__name__}: {exc}") from exc


def _str(ds: Dataset, keyword: str) -> str:
    value = ds.get(keyword, "")
    return str(value).strip().upper() if value is not None else ""


def check_radiograph(ds: Dataset, modalities: Iterable[str] = RADIOGRAPH_MODALITIES) -> None:
    """Refuse datasets that are not single-frame greyscale radiographs of an allowed modality."""
    uid = str(ds.get("SOPInstanceUID", ""))
    allowed = tuple(m.upper() for m in modalities)
    modality = _str(ds, "Modality")
    if modality not in allowed:
        shown = modality or "missing"
        raise RefusedImage(
            f"modality {shown} is not a radiograph modality accepted here ({', '.join(allowed)})",
            uid,
        )
    if "PixelData" not in ds:
        what = "float pixel data" if ("FloatPixelData" in ds or "DoubleFloatPixelData" in ds) \
            else "no pixel data"
        raise RefusedImage(f"{what} (nothing a radiograph model can read)", uid)
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        frames = 1
    if frames > 1:
        raise RefusedImage(f"multi-frame image ({frames} frames); a single radiograph is expected",
                           uid)
    samples = int(ds.get("SamplesPerPixel", 1) or 1)
    photometric = _str(ds, "PhotometricInterpretation")
    grey = samples == 1 and photometric in ("MONOCHROME1", "MONOCHROME2")
    if not grey and not (samples == 3 and photometric in COLOUR_PHOTOMETRICS):
        raise RefusedImage(
            f"colour image ({photometric or 'no PhotometricInterpretation'}, "
            f"{samples} samples per pixel); a greyscale radiograph is expected",
            uid,
        )  # three samples: greyscale content is checked after decoding (grey_of_colour)
    for keyword in ("Rows", "Columns", "BitsAllocated"):
        if keyword not in ds:
            raise RefusedImage(f"required attribute {keyword} is missing", uid)


def grey_of_colour(rgb: np.ndarray, ds: Dataset) -> np.ndarray:
    """The greyscale image held in a decoded (Rows, Columns, 3) colour image, in its own
    integer type, or `RefusedImage` when its channels differ (a photograph, a colour map)."""
    uid = str(ds.get("SOPInstanceUID", ""))
    photometric = _str(ds, "PhotometricInterpretation")
    try:
        bits = int(ds.get("BitsStored", 8) or 8)
    except (TypeError, ValueError):
        bits = 8
    step = max(1, max(rgb.shape[:2]) // 512)
    sample = rgb[::step, ::step].astype(np.float32)
    spread = np.abs(sample - sample.mean(axis=-1, keepdims=True)).max(axis=-1)
    chroma = float(np.percentile(spread, 99)) / float((1 << bits) - 1)
    if chroma > GREY_CHROMA:
        raise RefusedImage(
            f"colour image ({photometric}, 3 samples per pixel; its colour channels differ "
            f"by {chroma:.0%} of the range); a greyscale radiograph is expected", uid)
    luma = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
    return np.rint(luma).astype(rgb.dtype) if rgb.dtype.kind in "iu" else luma


def _voi(arr: np.ndarray, ds: Dataset) -> tuple[np.ndarray, tuple[float, float], str]:
    """Apply VOI LUT or window; return the image, its nominal output range and the source."""
    has_lut = "VOILUTSequence" in ds and len(ds.VOILUTSequence) > 0
    has_window = "WindowCenter" in ds and "WindowWidth" in ds
    if has_lut or has_window:
        try:
            if has_lut:  # a LUT is indexed by stored values: integers
                arr = np.rint(arr).astype(np.int64)
            out = apply_voi_lut(arr, ds, index=0, prefer_lut=True)
            # The nominal output range: the transform applied to values far outside the data.
            span = float(np.ptp(arr)) + 1.0
            probe = np.array([float(arr.min()) - 1e3 * span, float(arr.max()) + 1e3 * span])
            probe = probe.astype(np.int64) if has_lut else probe
            ends = apply_voi_lut(probe, ds, index=0, prefer_lut=True).astype(np.float64)
            lo, hi = float(ends.min()), float(ends.max())
            if np.isfinite(lo) and np.isfinite(hi) and hi > lo:
                return out.astype(np.float32), (lo, hi), "voi_lut" if has_lut else "window"
        except Exception:  # malformed VOI module: fall back to a data-driven window
            pass
    return arr.astype(np.float32), _percentile_range(arr), "percentile"


def _percentile_range(arr: np.ndarray) -> tuple[float, float]:
    lo, hi = np.percentile(arr[:: max(1, arr.shape[0] // 512)], _PERCENTILE_WINDOW)
    if hi <= lo:
        lo, hi = float(arr.min()), float(arr.max()) + 1.0
    return float(lo), float(hi)


def _saturated(img: np.ndarray) -> bool:
    """True when almost no pixel falls strictly inside the display range."""
    sample = img[:: max(1, img.shape[0] // 256), :: max(1, img.shape[1] // 256)]
    inside = np.count_nonzero((sample > 0.0) & (sample < 1.0))
    return inside < _MIN_UNSATURATED * sample.size


def _display_by_table(raw: np.ndarray, ds: Dataset) -> tuple[np.ndarray, str] | None:
    """The display image through a table of every stored value between the image's minimum
    and maximum, when the header gives the window or VOI LUT: the modality LUT and VOI are
    elementwise, so applying them to the (at most 65536) values and indexing the table
    gives the same pixels as applying them to the (millions of) pixels, in a fraction of
    the time. None when the table does not apply (float pixels, a value range not much
    smaller than the image, no window in the header, a window that misses the data): the
    caller then transforms the pixels themselves."""
    if raw.dtype.kind not in "iu" or raw.size < 4096:
        return None
    base, top = int(raw.min()), int(raw.max())
    if top - base + 1 > min(1 << 16, raw.size // 8):
        return None
    try:
        values = np.arange(base, top + 1, dtype=np.int64).astype(raw.dtype)
        arr = apply_modality_lut(values, ds).astype(np.float64, copy=False)
        out, (lo, hi), source = _voi(arr, ds)
    except Exception:
        return None
    if source == "percentile":  # needs the pixels' distribution, not the value range
        return None
    table = np.clip((out - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    img = table[raw.astype(np.int64) - base] if base else table[raw]
    if _saturated(img):  # a window that misses the data: the caller's percentile window
        return None
    return img, source


def decode(ds: Dataset, modalities: Iterable[str] = RADIOGRAPH_MODALITIES) -> DecodedImage:
    """Decode a radiograph to display space, or raise `RefusedImage` with the reason."""
    check_radiograph(ds, modalities)
    uid = str(ds.get("SOPInstanceUID", ""))
    try:  # declared size checked first; compressed data decoded in a bounded process
        raw = pixels.pixel_array(ds)
    except pixels.PixelDataRefused as exc:
        raise RefusedImage(exc.reason, uid) from exc
    except Exception as exc:  # decoder plug-ins raise assorted errors
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", str(syntax)) if syntax else "unknown transfer syntax"
        raise RefusedImage(f"pixel data cannot be decoded ({name}): {exc}", uid) from exc
    if raw.ndim == 3 and raw.shape[-1] == 3 and _str(ds, "PhotometricInterpretation") in \
            COLOUR_PHOTOMETRICS:
        raw = grey_of_colour(raw, ds)
    if raw.ndim != 2:
        raise RefusedImage(f"unexpected pixel array shape {raw.shape}; one greyscale frame "
                           "is expected", uid)
    found = _display_by_table(raw, ds)
    if found is not None:
        img, source = found
    else:
        try:
            arr = apply_modality_lut(raw, ds).astype(np.float64, copy=False)
        except Exception as exc:
            raise RefusedImage(f"modality LUT cannot be applied: {exc}", uid) from exc
        out, (lo, hi), source = _voi(arr, ds)
        img = np.clip((out - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
        if source != "percentile" and _saturated(img):
            # A window that misses the data (mis-set by the modality) would show a blank image.
            out, (lo, hi), source = arr.astype(np.float32), _percentile_range(arr), "percentile"
            img = np.clip((out - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)
    photometric = _str(ds, "PhotometricInterpretation")
    if photometric == "MONOCHROME1":
        img = 1.0 - img
    return DecodedImage(uid, img, _str(ds, "Modality"), photometric, source)


def decode_file(path: str | Path,
                modalities: Iterable[str] = RADIOGRAPH_MODALITIES) -> tuple[Dataset, DecodedImage]:
    """Read and decode one file; raises `RefusedImage` for anything unusable."""
    ds = read_dataset(path)
    return ds, decode(ds, modalities)

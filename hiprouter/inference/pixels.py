"""Pixel data decoding that a crafted image cannot turn into a crash: size and memory bounds.

Before any pixel data is decoded, the size the header declares (Rows x Columns x frames x
samples per pixel x bytes per sample) is checked against `decode.max_decoded_mb`.
Uncompressed (native) pixel data are then read in this process: their size is bounded by
the bytes actually stored. Compressed (encapsulated) pixel data -- JPEG, JPEG-LS, JPEG 2000,
RLE -- are decoded in a separate process whose address space is limited
(`decode.memory_limit_mb`, RLIMIT_AS) and whose time is bounded (`decode.timeout_s`): the
decoder allocates what the *codestream* declares, not what the header says, and a decoder
fault must not take the worker down. A refused image raises `PixelDataRefused` with a reason
a PACS administrator can act on; the caller reports the study's other images as usual.

The decoding process is started on first use (a fresh interpreter, so it does not inherit
the worker's models) and reused; one that died or overran is killed and replaced.
"""

from __future__ import annotations

import os
import pickle
import select
import struct
import subprocess
import sys
import threading
import time
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from pydicom.dataset import Dataset

MIB = 1024 * 1024


class PixelDataRefused(Exception):
    """Pixel data that will not be decoded, with the reason."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass(frozen=True)
class DecodeLimits:
    """`decode.*` of the configuration."""

    max_decoded_mb: float = 512.0
    memory_limit_mb: int = 2048
    timeout_s: float = 120.0
    sandbox: bool = True


_limits = DecodeLimits()
_lock = threading.Lock()


def configure(limits: DecodeLimits) -> None:
    """Use `limits` from now on (the running decoding process is replaced)."""
    global _limits
    with _lock:
        _limits = limits
        _discard_pool()


def limits() -> DecodeLimits:
    return _limits


def declared_bytes(ds: Dataset) -> int:
    """Rows x Columns x frames x samples x bytes per sample, as the header declares."""
    def number(keyword: str, default: int | None = None) -> int:
        value = ds.get(keyword, default)
        try:
            return int(value if value is not None else -1)
        except (TypeError, ValueError) as exc:
            raise PixelDataRefused(f"{keyword} is not a number") from exc

    rows, columns = number("Rows"), number("Columns")
    frames = number("NumberOfFrames", 1) or 1
    samples = number("SamplesPerPixel", 1) or 1
    bits = number("BitsAllocated")
    if rows <= 0 or columns <= 0 or bits <= 0 or frames < 0 or samples < 0:
        raise PixelDataRefused(f"image size not declared (Rows {rows}, Columns {columns}, "
                               f"BitsAllocated {bits})")
    return rows * columns * frames * samples * ((bits + 7) // 8)


def check_declared(ds: Dataset) -> int:
    """Refuse a header that declares more decoded bytes than `decode.max_decoded_mb`."""
    size = declared_bytes(ds)
    cap = _limits.max_decoded_mb * MIB
    if size > cap:
        raise PixelDataRefused(
            f"declared image size {ds.get('Rows')} x {ds.get('Columns')} x "
            f"{ds.get('NumberOfFrames', 1) or 1} frames x {ds.get('SamplesPerPixel', 1) or 1} "
            f"samples x {ds.get('BitsAllocated')} bits = {size / MIB:.0f} MiB exceeds "
            f"decode.max_decoded_mb ({_limits.max_decoded_mb:g} MiB)")
    return size


def _compressed(ds: Dataset) -> bool:
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return bool(syntax is not None and syntax.is_compressed)


def pixel_array(ds: Dataset) -> np.ndarray:
    """`ds.pixel_array`, within the limits (see the module docstring)."""
    size = check_declared(ds)
    if not _compressed(ds) or not _limits.sandbox:
        return _checked(ds.pixel_array, size)
    return _checked(_in_sandbox("pixels", ds), size)


def decompress(ds: Dataset) -> Dataset:
    """`ds.decompress()` (same SOP Instance UID) within the limits; returns the
    decompressed data set (`ds` itself when it is not compressed)."""
    size = check_declared(ds)
    if not _compressed(ds):
        return ds
    if not _limits.sandbox:
        ds.decompress(generate_instance_uid=False)
        return ds
    out: Dataset = _in_sandbox("decompress", ds)
    _checked_length(len(out.PixelData), size)
    return out


def _checked(arr: np.ndarray, declared: int) -> np.ndarray:
    _checked_length(arr.nbytes, declared)
    return arr


def _checked_length(nbytes: int, declared: int) -> None:
    # pydicom decodes to the declared shape; more is a decoder that ignored it
    if nbytes > max(declared, 1) * 2:
        raise PixelDataRefused(f"decoded pixel data ({nbytes} bytes) larger than declared "
                               f"({declared} bytes)")


# -- the decoding process ------------------------------------------------------------------
#
# A plain child interpreter (not multiprocessing: that would import the caller's __main__
# in the child) that reads (task, data set) requests from stdin and writes (ok, result)
# to stdout, each as a length-prefixed pickle. Its address space is limited before it
# imports anything.

_HEADER = struct.Struct(">Q")


class _Decoder:
    """One decoding process and the limits it was started with."""

    def __init__(self, limit: DecodeLimits) -> None:
        self.limit = limit
        package_root = str(Path(__file__).resolve().parents[2])
        env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1",
               "MKL_NUM_THREADS": "1",
               "PYTHONPATH": os.pathsep.join(
                   p for p in (package_root, os.environ.get("PYTHONPATH")) if p)}
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from hiprouter.inference.pixels import serve; serve()",
             str(limit.memory_limit_mb)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def call(self, task: str, ds: Dataset) -> tuple[bool, Any]:
        """Send one request and wait for its answer; raises TimeoutError or EOFError."""
        assert self.proc.stdin is not None and self.proc.stdout is not None
        payload = pickle.dumps((task, ds), protocol=pickle.HIGHEST_PROTOCOL)
        try:
            self.proc.stdin.write(_HEADER.pack(len(payload)) + payload)
            self.proc.stdin.flush()
        except (BrokenPipeError, OSError) as exc:
            raise EOFError("the decoding process is gone") from exc
        deadline = time.monotonic() + self.limit.timeout_s
        header = _read(self.proc.stdout, _HEADER.size, deadline)
        body = _read(self.proc.stdout, _HEADER.unpack(header)[0], deadline)
        result: tuple[bool, Any] = pickle.loads(body)
        return result

    def kill(self) -> None:
        try:
            self.proc.kill()
            self.proc.wait(10)
        except Exception:
            pass
        for stream in (self.proc.stdin, self.proc.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass


def _read(stream: Any, n: int, deadline: float) -> bytes:
    fd = stream.fileno()
    out = bytearray()
    while len(out) < n:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], remaining)
        if not ready:
            raise TimeoutError
        chunk = os.read(fd, min(n - len(out), 1 << 20))
        if not chunk:
            raise EOFError("the decoding process died")
        out += chunk
    return bytes(out)


_decoder: _Decoder | None = None


def _in_sandbox(task: str, ds: Dataset) -> Any:
    """Run `task` on `ds` in the decoding process; refuse on a fault, a memory error or a
    timeout (the process is then replaced)."""
    global _decoder
    with _lock:
        limit = _limits
        if _decoder is None or not _decoder.alive() or _decoder.limit != limit:
            _discard_pool()
            _decoder = _Decoder(limit)
        decoder = _decoder
        try:
            ok, value = decoder.call(task, ds)
        except TimeoutError:
            _discard_pool()
            raise PixelDataRefused(f"decoding took longer than decode.timeout_s "
                                   f"({limit.timeout_s:g} s); decoder stopped") from None
        except (EOFError, pickle.UnpicklingError):
            _discard_pool()
            raise PixelDataRefused(
                "the decoding process died on this pixel data (crafted or corrupt "
                f"codestream, or more than decode.memory_limit_mb = {limit.memory_limit_mb} "
                "MiB)") from None
    if not ok:
        raise PixelDataRefused(value)
    return value


def _discard_pool() -> None:
    """Kill the decoding process (caller holds `_lock`)."""
    global _decoder
    decoder, _decoder = _decoder, None
    if decoder is not None:
        decoder.kill()


def shutdown() -> None:
    """Stop the decoding process (it is started again on the next use)."""
    with _lock:
        _discard_pool()


def serve() -> None:
    """The decoding process's main loop (see `_Decoder`); argv[1]: the memory limit."""
    import resource

    limit = int(sys.argv[1]) * MIB
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    while True:
        header = stdin.read(_HEADER.size)
        if len(header) < _HEADER.size:
            return
        task, ds = pickle.loads(stdin.read(_HEADER.unpack(header)[0]))
        result = _run(task, ds)
        try:
            payload = pickle.dumps(result, protocol=pickle.HIGHEST_PROTOCOL)
        except MemoryError:
            payload = pickle.dumps((False, "the decoded pixel data do not fit in "
                                           "decode.memory_limit_mb"))
        stdout.write(_HEADER.pack(len(payload)) + payload)
        stdout.flush()


def _run(task: str, ds: Dataset) -> tuple[bool, Any]:
    what = "decoding" if task == "pixels" else "decompressing"
    try:
        if task == "pixels":
            return True, ds.pixel_array
        ds.decompress(generate_instance_uid=False)
        return True, ds
    except MemoryError:
        import resource

        mb = resource.getrlimit(resource.RLIMIT_AS)[0] // MIB
        return False, (f"{what} needs more than decode.memory_limit_mb ({mb} MiB): "
                       "crafted or corrupt codestream")
    except Exception as exc:
        return False, f"pixel data cannot be decoded: {type(exc).__name__}: {exc}"


# -- deflate ---------------------------------------------------------------------------


def inflated_size(deflated: bytes | memoryview, limit: int) -> int:
    """How many bytes a raw deflate stream inflates to, counting in bounded chunks; raises
    PixelDataRefused past `limit` (a deflate bomb) without holding the output."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    total = 0
    data = bytes(deflated)
    while data:
        try:
            chunk = inflater.decompress(data, MIB)
        except zlib.error as exc:
            raise PixelDataRefused(f"deflated data set is corrupt: {exc}") from exc
        total += len(chunk)
        if total > limit:
            raise PixelDataRefused(
                f"deflated data set inflates to more than {limit // MIB} MiB")
        data = inflater.unconsumed_tail
        if not chunk and not data:
            break
    return total

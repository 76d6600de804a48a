"""Per-image CPU work of a study spread over the cores: decoding, cropping, letterboxing and
mapping heat maps back to the source are NumPy/PIL work that releases the GIL, one image at
a time, so a study's images (and a batch's crops) can go through a thread pool.

One pool per process, sized like the inference sessions (`inference.threads`, default the
core count). Callers must not nest `map_each` (a task that waits for the same pool could
wait forever once every thread does).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from hiprouter.inference.models import cpu_threads

T = TypeVar("T")
R = TypeVar("R")

_lock = threading.Lock()
_pool: ThreadPoolExecutor | None = None
_pool_size = 0


def _executor(size: int) -> ThreadPoolExecutor:
    global _pool, _pool_size
    with _lock:
        if _pool is None or _pool_size != size:
            if _pool is not None:  # resized (inference.threads changed): let the old go
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(max_workers=size, thread_name_prefix="hiprouter-image")
            _pool_size = size
        return _pool


MIN_THREADS = 4
"""Fewer inference threads than this: the work stays on the calling thread. On the 2-core
development VM the pool made decoding a study slower (108-132 against 152-155 images/s,
bench/bench_gpu.py --device cpu): the inference sessions already use both cores and the
GIL-holding parts of decoding then wait for each other."""


def map_each(fn: Callable[[T], R], items: Sequence[T]) -> list[R]:
    """`[fn(x) for x in items]`, on the image pool when there are several items and at least
    MIN_THREADS inference threads; results in order, the first exception raised as in the
    loop."""
    threads = cpu_threads()
    if threads < MIN_THREADS or len(items) < 2:
        return [fn(x) for x in items]
    return list(_executor(threads).map(fn, items))

"""The per-image thread pool (inference/parallel.py): order, errors, and the same study
whether a study's images are decoded on the pool or one after another."""

from __future__ import annotations

import threading
from collections.abc import Iterator

import numpy as np
import pytest

from hiprouter.inference import parallel
from hiprouter.inference.models import set_cpu_threads
from hiprouter.inference.study import StudyInput
from tests.inference.helpers import blob_image, make_radiograph


@pytest.fixture
def four_threads() -> Iterator[None]:
    set_cpu_threads(parallel.MIN_THREADS)
    yield
    set_cpu_threads(None)


def test_map_each_keeps_order_and_uses_the_pool(four_threads: None) -> None:
    names = parallel.map_each(lambda i: (i * i, threading.current_thread().name), range(12))
    assert [v for v, _ in names] == [i * i for i in range(12)]
    assert all(n.startswith("hiprouter-image") for _, n in names)
    # inference.threads changed: a pool of the new size replaces the old one, which stops
    old = parallel._executor(parallel.MIN_THREADS)
    set_cpu_threads(parallel.MIN_THREADS + 1)
    assert parallel.map_each(lambda i: i + 1, [1, 2, 3]) == [2, 3, 4]
    assert parallel._executor(parallel.MIN_THREADS + 1) is not old
    with pytest.raises(RuntimeError):
        old.submit(print)


def test_map_each_raises_the_first_error_as_the_loop_would(four_threads: None) -> None:
    def fn(i: int) -> int:
        if i in (3, 7):
            raise ValueError(f"bad {i}")
        return i

    with pytest.raises(ValueError, match="bad 3"):
        parallel.map_each(fn, list(range(10)))


def test_few_threads_stay_on_the_calling_thread() -> None:
    set_cpu_threads(parallel.MIN_THREADS - 1)
    try:
        names = parallel.map_each(lambda _: threading.current_thread().name, [1, 2, 3])
    finally:
        set_cpu_threads(None)
    assert set(names) == {threading.current_thread().name}


def _study_datasets() -> list:
    out = [make_radiograph(blob_image((300, 420), (150, 100 + 40 * i), 30),
                           SeriesDescription="AP PELVIS", BodyPartExamined="PELVIS")
           for i in range(4)]
    out.insert(2, make_radiograph(blob_image((200, 200), (100, 100), 20),
                                  BodyPartExamined="CHEST"))
    broken = make_radiograph(blob_image((64, 64), (32, 32), 5), SeriesDescription="HIP LEFT")
    broken.PixelData = broken.PixelData[:100]
    out.append(broken)
    return out


def test_a_study_is_the_same_decoded_on_the_pool_or_in_turn(four_threads: None) -> None:
    datasets = _study_datasets()
    pooled = StudyInput.from_datasets("1.2.3", datasets, ("CR", "DX"))
    set_cpu_threads(1)
    serial = StudyInput.from_datasets("1.2.3", datasets, ("CR", "DX"))
    assert list(pooled.images) == list(serial.images) and len(pooled.images) == 4
    assert pooled.refused == serial.refused and len(pooled.refused) == 2
    for uid, image in pooled.images.items():
        other = serial.images[uid]
        np.testing.assert_array_equal(image.decoded.pixels, other.decoded.pixels)
        assert [c.box for c in image.crops] == [c.box for c in other.crops]
        assert image.view == other.view

"""The display transform through a table of stored values gives the pixels that
transforming every pixel gives (decode._display_by_table)."""

from __future__ import annotations

import numpy as np
import pytest
from pydicom.dataset import Dataset

import hiprouter.inference.decode as decode_mod
from hiprouter.inference.decode import decode
from tests.inference.helpers import make_radiograph

rng = np.random.default_rng(11)
NOISE = rng.integers(300, 3800, (400, 300)).astype(np.uint16)  # 3500 values, 120000 px


def _lut_item() -> Dataset:
    item = Dataset()
    item.LUTDescriptor = [4096, 0, 16]
    item.LUTData = (np.sqrt(np.arange(4096) / 4095.0) * 65535).astype(np.uint16).tolist()
    item.LUTExplanation = "square root"
    return item


CASES = {
    "window": {"WindowCenter": 2000, "WindowWidth": 3000},
    "window + rescale": {"WindowCenter": -500, "WindowWidth": 2500, "RescaleSlope": 1.5,
                         "RescaleIntercept": -2048, "RescaleType": "US"},
    "sigmoid": {"WindowCenter": 2000, "WindowWidth": 3000, "VOILUTFunction": "SIGMOID"},
    "linear exact": {"WindowCenter": 2000, "WindowWidth": 3000,
                     "VOILUTFunction": "LINEAR_EXACT"},
    "voi lut": {"VOILUTSequence": [_lut_item()]},
    "monochrome1": {"WindowCenter": 2000, "WindowWidth": 3000,
                    "PhotometricInterpretation": "MONOCHROME1"},
    "window missing the data": {"WindowCenter": 60000, "WindowWidth": 10},
    "no window": {},
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_table_gives_the_pixels_of_the_per_pixel_transform(case: str,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    tags = dict(CASES[case])
    photometric = tags.pop("PhotometricInterpretation", "MONOCHROME2")
    ds = make_radiograph(NOISE, photometric=photometric, **tags)
    raw = ds.pixel_array
    table = decode_mod._display_by_table(raw, ds)
    if case in ("no window", "window missing the data"):
        assert table is None  # percentile window: the pixels' distribution is needed
    else:
        assert table is not None and table[1] in ("window", "voi_lut")
    fast = decode(ds)
    monkeypatch.setattr(decode_mod, "_display_by_table", lambda raw, ds: None)
    slow = decode(ds)
    assert fast.voi_source == slow.voi_source
    assert np.array_equal(fast.pixels, slow.pixels)


def test_float_pixels_or_a_wide_value_range_use_the_pixels() -> None:
    wide = make_radiograph(np.arange(100 * 120, dtype=np.uint16).reshape(120, 100) * 5,
                           bits_stored=16, WindowCenter=30000, WindowWidth=60000)
    assert decode_mod._display_by_table(wide.pixel_array, wide) is None  # > pixels / 8
    assert decode_mod._display_by_table(NOISE.astype(np.float32),
                                        make_radiograph(NOISE, WindowCenter=2000,
                                                        WindowWidth=3000)) is None

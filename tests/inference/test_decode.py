"""Decoding: display transforms, refusals with reasons, and the real DICOM corpus."""

from __future__ import annotations

import csv
import time

import numpy as np
import pydicom
import pytest
from pydicom.uid import RLELossless

from hiprouter.inference.decode import RefusedImage, decode, decode_file
from tests.inference.helpers import make_radiograph

RAMP = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (32, 1))


def test_monochrome1_is_inverted_to_display_space() -> None:
    m2 = decode(make_radiograph(RAMP)).pixels
    m1 = decode(make_radiograph(RAMP, photometric="MONOCHROME1")).pixels
    assert m2[0, 0] < 0.05 and m2[0, -1] > 0.95
    np.testing.assert_allclose(m1, 1.0 - m2, atol=1e-6)


def test_window_center_width_and_rescale_are_applied() -> None:
    ds = make_radiograph(RAMP, RescaleSlope=2, RescaleIntercept=-100, WindowCenter=2000,
                         WindowWidth=1000)
    img = decode(ds)
    assert img.voi_source == "window"
    hu = RAMP.astype(float) * 2 - 100
    assert np.all(img.pixels[hu < 1500] == 0.0) and np.all(img.pixels[hu > 2500] == 1.0)
    inside = (hu > 1600) & (hu < 2400)
    assert np.all((img.pixels[inside] > 0) & (img.pixels[inside] < 1))


def test_bits_stored_masks_unused_high_bits() -> None:
    noisy = RAMP | np.uint16(0xF000)  # garbage above BitsStored=12
    clean = decode(make_radiograph(RAMP, WindowCenter=2048, WindowWidth=4096)).pixels
    masked = decode(make_radiograph(noisy, WindowCenter=2048, WindowWidth=4096)).pixels
    np.testing.assert_allclose(masked, clean)


def test_window_outside_the_data_falls_back_to_percentiles() -> None:
    img = decode(make_radiograph(RAMP, WindowCenter=60000, WindowWidth=10))
    assert img.voi_source == "percentile"
    assert img.pixels.std() > 0.2


@pytest.mark.parametrize(
    ("tags", "reason"),
    [
        ({"Modality": "MR"}, "modality MR"),
        ({"NumberOfFrames": 3}, "multi-frame"),
        ({"PhotometricInterpretation": "PALETTE COLOR"}, "colour image"),
    ],
)
def test_non_radiographs_are_refused_with_reason(tags: dict, reason: str) -> None:
    ds = make_radiograph(RAMP)
    for key, value in tags.items():
        setattr(ds, key, value)
    with pytest.raises(RefusedImage, match=reason):
        decode(ds)


def test_missing_pixel_data_and_colour_are_refused() -> None:
    ds = make_radiograph(RAMP)
    del ds.PixelData
    with pytest.raises(RefusedImage, match="no pixel data"):
        decode(ds)
    three = make_radiograph(RAMP)
    three.SamplesPerPixel, three.PhotometricInterpretation = 3, "PALETTE COLOR"
    with pytest.raises(RefusedImage, match="colour"):
        decode(three)


def _as_colour(grey: np.ndarray, photometric: str = "RGB", **tags: object) -> pydicom.Dataset:
    """An 8-bit three-sample CR data set of an (H, W, 3) uint8 image."""
    ds = make_radiograph(grey[..., 0], bits_stored=8, **tags)
    ds.SamplesPerPixel, ds.PhotometricInterpretation, ds.PlanarConfiguration = 3, photometric, 0
    ds.BitsAllocated, ds.HighBit = 8, 7
    ds.PixelData = np.ascontiguousarray(grey, dtype=np.uint8).tobytes()
    return ds


def test_a_grey_radiograph_stored_as_rgb_is_read_as_grey() -> None:
    """A film digitiser's or web export: R = G = B. It decodes to the same display image as
    the same pixels stored as MONOCHROME2."""
    grey = (RAMP // 16).astype(np.uint8)
    mono = decode(make_radiograph(grey, bits_stored=8)).pixels
    img = decode(_as_colour(np.repeat(grey[..., None], 3, axis=-1)))
    assert img.pixels.shape == grey.shape
    np.testing.assert_allclose(img.pixels, mono, atol=1e-6)


def test_a_grey_radiograph_in_lossy_ybr_jpeg_is_read_as_grey() -> None:
    """JPEG baseline YBR_FULL_422 (what a colour JPEG becomes): the chroma rounding of lossy
    compression leaves the channels a level or two apart, still greyscale."""
    import io

    from PIL import Image
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    rng = np.random.default_rng(3)
    yy, xx = np.mgrid[0:96, 0:128]
    grey = np.clip(40 + xx + 30 * np.sin(yy / 7) + rng.normal(0, 4, xx.shape), 0, 255)
    grey = grey.astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(grey).convert("RGB").save(buf, "JPEG", quality=85, subsampling=2)
    ds = _as_colour(np.repeat(grey[..., None], 3, axis=-1), "YBR_FULL_422")
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buf.getvalue()])
    img = decode(ds)
    mono = decode(make_radiograph(grey, bits_stored=8)).pixels
    assert np.abs(img.pixels - mono).mean() < 0.03


def test_a_colour_photograph_is_refused_even_as_a_cr() -> None:
    """Real colour (a photograph of a screen sent with a CR's headers) stays refused."""
    from hiprouter.synth.alt import photo

    rgb = photo.screen_photo(np.random.default_rng(5), (160, 120)).astype(np.uint8)
    with pytest.raises(RefusedImage, match="colour channels differ"):
        decode(_as_colour(rgb))


def test_other_modalities_need_opt_in() -> None:
    ds = make_radiograph(RAMP, modality="OT")
    with pytest.raises(RefusedImage):
        decode(ds)
    assert decode(ds, modalities=("CR", "DX", "OT")).pixels.shape == RAMP.shape


def test_truncated_and_compressed_files(tmp_path) -> None:
    ds = make_radiograph(RAMP)
    ds.compress(RLELossless, RAMP)
    ds.save_as(tmp_path / "rle.dcm", enforce_file_format=True)
    _, img = decode_file(tmp_path / "rle.dcm")
    np.testing.assert_allclose(img.pixels, decode(make_radiograph(RAMP)).pixels)
    bad = make_radiograph(RAMP)
    bad.PixelData = bad.PixelData[:100]
    with pytest.raises(RefusedImage, match="cannot be decoded"):
        decode(bad)
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(RefusedImage):
        decode_file(tmp_path / "junk.dcm")


def test_corpus_every_file_decodes_or_is_refused_with_reason(shared_data) -> None:
    """Each corpus file: a display image in [0, 1] or a refusal with a reason (never a crash)."""
    corpus = shared_data / "dicom-corpus"
    every = ("CR", "DX", "RG", "OT", "MG", "CT", "MR", "US", "NM", "XA", "RF", "PT", "SC")
    decoded, refused, slow = 0, {}, []
    for row in csv.DictReader((corpus / "index.csv").open()):
        start = time.perf_counter()
        try:
            _, img = decode_file(corpus / row["file"], modalities=every)
        except RefusedImage as exc:
            assert exc.reason
            refused[row["file"]] = exc.reason
        else:
            assert img.pixels.dtype == np.float32 and img.pixels.ndim == 2
            assert 0.0 <= float(img.pixels.min()) and float(img.pixels.max()) <= 1.0
            decoded += 1
            # Every single-frame greyscale CR/DX that pydicom decoded when the corpus was built
            # must decode here too.
        slow.append((time.perf_counter() - start, row["file"]))
        if (row["modality"] in ("CR", "DX") and row["decode_pydicom_pylibjpeg"].startswith("ok")
                and row["photometric"].startswith("MONOCHROME") and row["frames"] in ("", "1")):
            assert row["file"] not in refused, refused.get(row["file"])
    assert decoded >= 100
    print(f"decoded {decoded}, refused {len(refused)}; slowest {max(slow)}")


def test_real_cr_hip_decodes(shared_data) -> None:
    ds = pydicom.dcmread(shared_data / "hip-real" / "wg04" / "RG2_UNC_hip_CR.dcm")
    img = decode(ds)
    assert img.pixels.shape == (2140, 1760)
    assert 0.2 < float(img.pixels.mean()) < 0.8


def test_real_paediatric_films_exported_as_rgb_decode_as_grey(shared_data) -> None:
    """The DDH set's DICOMs (lossy JPEG 2000, RGB, Modality DX): greyscale films in a colour
    wrapper. Each decodes to one grey frame with the film's contrast."""
    files = sorted((shared_data / "hip-real" / "ddh_jordan").glob("*.dcm"))
    assert files
    for path in files:
        ds, img = decode_file(path)
        rgb = ds.pixel_array.astype(np.float32)
        assert ds.PhotometricInterpretation == "RGB" and rgb.shape[-1] == 3
        assert img.pixels.shape == (ds.Rows, ds.Columns)
        assert img.pixels.std() > 0.1, path.name
        assert np.corrcoef(img.pixels.ravel(), rgb[..., 1].ravel())[0, 1] > 0.99, path.name

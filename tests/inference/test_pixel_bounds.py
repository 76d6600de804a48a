"""Decompression and size bombs: declared sizes are checked first, compressed pixel data are
decoded in a memory-limited process that may die without taking this one down."""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator

import numpy as np
import pytest
from pydicom.dataset import Dataset
from pydicom.encaps import encapsulate, generate_frames
from pydicom.uid import JPEG2000Lossless, RLELossless

from hiprouter.inference import pixels
from hiprouter.inference.decode import RefusedImage, decode
from tests.inference.helpers import make_radiograph

RAMP = np.tile(np.linspace(0, 4095, 64).astype(np.uint16), (64, 1))


@pytest.fixture(autouse=True)
def _fresh_limits() -> Iterator[None]:
    yield
    pixels.configure(pixels.DecodeLimits())
    pixels.shutdown()


def j2k(image: np.ndarray = RAMP) -> Dataset:
    ds = make_radiograph(image, BodyPartExamined="HIP")
    ds.compress(JPEG2000Lossless)
    return ds


def j2k_bomb(width: int, height: int) -> Dataset:
    """A 64 x 64 image whose JPEG 2000 codestream (SIZ marker) declares width x height."""
    ds = j2k()
    frame = bytearray(next(generate_frames(ds.PixelData, number_of_frames=1)))
    siz = frame.index(b"\xff\x51")
    struct.pack_into(">LL", frame, siz + 6, width, height)   # Xsiz, Ysiz
    struct.pack_into(">LL", frame, siz + 22, width, height)  # XTsiz, YTsiz (one tile)
    ds.PixelData = encapsulate([bytes(frame)])
    return ds


def test_declared_size_over_the_cap_is_refused_before_decoding() -> None:
    pixels.configure(pixels.DecodeLimits(max_decoded_mb=64))
    ds = make_radiograph(RAMP)
    ds.Rows = ds.Columns = 8192  # 128 MiB declared, 8 KiB stored
    with pytest.raises(RefusedImage, match=r"exceeds decode.max_decoded_mb \(64 MiB\)"):
        decode(ds)
    ds.Rows = 0
    with pytest.raises(RefusedImage, match="image size not declared"):
        decode(ds)


def test_compressed_images_decode_in_the_bounded_process() -> None:
    plain = decode(make_radiograph(RAMP)).pixels
    np.testing.assert_array_equal(decode(j2k()).pixels, plain)
    rle = make_radiograph(RAMP)
    rle.compress(RLELossless)
    np.testing.assert_array_equal(decode(rle).pixels, plain)
    assert pixels._decoder is not None and pixels._decoder.alive()


def test_jpeg2000_whose_codestream_declares_a_huge_image_is_refused() -> None:
    pixels.configure(pixels.DecodeLimits(memory_limit_mb=512))
    for width, height in ((60000, 60000), (20000, 20000)):  # 7.2 GB and 800 MB of output
        with pytest.raises(RefusedImage) as refused:
            decode(j2k_bomb(width, height))
        assert refused.value.reason
    np.testing.assert_array_equal(decode(j2k()).pixels, decode(make_radiograph(RAMP)).pixels)


def test_a_decoder_that_dies_or_hangs_costs_one_image() -> None:
    decode(j2k())
    assert pixels._decoder is not None
    pixels._decoder.proc.kill()  # as if the decoder had crashed on the last image
    pixels._decoder.proc.wait()
    decode(j2k())  # a new decoding process is started
    big = j2k(np.tile(RAMP, (32, 32)))  # 2048 x 2048: far more than 1 ms to decode
    pixels.configure(pixels.DecodeLimits(timeout_s=0.001))
    with pytest.raises(RefusedImage, match=r"longer than decode.timeout_s"):
        decode(big)
    pixels.configure(pixels.DecodeLimits())
    assert decode(big).pixels.shape == (2048, 2048)


def test_decompress_for_sending_is_bounded_too() -> None:
    ds = j2k()
    out = pixels.decompress(ds)
    assert not out.file_meta.TransferSyntaxUID.is_compressed
    assert out.SOPInstanceUID == ds.SOPInstanceUID
    with pytest.raises(pixels.PixelDataRefused):
        pixels.decompress(j2k_bomb(60000, 60000))


def test_deflate_bomb_is_measured_without_holding_its_output() -> None:
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    bomb = b"".join(deflater.compress(b"\0" * (1 << 20)) for _ in range(64)) + deflater.flush()
    assert len(bomb) < 128 * 1024
    assert pixels.inflated_size(bomb, 100 << 20) == 64 << 20
    with pytest.raises(pixels.PixelDataRefused, match="inflates to more than 16 MiB"):
        pixels.inflated_size(bomb, 16 << 20)

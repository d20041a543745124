"""Formats are told by content; every refusal has its reason code and a sentence saying what is wrong."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from conveyor.data.decode import DecodeLimits, decode_image, sniff_format
from conveyor.errors import InvalidImageError
from tests.helpers import encode, gradient, png_bytes, png_claiming_size, pydicom_file

LIMITS = DecodeLimits(min_side=32, max_pixels=1_000_000)


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (png_bytes(), "png"),
        (encode(gradient(), "JPEG"), "jpeg"),
        (encode(gradient(), "TIFF"), "tiff"),
        (encode(gradient(), "BMP"), "bmp"),
        (pydicom_file("CT_small.dcm"), "dicom"),  # its preamble looks like a TIFF header: DICM must win
        (b"plain text, not an image", None),
        (b"", None),
    ],
    ids=["png", "jpeg", "tiff", "bmp", "dicom", "text", "empty"],
)
def test_sniff_format_by_content(data: bytes, expected: str | None) -> None:
    assert sniff_format(data) == expected


def test_png_decodes_to_uint8_gray_with_same_pixels() -> None:
    pixels = gradient(40, 50)
    decoded = decode_image(encode(pixels, "PNG"), LIMITS)
    assert (decoded.format, decoded.mode, decoded.bit_depth, decoded.n_frames) == ("png", "L", 8, 1)
    assert (decoded.height, decoded.width, decoded.channels) == (40, 50, 1)
    np.testing.assert_array_equal(decoded.pixels, pixels)


def test_rgba_keeps_three_colour_channels() -> None:
    rgba = np.dstack([gradient(), gradient(seed=1), gradient(seed=2), np.full((64, 64), 255, np.uint8)])
    decoded = decode_image(encode(rgba, "PNG"), LIMITS)
    assert decoded.pixels.shape == (64, 64, 3)
    np.testing.assert_array_equal(decoded.pixels, rgba[..., :3])


def test_tiff_16_bit_keeps_its_depth() -> None:
    pixels = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 16).astype(np.uint16)
    decoded = decode_image(encode(pixels, "TIFF"), LIMITS)
    assert (decoded.format, decoded.bit_depth, decoded.pixels.dtype) == ("tiff", 16, np.uint16)
    np.testing.assert_array_equal(decoded.pixels, pixels)


def test_bmp_decodes() -> None:
    decoded = decode_image(encode(gradient(), "BMP"), LIMITS)
    assert decoded.format == "bmp"
    np.testing.assert_array_equal(decoded.pixels, gradient())


def test_exif_orientation_is_applied() -> None:
    pixels = gradient(40, 80)  # landscape; orientation 6 means "rotate 90 degrees clockwise to display"
    exif = Image.Exif()
    exif[0x0112] = 6
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", exif=exif.tobytes(), quality=95)
    decoded = decode_image(buffer.getvalue(), LIMITS)
    assert (decoded.height, decoded.width) == (80, 40)


def test_dicom_applies_rescale_and_scales_to_unit_range() -> None:
    decoded = decode_image(pydicom_file("CT_small.dcm"), LIMITS)
    assert (decoded.format, decoded.mode, decoded.bit_depth) == ("dicom", "MONOCHROME2", 16)
    assert decoded.pixels.shape == (128, 128)
    assert decoded.pixels.dtype == np.float32
    assert (float(decoded.pixels.min()), float(decoded.pixels.max())) == (0.0, 1.0)


def test_dicom_monochrome1_is_inverted() -> None:
    import pydicom

    ds = pydicom.dcmread(io.BytesIO(pydicom_file("MR_small.dcm")))
    normal = decode_image(pydicom_file("MR_small.dcm"), LIMITS).pixels
    ds.PhotometricInterpretation = "MONOCHROME1"
    buffer = io.BytesIO()
    ds.save_as(buffer)
    inverted = decode_image(buffer.getvalue(), LIMITS).pixels
    np.testing.assert_allclose(inverted, 1.0 - normal, atol=1e-6)


def test_dicom_without_preamble_is_recognised() -> None:
    headless = pydicom_file("MR_small.dcm")[128 + 4 :]  # no preamble, no "DICM": starts at group 0002
    assert sniff_format(headless) == "dicom"
    assert decode_image(headless, LIMITS).pixels.shape == (64, 64)


@pytest.mark.parametrize(
    ("data", "reason", "in_detail"),
    [
        (b"", "zero_bytes", "0 bytes"),
        (b"name,label\nx,y\n", "not_an_image", "not PNG, JPEG, TIFF, BMP or DICOM"),
        (encode(gradient(), "GIF"), "unsupported_format", "GIF"),
        (encode(gradient(128, 128))[:-2000], "truncated", "truncated"),
        (encode(gradient(128, 128), "JPEG")[:1500], "truncated", "truncated"),
        (b"\x89PNG\r\n\x1a\n" + b"garbage" * 50, "corrupt", "PNG"),
        (png_bytes(16, 64), "too_small", "64x16 is below the minimum side of 32"),
        (encode(np.full((64, 64), 7, np.uint8)), "blank", "the value 7"),
        (png_claiming_size(2000, 1000), "too_many_pixels", "2,000,000 pixels exceeds the limit of 1,000,000"),
        (png_claiming_size(50_000, 50_000), "too_many_pixels", "2,500,000,000 pixels exceeds the limit of 1,000,000"),
        (pydicom_file("rtplan.dcm"), "dicom_no_pixels", "RTPLAN"),
        (pydicom_file("MR_small_jpeg_ls_lossless.dcm"), "dicom_unsupported_syntax", "JPEG-LS Lossless"),
        (pydicom_file("MR_truncated.dcm"), "truncated", "less than expected"),
    ],
    ids=[
        "empty",
        "csv",
        "gif",
        "png-truncated",
        "jpeg-truncated",
        "png-corrupt",
        "too-small",
        "blank",
        "too-many-pixels",
        "pillow-bomb",
        "dicom-no-pixels",
        "dicom-jpeg-ls",
        "dicom-truncated",
    ],
)
def test_bad_input_is_refused_with_its_reason(data: bytes, reason: str, in_detail: str) -> None:
    with pytest.raises(InvalidImageError) as caught:
        decode_image(data, LIMITS)
    assert caught.value.reason == reason
    assert in_detail in caught.value.detail


def _reason(data: bytes) -> tuple[str, str]:
    with pytest.raises(InvalidImageError) as caught:
        decode_image(data)
    return caught.value.reason, caught.value.detail


def test_a_dicom_header_that_cannot_be_read_is_corrupt_not_pixel_less() -> None:
    garbage = bytes(range(256)) * 8
    assert _reason(b"\0" * 128 + b"DICM" + garbage)[0] == "corrupt"
    assert _reason(pydicom_file("CT_small.dcm")[:300]) == (
        "corrupt",
        "the DICOM header cannot be read: no SOP class found (0 elements parsed)",
    )


def test_an_image_object_cut_before_its_pixels_is_corrupt() -> None:
    ct = pydicom_file("CT_small.dcm")
    cut = ct[: ct.find(b"\xe0\x7f\x10\x00")]  # up to the Pixel Data element
    assert _reason(cut) == (
        "corrupt",
        "a CT Image Storage object (modality CT) without its pixel data: the file is cut or damaged",
    )


def test_an_object_that_has_no_pixels_by_nature_says_so() -> None:
    assert _reason(pydicom_file("rtplan.dcm")) == (
        "dicom_no_pixels",
        "DICOM object (modality RTPLAN, SOP class RT Plan Storage) has no pixel data",
    )


def test_a_dicom_header_with_an_unknown_value_representation_is_corrupt() -> None:
    """Found by the hardening campaign's mutations: pydicom raises NotImplementedError for it, which crashed ingest."""
    ct = bytearray(pydicom_file("CT_small.dcm"))
    at = ct.find(b"\x02\x00\x10\x00UI")  # Transfer Syntax UID, explicit VR
    ct[at + 4 : at + 6] = b"UY"
    reason, detail = _reason(bytes(ct))
    assert reason == "corrupt"
    assert "NotImplementedError: Unknown Value Representation 'UY'" in detail

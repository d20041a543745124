"""Recognise an image file by its content and decode it into pixels, or say exactly why not.

Formats are told by their first bytes, never by the file name: a PNG named ``.jpg`` is a PNG. Every failure is an
:class:`~conveyor.errors.InvalidImageError` whose ``reason`` is one of :data:`REASONS`.
"""

from __future__ import annotations

import io
import re
import warnings
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from conveyor.data.subgroups import dicom_subgroups
from conveyor.errors import InvalidImageError

if TYPE_CHECKING:
    from conveyor.config import Settings

__all__ = ["FORMATS", "REASONS", "DecodeLimits", "DecodedImage", "check_decoded", "decode_image", "sniff_format"]

#: Formats conveyor accepts, as :func:`sniff_format` names them; the value is the raw store's file extension.
FORMATS = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif", "bmp": ".bmp", "dicom": ".dcm"}

#: Why a file can be refused. Ingest summaries count quarantined files by these codes.
REASONS = {
    "zero_bytes": "the file is empty",
    "too_large": "the file is larger than the configured limit",
    "not_an_image": "the content is not a supported image format",
    "unsupported_format": "an image format conveyor does not read",
    "truncated": "the image data ends early",
    "corrupt": "the image data cannot be decoded",
    "too_small": "the image is smaller than the configured minimum side",
    "too_many_pixels": "more pixels than the configured limit (refused before decoding)",
    "blank": "every pixel has the same value",
    "dicom_no_pixels": "a DICOM file without pixel data",
    "dicom_unsupported_syntax": "DICOM pixel data in a compressed transfer syntax no installed decoder reads",
    "no_label": "the file has no class label",
    "bad_label": "the label does not match ingest.label_pattern",
    "unsafe_path": "the path leaves the source: a zip member's name, or a symbolic link pointing out of the folder",
    "not_a_file": "not a regular file: a broken link, a link to a folder, a FIFO, socket or device",
    "unreadable": "the file or folder cannot be read (permissions, a path too long)",
    "suspicious_archive": "a zip member that would inflate far more than any image does (a zip bomb)",
    "cannot_deidentify": "a DICOM file that decodes but cannot be de-identified (ingest.deidentify is on)",
    "low_quality": "a quality measure breaches an ingest.quality rule set to quarantine (the detail says which)",
    "corrupt_video": "a video clip PyAV cannot open or decode",
    "empty_video": "a video clip without a video stream or any usable frame",
    "too_long": "a video clip that samples into more frames than ingest.video.max_frames",
    "no_mask": "an image of a segmentation layout (images/ beside masks/, or _mask files) without its mask",
    "orphan_mask": "a mask without its image",
    "bad_mask": "a mask that cannot be read, differs in size from its image, or holds values outside ingest.masks",
}

_UNSUPPORTED_MAGIC = {
    b"GIF87a": "GIF",
    b"GIF89a": "GIF",
    b"\x00\x00\x00\x0cjP  ": "JPEG 2000",
    b"\xff\x4f\xff\x51": "JPEG 2000 codestream",
}


@dataclass(frozen=True)
class DecodeLimits:
    """What a file must satisfy to be decoded; see :class:`conveyor.config.IngestSettings`."""

    min_side: int = 32
    max_pixels: int = 100_000_000

    @classmethod
    def of(cls, settings: Settings) -> DecodeLimits:
        """The limits ``ingest.*`` sets (ingest's, and monitoring's reads of new images)."""
        return cls(min_side=settings.ingest.min_side, max_pixels=settings.ingest.max_pixels)


@dataclass(frozen=True)
class DecodedImage:
    """Decoded pixels and what was learnt about them.

    ``pixels`` is (H, W) for grayscale or (H, W, 3) for colour, EXIF orientation applied. Its dtype is ``uint8`` or
    ``uint16`` for ordinary images and ``float32`` in [0, 1] for DICOM (after rescale, VOI LUT/window and MONOCHROME1
    inversion) and 32-bit images. Multi-frame files keep their middle frame.
    """

    pixels: np.ndarray
    format: str
    mode: str
    bit_depth: int
    n_frames: int
    #: Whose image it is, as the file says (DICOM PatientID, else StudyInstanceUID), raw: ingest stores only a salted
    #: hash of it (:func:`conveyor.data.privacy.group_key`), to keep a patient's images on one side of the split.
    subject: str | None = None
    #: The DICOM header's subgroup values, derived (:func:`conveyor.data.subgroups.dicom_subgroups`); None otherwise.
    subgroups: dict[str, str] | None = None

    @property
    def height(self) -> int:
        return int(self.pixels.shape[0])

    @property
    def width(self) -> int:
        return int(self.pixels.shape[1])

    @property
    def channels(self) -> int:
        return 1 if self.pixels.ndim == 2 else int(self.pixels.shape[2])


def sniff_format(data: bytes) -> str | None:
    """The format of ``data`` from its magic bytes (a key of :data:`FORMATS`), or None if it is none of them."""
    # DICOM first: its 128-byte preamble may itself look like a TIFF header.
    if data[128:132] == b"DICM":
        return "dicom"
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "png"
    if data.startswith(b"\xff\xd8\xff"):
        return "jpeg"
    if data[:4] in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
        return "tiff"
    if data.startswith(b"BM") and len(data) >= 26:
        return "bmp"
    # DICOM without the preamble: an element of group 0002 or 0008 at offset 0, little- or big-endian.
    if data[:2] in (b"\x02\x00", b"\x08\x00", b"\x00\x02", b"\x00\x08") and len(data) >= 132:
        return "dicom"
    return None


def decode_image(data: bytes, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Decode ``data`` into pixels.

    Raises:
        InvalidImageError: with the reason the file cannot be used (see :data:`REASONS`).
    """
    if not data:
        raise InvalidImageError("zero_bytes", "the file has 0 bytes")
    fmt = sniff_format(data)
    if fmt is None:
        for magic, name in _UNSUPPORTED_MAGIC.items():
            if data.startswith(magic):
                raise InvalidImageError("unsupported_format", f"{name} is not read; use PNG, JPEG, TIFF, BMP or DICOM")
        raise InvalidImageError(
            "not_an_image", f"content starts with {data[:8]!r}, which is not PNG, JPEG, TIFF, BMP or DICOM"
        )
    decoded = _decode_dicom(data, limits) if fmt == "dicom" else _decode_pillow(data, fmt, limits)
    _check_not_blank(decoded)
    return decoded


def check_decoded(decoded: DecodedImage, limits: DecodeLimits = DecodeLimits()) -> DecodedImage:
    """Pixels decoded elsewhere (a video clip's frame) held to the rules a decoded file is: size limits, not blank.

    Raises:
        InvalidImageError: ``too_many_pixels``, ``too_small`` or ``blank``.
    """
    _check_geometry(decoded.width, decoded.height, decoded.n_frames, limits)
    _check_not_blank(decoded)
    return decoded


def _check_not_blank(decoded: DecodedImage) -> None:
    lo, hi = decoded.pixels.min(), decoded.pixels.max()
    if lo == hi:
        raise InvalidImageError("blank", f"all {decoded.width}x{decoded.height} pixels have the value {lo}")


def _check_geometry(width: int, height: int, frames: int, limits: DecodeLimits) -> None:
    pixels = width * height * frames
    if pixels > limits.max_pixels:
        raise InvalidImageError(
            "too_many_pixels",
            f"{width}x{height}"
            + (f"x{frames} frames" if frames > 1 else "")
            + f" = {pixels:,} pixels exceeds the limit of {limits.max_pixels:,}",
        )
    if min(width, height) < limits.min_side:
        raise InvalidImageError("too_small", f"{width}x{height} is below the minimum side of {limits.min_side} pixels")


def _decode_pillow(data: bytes, fmt: str, limits: DecodeLimits) -> DecodedImage:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # DecompressionBombWarning, corrupt EXIF: we decide ourselves
            image: Image.Image = Image.open(io.BytesIO(data))  # reads the header only
            n_frames = int(getattr(image, "n_frames", 1))
            _check_geometry(image.width, image.height, n_frames, limits)
            if n_frames > 1:
                image.seek(n_frames // 2)
            image.load()
            ImageOps.exif_transpose(image, in_place=True)
    except InvalidImageError:
        raise
    except Image.DecompressionBombError as exc:  # Pillow's own hard limit, reached before ours could be checked
        found = re.search(r"\((\d+) pixels\)", str(exc))
        pixels = f"{int(found.group(1)):,} pixels" if found else "the image"
        raise InvalidImageError(
            "too_many_pixels", f"{pixels} exceeds the limit of {limits.max_pixels:,} (refused before decoding)"
        ) from exc
    except UnidentifiedImageError as exc:
        raise InvalidImageError("corrupt", f"the {fmt.upper()} header cannot be read") from exc
    except (OSError, SyntaxError, ValueError, EOFError) as exc:
        message = str(exc)
        reason = "truncated" if "truncated" in message or isinstance(exc, EOFError) else "corrupt"
        raise InvalidImageError(reason, f"{fmt.upper()} data cannot be decoded: {message}") from exc
    return _pillow_to_array(image, fmt, n_frames)


def _pillow_to_array(image: Image.Image, fmt: str, n_frames: int) -> DecodedImage:
    mode = image.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N"):
        pixels = np.asarray(image).astype(np.uint16, copy=False)
        bit_depth = 16
    elif mode in ("I", "F"):
        raw = np.asarray(image, dtype=np.float64)
        span = float(raw.max() - raw.min()) or 1.0
        pixels = ((raw - raw.min()) / span).astype(np.float32)
        bit_depth = 32
    elif mode in ("L", "1"):
        pixels = np.asarray(image if mode == "L" else image.convert("L"))
        bit_depth = 1 if mode == "1" else 8
    elif mode == "LA":
        pixels = np.asarray(image.getchannel("L"))
        bit_depth = 8
    else:  # RGB, RGBA, P, PA, CMYK, YCbCr, LAB, HSV
        pixels = np.asarray(image.convert("RGB"))
        bit_depth = 8
    return DecodedImage(pixels=pixels, format=fmt, mode=mode, bit_depth=bit_depth, n_frames=n_frames)


def _decode_dicom(data: bytes, limits: DecodeLimits) -> DecodedImage:
    import pydicom  # lazily: most images are not DICOM

    # pydicom raises anything on a hostile header (an unknown VR: NotImplementedError; a missing element:
    # AttributeError), while reading it and while converting an element on first access: all of it is this file's fault.
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ds = pydicom.dcmread(io.BytesIO(data), force=True)
    except Exception as exc:
        raise InvalidImageError("corrupt", f"DICOM header cannot be parsed: {_short(exc)}") from exc
    try:
        if not any(tag in ds for tag in ("PixelData", "FloatPixelData", "DoubleFloatPixelData")):
            raise _without_pixels(ds)
        rows, cols = int(ds.Rows), int(ds.Columns)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except InvalidImageError:
        raise
    except Exception as exc:
        raise InvalidImageError("corrupt", f"DICOM header elements cannot be read: {_short(exc)}") from exc
    _check_geometry(cols, rows, frames, limits)
    try:
        return _dicom_pixels(ds, frames)
    except InvalidImageError:
        raise
    except Exception as exc:  # pydicom raises anything on a hostile header (a missing BitsAllocated: AttributeError)
        raise InvalidImageError("corrupt", f"DICOM pixel data cannot be read: {_short(exc)}") from exc


def _short(exc: Exception) -> str:
    return f"{type(exc).__name__}: {str(exc)[:200]}"


def _without_pixels(ds: Any) -> InvalidImageError:
    """Why a DICOM file has no pixel data: a damaged header (no SOP class could be read), an image object cut or
    damaged before its pixels (an image SOP class must have them), or an object that has none (a plan, a report)."""
    sop_uid = ds.get("SOPClassUID")
    if sop_uid is None:
        return InvalidImageError(
            "corrupt", f"the DICOM header cannot be read: no SOP class found ({len(ds)} elements parsed)"
        )
    sop = getattr(sop_uid, "name", None) or str(sop_uid)
    modality = ds.get("Modality", "unknown")
    if "Image Storage" in sop:
        return InvalidImageError(
            "corrupt", f"a {sop} object (modality {modality}) without its pixel data: the file is cut or damaged"
        )
    detail = f"DICOM object (modality {modality}, SOP class {sop}) has no pixel data"
    return InvalidImageError("dicom_no_pixels", detail)


def _dicom_pixels(ds: Any, frames: int) -> DecodedImage:
    """The pixels of a parsed DICOM data set: modality and VOI LUTs, MONOCHROME1 inverted, the middle frame."""
    from pydicom.pixels import apply_modality_lut, apply_voi_lut
    from pydicom.uid import ExplicitVRLittleEndian, ImplicitVRLittleEndian

    for tag in ("BitsAllocated", "PixelRepresentation", "SamplesPerPixel"):
        if tag not in ds:
            raise InvalidImageError("corrupt", f"DICOM header has pixel data but no {tag}: the pixels cannot be read")
    if "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta.TransferSyntaxUID = ImplicitVRLittleEndian if ds.is_implicit_VR else ExplicitVRLittleEndian
    syntax = ds.file_meta.TransferSyntaxUID
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            arr = ds.pixel_array
    except (NotImplementedError, RuntimeError) as exc:
        if syntax.is_compressed:
            raise InvalidImageError(
                "dicom_unsupported_syntax",
                f"transfer syntax {syntax.name} ({syntax}) cannot be decoded here: {str(exc).splitlines()[0]}",
            ) from exc
        raise InvalidImageError("corrupt", f"DICOM pixel data cannot be decoded: {exc}") from exc
    except (ValueError, EOFError) as exc:
        reason = "truncated" if "less than expected" in str(exc) else "corrupt"
        raise InvalidImageError(reason, f"DICOM pixel data: {exc}") from exc
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2"))
    colour = arr.ndim == 4 or (arr.ndim == 3 and frames == 1 and arr.shape[-1] in (3, 4))
    if frames > 1:
        arr = arr[frames // 2]
    if colour:
        if photometric == "PALETTE COLOR":
            from pydicom.pixels import apply_color_lut

            arr = apply_color_lut(arr, ds)
        values = arr[..., :3].astype(np.float64)
    else:
        values = np.asarray(apply_modality_lut(arr, ds), dtype=np.float64)
        if "WindowCenter" in ds or "VOILUTSequence" in ds:
            values = np.asarray(apply_voi_lut(values, ds, prefer_lut=True), dtype=np.float64)
        if photometric == "MONOCHROME1":
            values = values.max() - values
    lo, hi = float(values.min()), float(values.max())
    # A constant image stays as it is, so the blank check can name its value.
    pixels = ((values - lo) / (hi - lo) if hi > lo else values).astype(np.float32)
    return DecodedImage(
        pixels=pixels,
        format="dicom",
        mode=photometric,
        bit_depth=int(ds.get("BitsStored", 8) or 8),
        n_frames=frames,
        subject=_subject(ds),
        subgroups=dicom_subgroups(ds),
    )


def _subject(ds: Any) -> str | None:
    """The patient the file belongs to: PatientID, else StudyInstanceUID (a study is one patient's), else None."""
    for keyword in ("PatientID", "StudyInstanceUID"):
        try:
            value = str(ds.get(keyword, "") or "").strip()
        except Exception:  # a hostile element that cannot be converted names nobody
            continue
        if value:
            return value
    return None

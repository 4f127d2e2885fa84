"""DICOM images (``.dcm``) as the uint8 pixels every medprune model is trained on.

Grey images follow the DICOM display pipeline (PS3.3 C.11): stored values → modality LUT (rescale
slope/intercept or a Modality LUT Sequence) → VOI (a VOI LUT Sequence, else the first Window
Center/Width with its VOI LUT Function: LINEAR, LINEAR_EXACT or SIGMOID) → [0, 1] →
MONOCHROME1 inverted (there, low values are white) → 0-255. Without any VOI in the file the image's
own min-max range is used (``voi_source`` says which). Colour: YBR is converted to RGB and
PALETTE COLOR through its palette, then scaled to 8 bits.

Refused with one line each (DataError, exit 2): files that are not DICOM or hold no pixel data,
multi-frame images (export frames as separate files), photometric interpretations other than the
above, and compressed transfer syntaxes no installed decoder can read (the message names the
syntax and the decoder to install, or how to convert the file to uncompressed).

The same function serves training (``folder.py``), ``medprune predict`` and the bedside package.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import DataError

# Bump when the pixels this module produces change: image folders with DICOM files record it, so their
# fingerprint (and every cached dataset and checkpoint keyed by it) follows the pipeline.
PIPELINE_VERSION = 1
GREY = ("MONOCHROME1", "MONOCHROME2")
COLOUR = ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR")
DECODER_HINT = ("install a decoder (pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pyjpegls) "
                "or convert the file to uncompressed (gdcmconv --raw or dcmdjpeg)")


@dataclass(frozen=True)
class DicomImage:
    pixels: np.ndarray  # uint8 (H, W) grey or (H, W, 3) RGB
    photometric: str
    voi_source: str  # "voi_lut", "window", "min_max" or "colour"
    transfer_syntax: str


def read_dicom(path: str | Path, data: bytes | None = None) -> DicomImage:
    """Decode one DICOM file (``data``: its bytes, if already read) through the display pipeline."""
    path = Path(path)
    ds = _open(path, data)
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    try:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (TypeError, ValueError):
        raise DataError(f"{path}: invalid NumberOfFrames {ds.get('NumberOfFrames')!r}") from None
    if frames > 1:
        raise DataError(f"{path}: a multi-frame DICOM ({frames} frames); medprune classifies single 2D images "
                        "(export the frames as separate files)")
    if photometric not in GREY + COLOUR:
        raise DataError(f"{path}: DICOM photometric interpretation {photometric or '(none)'} is not supported "
                        f"(supported: {', '.join(GREY + COLOUR)})")
    stored = _pixels(ds, path)
    syntax = _syntax_name(ds)
    if photometric in COLOUR:
        return DicomImage(_grey_if_equal(_colour(stored, ds, photometric)), photometric, "colour", syntax)
    unit, source = _grey_unit(stored, ds)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return DicomImage(np.rint(unit * 255.0).astype(np.uint8), photometric, source, syntax)


def decode_dicom(path: str | Path, data: bytes | None = None) -> np.ndarray:
    """uint8 (H,W) or (H,W,3) pixels of a DICOM file (the folder loader's entry point)."""
    return read_dicom(path, data).pixels


def dicom_size(path: str | Path) -> tuple[int, int]:
    """(rows, columns) from the header, without decoding pixels."""
    ds = _open(Path(path), None, pixels=False)
    return int(ds.Rows), int(ds.Columns)


def _open(path: Path, data: bytes | None, pixels: bool = True):
    import pydicom
    from pydicom.errors import InvalidDicomError

    try:
        source = io.BytesIO(data) if data is not None else str(path)
        ds = pydicom.dcmread(source, stop_before_pixels=not pixels)
    except InvalidDicomError:
        raise DataError(f"{path} is not a DICOM file (no DICM header)") from None
    except (OSError, ValueError, EOFError, KeyError) as exc:
        raise DataError(f"{path}: unreadable DICOM: {str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") \
            from None
    if pixels and "PixelData" not in ds:
        raise DataError(f"{path}: DICOM without pixel data (modality {ds.get('Modality', '?')}, "
                        f"SOP class {ds.get('SOPClassUID', '?')})")
    if "Rows" not in ds or "Columns" not in ds:
        raise DataError(f"{path}: DICOM without Rows/Columns")
    return ds


def _syntax_name(ds) -> str:
    uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    return uid.name if uid is not None else "unknown transfer syntax"


def _pixels(ds, path: Path) -> np.ndarray:
    from pydicom.pixels import pixel_array

    try:
        return pixel_array(ds, as_rgb=True)
    except (RuntimeError, NotImplementedError, ValueError, AttributeError, TypeError, KeyError) as exc:
        uid = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        if uid is not None and uid.is_compressed:
            raise DataError(f"{path}: cannot decode its compressed transfer syntax '{uid.name}' here; "
                            f"{DECODER_HINT}") from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise DataError(f"{path}: cannot decode the DICOM pixel data ({reason})") from None


def _grey_unit(stored: np.ndarray, ds) -> tuple[np.ndarray, str]:
    """Modality then VOI transform, in [0, 1]; and which VOI was used."""
    from pydicom.pixels import apply_modality_lut

    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        return _voi_lut(values, ds), "voi_lut"
    centre, width = _first(ds.get("WindowCenter")), _first(ds.get("WindowWidth"))
    if centre is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        return window(values, centre, width, function), "window"
    lo, hi = float(values.min()), float(values.max())
    return (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values), "min_max"


def _first(value) -> float | None:
    """The package template's reader of multi-valued tags: one implementation for training and the bedside
    (the template may not import the toolchain, so the toolchain imports the template)."""
    from export.package_verify import image_input_template

    return image_input_template().dicom_first(value)


def window(values: np.ndarray, centre: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """DICOM PS3.3 C.11.2.1.2 windowing of modality values to [0, 1]."""
    if function == "LINEAR_EXACT":
        return np.clip((values - centre) / width + 0.5, 0.0, 1.0)
    if function == "SIGMOID":
        return 1.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))
    if function != "LINEAR":
        raise DataError(f"unknown DICOM VOI LUT Function {function!r} (LINEAR, LINEAR_EXACT or SIGMOID)")
    if width < 1:
        raise DataError(f"DICOM LINEAR window width must be >= 1, got {width}")
    return np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)


def _voi_lut(values: np.ndarray, ds) -> np.ndarray:
    """The first VOI LUT of the sequence (PS3.3 C.11.2.1.1; pydicom reads its data in the file's byte
    order), output scaled by the LUT's bit depth."""
    from pydicom.pixels import apply_voi

    bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
    out = np.asarray(apply_voi(values, ds, index=0), dtype=np.float64)
    return np.clip(out / float((1 << bits) - 1), 0.0, 1.0)


def _colour(stored: np.ndarray, ds, photometric: str) -> np.ndarray:
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        rgb = np.asarray(apply_color_lut(stored, ds), dtype=np.float64)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
    else:
        rgb = np.asarray(stored, dtype=np.float64)
        bits = int(ds.get("BitsStored", 8) or 8)
    if rgb.ndim != 3 or rgb.shape[-1] != 3:
        raise DataError(f"DICOM {photometric} image has shape {rgb.shape}, expected (rows, columns, 3)")
    return np.clip(np.rint(rgb * (255.0 / ((1 << bits) - 1))), 0, 255).astype(np.uint8)


def _grey_if_equal(rgb: np.ndarray) -> np.ndarray:
    """A grey image stored as RGB becomes (H, W), by the image folders' rule for PNG/JPEG files."""
    from .folder import GREY_TOLERANCE

    spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
    if spread.max(initial=0) > GREY_TOLERANCE:
        return rgb
    return rgb[..., 0] if not spread.any() else np.rint(rgb.mean(axis=-1)).astype(np.uint8)

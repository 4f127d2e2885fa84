"""Image input of a medprune package: decoding (PNG/JPEG/TIFF, DICOM through its display pipeline), the
manifest's preprocessing chain, and warnings for inputs far outside the training images.

Shipped beside predict.py and listed in manifest.json like every file. predict.py never imports it:
after checking the whole package it compiles this file from the very bytes whose sha256 matched (see
``load_template`` there); medprune's toolchain runs its own copy for ``verify-package`` and
``medprune predict``, so the device and the build machine compute the same pixels and warnings.
Needs numpy and pillow; pydicom for DICOM files. Standard library only at import time.
"""

from pathlib import Path

GREY_TOLERANCE = 2  # RGB files whose channels differ by at most this are grey (as the toolchain loads them)
LOAD_RESAMPLE = ("bilinear",)  # PIL filters the load-size step may name (toolchain.data.resize)
# "far outside" the training images (a warning, never a refusal; see input_warnings)
SMALL_FACTOR, LARGE_FACTOR, ASPECT_FACTOR = 0.5, 8.0, 1.5
MEAN_MARGIN = 0.5  # of the training 1-99 % range of image means


class ImageError(Exception):
    """An image file this package cannot read, or a preprocessing record it cannot apply."""


def read_image(path: Path, spec: dict):
    """uint8 (H, W) or (H, W, 3) pixels decoded as the toolchain decodes image folders, then the
    load-size step of ``spec`` (PIL resample on uint8, JPEG draft) when the model was trained with one;
    DICOM via pydicom (its display pipeline, see _dicom_pixels) when installed."""
    return decode(path, spec)[0]


def decode(path: Path, spec: dict):
    """``(read_image's pixels, (height, width) of the file itself)``: the size before any load-size step."""
    import numpy as np
    from PIL import Image

    load_size = int(spec.get("load_size") or 0)
    if path.suffix.lower() in (".dcm", ".dicom"):
        img = Image.fromarray(_dicom_pixels(path))
        raw_size = (img.size[1], img.size[0])
    else:
        with Image.open(path) as im:
            raw_size = (im.size[1], im.size[0])  # the header's size: draft() below may shrink a JPEG
            if load_size and im.format == "JPEG":
                im.draft(im.mode, (load_size, load_size))  # as toolchain.data.folder decodes big JPEGs
            im.load()
            if im.mode in ("I;16", "I;16B", "I", "F"):
                arr = np.asarray(im, dtype=np.float64)
                scale = 255.0 / 65535.0 if arr.max() > 255 else 1.0
                img = Image.fromarray(np.clip(np.rint(arr * scale), 0, 255).astype(np.uint8))
            else:
                img = im.convert("L" if im.mode in ("1", "L", "LA") else "RGB")
    if img.mode == "RGB":
        rgb = np.asarray(img)
        spread = rgb.max(axis=-1).astype(np.int16) - rgb.min(axis=-1)
        if spread.max(initial=0) <= GREY_TOLERANCE:
            img = Image.fromarray(rgb[..., 0] if not spread.any() else np.rint(rgb.mean(axis=-1)).astype(np.uint8))
    if load_size and img.size != (load_size, load_size):
        resample = spec.get("load_resample", "bilinear")
        if resample not in LOAD_RESAMPLE:
            raise ImageError(f"unknown load resample filter {resample!r} in manifest")
        img = img.resize((load_size, load_size), getattr(Image, "Resampling", Image).BILINEAR)
    return np.asarray(img), raw_size


def _dicom_pixels(path: Path):
    """uint8 pixels of a DICOM file through the display pipeline, as medprune's toolchain.data.dicom
    (tests keep the two equal): modality rescale, VOI LUT or window (LINEAR/LINEAR_EXACT/SIGMOID),
    else the image's min-max, MONOCHROME1 inverted; colour converted to 8-bit RGB."""
    import numpy as np

    try:
        import pydicom
    except ImportError as exc:
        raise ImageError("reading DICOM needs pydicom: pip install pydicom") from exc
    try:  # pydicom >= 3
        from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi
        from pydicom.pixels import pixel_array as _decode
    except ImportError:  # pydicom 2.x
        from pydicom.pixel_data_handlers.util import apply_color_lut, apply_modality_lut, convert_color_space
        from pydicom.pixel_data_handlers.util import apply_voi_lut as apply_voi

        def _decode(ds, as_rgb=True):
            arr = ds.pixel_array
            pi = str(ds.get("PhotometricInterpretation", ""))
            return convert_color_space(arr, pi, "RGB") if pi.startswith("YBR") else arr
    ds = pydicom.dcmread(str(path))
    photometric = str(ds.get("PhotometricInterpretation", "")).strip().upper()
    if int(ds.get("NumberOfFrames", 1) or 1) > 1:
        raise ImageError(f"{path}: a multi-frame DICOM; export the frames as separate files")
    try:
        stored = _decode(ds, as_rgb=True)
    except Exception as exc:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        raise ImageError(f"{path}: cannot decode its pixel data ({getattr(syntax, 'name', syntax)}): "
                           f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    if photometric in ("RGB", "YBR_FULL", "YBR_FULL_422", "YBR_ICT", "YBR_RCT", "PALETTE COLOR"):
        if photometric == "PALETTE COLOR":
            rgb = np.asarray(apply_color_lut(stored, ds), dtype=np.float64)
            bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        else:
            rgb, bits = np.asarray(stored, dtype=np.float64), int(ds.get("BitsStored", 8) or 8)
        return np.clip(np.rint(rgb * (255.0 / ((1 << bits) - 1))), 0, 255).astype(np.uint8)
    if photometric not in ("MONOCHROME1", "MONOCHROME2"):
        raise ImageError(f"{path}: DICOM photometric interpretation {photometric or '(none)'} is not supported")
    values = np.asarray(apply_modality_lut(stored, ds), dtype=np.float64)
    centre, width = dicom_first(ds.get("WindowCenter")), dicom_first(ds.get("WindowWidth"))
    if "VOILUTSequence" in ds and len(ds.VOILUTSequence):
        bits = int(ds.VOILUTSequence[0].LUTDescriptor[2])
        unit = np.clip(np.asarray(apply_voi(values, ds, index=0), dtype=np.float64) / ((1 << bits) - 1), 0, 1)
    elif centre is not None and width is not None and width > 0:
        function = str(ds.get("VOILUTFunction", "LINEAR")).strip().upper() or "LINEAR"
        if function == "LINEAR_EXACT":
            unit = np.clip((values - centre) / width + 0.5, 0.0, 1.0)
        elif function == "SIGMOID":
            unit = 1.0 / (1.0 + np.exp(-4.0 * (values - centre) / width))
        elif function == "LINEAR" and width >= 1:
            unit = np.clip((values - (centre - 0.5)) / (width - 1) + 0.5, 0.0, 1.0)
        else:
            raise ImageError(f"{path}: unsupported DICOM window (function {function}, width {width})")
    else:
        lo, hi = float(values.min()), float(values.max())
        unit = (values - lo) / (hi - lo) if hi > lo else np.zeros_like(values)
    if photometric == "MONOCHROME1":
        unit = 1.0 - unit
    return np.rint(unit * 255.0).astype(np.uint8)


def dicom_first(value):
    """The first number of a DICOM tag value that may be multi-valued (WindowCenter/WindowWidth), else None.
    The toolchain's DICOM decoder (toolchain/data/dicom.py) calls this one, so both read the tags alike."""
    if value is None or value == "":
        return None
    try:
        return float(value[0]) if hasattr(value, "__len__") and not isinstance(value, str) else float(value)
    except (TypeError, ValueError, IndexError):
        return None


def resize_weights(n_in: int, n_out: int):
    """(n_out, n_in) matrix of antialiased bilinear resampling along one axis.

    The same triangle filter, widened by the scale when shrinking, with half-pixel centres and
    edge renormalisation as torch's ``interpolate(mode="bilinear", antialias=True)`` used in
    training, so this resize agrees with the toolchain's to float rounding (~1e-7).
    """
    import numpy as np

    scale = n_in / n_out
    support = scale if scale > 1.0 else 1.0
    inv = 1.0 / scale if scale > 1.0 else 1.0
    w = np.zeros((n_out, n_in), dtype=np.float64)
    for i in range(n_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), n_in)
        j = np.arange(lo, hi)
        k = np.clip(1.0 - np.abs((j - center + 0.5) * inv), 0.0, None)
        w[i, lo:hi] = k / k.sum()
    return w.astype(np.float32)


def preprocess(pixels, spec: dict):
    """uint8 image → float32 (1, C, S, S), exactly as the model was trained (see manifest preprocess):
    [0, 1] scaling, RGB → grey by channel mean, antialiased bilinear resize, grey → RGB, normalisation."""
    import numpy as np

    size, chans = int(spec["img_size"]), int(spec["in_chans"])
    arr = np.asarray(pixels)
    if arr.ndim == 2:
        arr = arr[..., None]
    if arr.ndim != 3 or arr.shape[-1] not in (1, 3):
        raise ImageError(f"expected a grey or RGB image, got pixel array of shape {arr.shape}")
    x = arr.astype(np.float32).transpose(2, 0, 1) / np.float32(255.0)  # (C, H, W)
    if x.shape[0] == 3 and chans == 1:
        x = x.mean(axis=0, keepdims=True)
    if x.shape[1:] != (size, size):
        wh, ww = resize_weights(x.shape[1], size), resize_weights(x.shape[2], size)
        x = np.stack([wh @ ch @ ww.T for ch in x])
    if x.shape[0] == 1 and chans == 3:
        x = np.repeat(x, 3, axis=0)
    mean = np.asarray(spec["mean"], dtype=np.float32).reshape(-1, 1, 1)
    std = np.asarray(spec["std"], dtype=np.float32).reshape(-1, 1, 1)
    return ((x - mean) / std)[None].astype(np.float32)


def is_colour(image) -> bool:
    """Whether decoded pixels are colour: grey files decode to (H, W), RGB ones within GREY_TOLERANCE too."""
    import numpy as np

    image = np.asarray(image)
    if image.ndim == 2 or image.shape[-1] == 1:
        return False
    spread = image.max(axis=-1).astype(np.int16) - image.min(axis=-1)
    return bool(spread.max(initial=0) > GREY_TOLERANCE)


def input_warnings(profile, image, raw_size) -> list:
    """Reasons ``image`` (decoded uint8, (H,W) or (H,W,C)) lies far outside the training images' ``profile``
    (the manifest's ``input_profile``; None or empty: no warnings); ``raw_size`` is the file's own
    (height, width) before any load-time resize.

    Deliberately coarse: a side under half the training side (the model sees upsampled blur) or over 8
    times it (small findings vanish in the downsampling), another aspect ratio when the training images
    all had one size, colour vs grey, and a mean brightness beyond the training images' 1st-99th
    percentile range of means by more than half that range (wrong windowing, an inverted image).
    """
    import numpy as np

    if not profile:
        return []
    out = []
    colour, trained_colour = is_colour(image), int(profile["channels"]) == 3
    if colour != trained_colour:
        out.append(f"{'colour' if colour else 'grey'} image, but the model was trained on "
                   f"{'colour' if trained_colour else 'grey'} images")
    h, w = raw_size
    th, tw = profile["image_size"]
    ref = profile.get("load_size") or min(th, tw)
    if min(h, w) < SMALL_FACTOR * ref:
        out.append(f"image is {h}x{w}, under half the training side ({ref} px): it is upsampled")
    elif max(h, w) > LARGE_FACTOR * ref:
        out.append(f"image is {h}x{w}, over {LARGE_FACTOR:g}x the training side ({ref} px)")
    if not profile.get("load_size"):
        aspect, trained = w / h, tw / th
        if not 1 / ASPECT_FACTOR <= aspect / trained <= ASPECT_FACTOR:
            out.append(f"aspect ratio {aspect:.2f} (width/height) differs from the training images' {trained:.2f}")
    mean = float(np.asarray(image, dtype=np.float64).mean() / 255.0)
    lo, hi = float(profile["image_mean_p01"]), float(profile["image_mean_p99"])
    margin = MEAN_MARGIN * max(hi - lo, 0.05)
    if not lo - margin <= mean <= hi + margin:
        out.append(f"mean intensity {mean:.2f} lies far outside the training images' {lo:.2f}-{hi:.2f} "
                   "(1st-99th percentile): wrong windowing or inverted?")
    return out

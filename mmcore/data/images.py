"""Images read safely: the header first (empty files and bombs are refused undecoded), then
the pixels as 8-bit RGB; ``inspect_image`` finds what is wrong with a file cheaply.

Every failure is a ``BadInput`` whose kind keys ``mmcore.data.problems.KINDS``.
"""
from __future__ import annotations

import hashlib
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from mmcore.data.problems import BadInput

_MODE_KINDS = {
    "1": "grayscale_image", "L": "grayscale_image", "CMYK": "cmyk_image",
    "YCbCr": "other_mode_image", "LAB": "other_mode_image", "HSV": "other_mode_image",
    "I": "deep_image", "F": "deep_image", "I;16": "deep_image", "I;16L": "deep_image",
    "I;16B": "deep_image", "I;16N": "deep_image",
    "RGBA": "alpha_image", "RGBa": "alpha_image", "LA": "alpha_image", "La": "alpha_image",
    "PA": "alpha_image", "P": "palette_image",
}


def to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB; transparency is composited on white.

    Handles 1 / L / P / CMYK / YCbCr (plain conversion), LA / RGBA / P with transparency
    (alpha over white) and 16- or 32-bit integer grayscale (scaled by its bit depth, where
    PIL's own conversion would clip to white).
    """
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 / (65535.0 if image.mode.startswith("I;16") or values.max() > 255 else 255.0)
        return Image.fromarray(np.clip(values * scale, 0, 255).astype(np.uint8), "L").convert("RGB")
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return image.convert("RGB")


def load_rgb(path: str | Path) -> Image.Image:
    """Decode an image fully (so truncated files fail here), upright per EXIF, as RGB.

    Raises:
        BadInput: for a missing, empty, truncated or corrupt file or a decompression bomb.
    """
    with open_image(path) as image:
        try:
            image.load()
            return to_rgb(ImageOps.exif_transpose(image))
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
            raise _decode_error(path, err) from err


def open_image(path: str | Path) -> Image.Image:
    """Open an image's header without decoding its pixels; refuse empty files and bombs.

    Raises:
        BadInput: kind ``missing_file``, ``empty_file``, ``decompression_bomb`` or
            ``corrupt_image``.
    """
    path = Path(path)
    if not path.is_file():
        raise BadInput("missing_file", f"{path}: no such image file")
    if path.stat().st_size == 0:
        raise BadInput("empty_file", f"{path}: empty image file (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(path)
    except Image.DecompressionBombError as err:
        raise BadInput("decompression_bomb", f"{path}: {err}") from err
    except Exception as err:  # noqa: BLE001 - PIL raises many types for foreign bytes
        raise BadInput("corrupt_image", f"{path}: not a readable image "
                                        f"({type(err).__name__}: {err})") from err
    limit = Image.MAX_IMAGE_PIXELS
    if limit is not None and image.width * image.height > limit:
        image.close()
        raise BadInput("decompression_bomb", f"{path}: {image.width}x{image.height} pixels is "
                                             f"over PIL.Image.MAX_IMAGE_PIXELS={limit}")
    return image


def inspect_image(path: str | Path) -> list[BadInput]:
    """What is wrong with one image file, found cheaply.

    Reads the header; then a PNG is verified chunk by chunk (CRCs, no decompression)
    and a JPEG that ends with its end-of-image marker is taken as whole. Only the rest
    is decoded (a JPEG at 1/8 scale): other formats, JPEGs without the marker (truncated,
    or trailing bytes) and images needing a mode conversion, which is then done as
    training will do it.

    Returns:
        One ``BadInput`` per problem; an empty list for a clean RGB image.
    """
    try:
        image = open_image(path)
    except BadInput as bad:
        return [bad]
    with image:
        found = [BadInput(kind, f"{path}: mode {image.mode} converted to RGB")
                 for kind in [_MODE_KINDS.get(image.mode)] if kind]
        if getattr(image, "n_frames", 1) > 1:
            found.append(BadInput("animated_image", f"{path}: {image.n_frames} frames; the "
                                                    "first is used"))
        try:
            if image.format == "PNG" and not found:
                image.verify()
            elif found or image.format != "JPEG" or not _ends_with_jpeg_eoi(path):
                if image.format == "JPEG":
                    image.draft(image.mode, (max(image.width // 8, 1), max(image.height // 8, 1)))
                image.load()
                if found:
                    to_rgb(image)
        except Exception as err:  # noqa: BLE001 - any decoder failure is a bad file
            return [_decode_error(path, err)]
    return found


def _ends_with_jpeg_eoi(path: str | Path, tail: int = 1024) -> bool:
    """True if the end-of-image marker FF D9 is in the file's last bytes (entropy-coded
    data escapes every FF, so the marker cannot occur by chance there)."""
    with open(path, "rb") as f:
        f.seek(max(Path(path).stat().st_size - tail, 0))
        return b"\xff\xd9" in f.read()


def _decode_error(path: str | Path, err: Exception) -> BadInput:
    truncated = isinstance(err, EOFError) or "truncated" in str(err).lower()
    return BadInput("truncated_image" if truncated else "corrupt_image",
                    f"{path}: {'truncated' if truncated else 'corrupt'} image "
                    f"({type(err).__name__}: {err})")


def file_digest(path: str | Path) -> str:
    """SHA-1 of a file's bytes: the same picture saved under two names has one digest."""
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


__all__ = ["file_digest", "inspect_image", "load_rgb", "open_image", "to_rgb"]

"""Bad image files of every kind ``inspect_image`` knows, for the image and check tests."""
from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image


def png_header(path: Path, width: int, height: int) -> None:
    """A PNG that claims width x height pixels: a decompression bomb's header, no pixels."""
    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr)
                     + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def bad_images(folder: Path) -> dict[str, str]:
    """File name -> the kind ``inspect_image`` must report for it ("" for a clean image)."""
    rng = np.random.default_rng(0)
    noise = Image.fromarray((rng.random((40, 48, 3)) * 255).astype(np.uint8))
    noise.save(folder / "good.png")
    noise.save(folder / "good.jpg", quality=90)
    Image.fromarray(255 - np.asarray(noise)).save(folder / "other.png")
    (folder / "zero.jpg").write_bytes(b"")
    jpeg = (folder / "good.jpg").read_bytes()
    (folder / "truncated.jpg").write_bytes(jpeg[: len(jpeg) // 2])
    png = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(png[: len(png) // 2])
    (folder / "random.png").write_bytes(rng.integers(0, 256, 2048, dtype=np.uint8).tobytes())
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(folder / "deep.png")
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.save(folder / "palette.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 100)).save(folder / "rgba.png")
    Image.new("L", (8, 8), 90).save(folder / "gray.png")
    frames = [Image.new("RGB", (8, 8), (60 * i, 200 - 50 * i, 30)) for i in range(3)]
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    png_header(folder / "bomb.png", 100_000, 100_000)
    return {"good.png": "", "good.jpg": "", "other.png": "", "zero.jpg": "empty_file",
            "truncated.jpg": "truncated_image", "truncated.png": "truncated_image",
            "random.png": "corrupt_image", "cmyk.jpg": "cmyk_image", "deep.png": "deep_image",
            "palette.png": "palette_image", "rgba.png": "alpha_image",
            "gray.png": "grayscale_image", "anim.gif": "animated_image",
            "bomb.png": "decompression_bomb", "gone.png": "missing_file"}


"""Image decode / crop-resize / mask compositing / encode for ingestion (PIL only, no OpenCV).

Colour order: this is the one place where channel order is decided. PIL decodes JPEG/PNG to
RGB, which is the true colour of the file (OpenCV would hand back BGR and need ``[..., ::-1]``;
OpenCV is not a dependency). RenderMe-360 stores ``cv2.imencode`` output, whose files hold true
colours, so ``channel_order="rgb"`` (no swap) is right for it; a source whose files were written
from RGB arrays by ``cv2.imwrite`` (red and blue swapped *in the file*) declares
``channel_order="bgr"`` and is swapped here, once.

Speed: JPEGs are decoded with PIL's draft mode (the decoder's DCT scaling by 1/2, 1/4, 1/8) when
the output is at most half the source size, so a 2448x2048 frame going to 512x512 is decoded at
612x512 (~10x less work than a full decode + resize).
"""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

from emodifftalk.ingest.cameras import CropResize


class ImageError(ValueError):
    """An encoded image or mask cannot be decoded; the message says which."""


def _open(data: bytes | bytearray | np.ndarray | Path, what: str):
    from PIL import Image

    if isinstance(data, Path):
        data = data.read_bytes()
    elif isinstance(data, np.ndarray):
        data = data.tobytes()
    if len(data) == 0:
        raise ImageError(f"{what}: empty image data")
    try:
        im = Image.open(io.BytesIO(data))
        im.size  # noqa: B018 - header parsed
        return im
    except Exception as e:  # PIL raises UnidentifiedImageError, OSError, SyntaxError...
        raise ImageError(f"{what}: cannot decode image ({type(e).__name__}: {e})") from e


def image_size(data, what: str = "image") -> tuple[int, int]:
    """(width, height) from the header only."""
    return _open(data, what).size


def _as_rgb(im, channel_order: str) -> np.ndarray:
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        arr = np.clip(arr / (65535.0 if im.mode.startswith("I;16") else arr.max() or 1.0) * 255.0, 0, 255)
        rgb = np.repeat(arr.astype(np.uint8)[..., None], 3, axis=2)
    else:
        rgb = np.asarray(im.convert("RGB"), dtype=np.uint8)
    if channel_order == "bgr":
        rgb = rgb[..., ::-1]
    elif channel_order != "rgb":
        raise ImageError(f"channel_order must be 'rgb' or 'bgr', got {channel_order!r}")
    return np.ascontiguousarray(rgb)


def _resized(im, crop: CropResize | None, resample, what: str):
    from PIL import Image

    if crop is None or crop.identity:
        return im
    s = im.size[0] / crop.width  # < 1 after a draft-reduced JPEG decode
    box = tuple(b * s for b in crop.box)
    return im.resize((crop.out_w, crop.out_h), resample=resample, box=box,
                     reducing_gap=None if resample == Image.Resampling.NEAREST else 3.0)


def decode_rgb(data, crop: CropResize | None = None, *, channel_order: str = "rgb", what: str = "image") -> np.ndarray:
    """Encoded image -> (H, W, 3) uint8 RGB, cropped + resized by ``crop`` (output size) if given."""
    from PIL import Image

    im = _open(data, what)
    try:
        if crop is not None and im.size != (crop.width, crop.height):
            raise ImageError(f"{what}: image is {im.size[0]}x{im.size[1]}, expected {crop.width}x{crop.height}")
        if crop is not None and not crop.identity and im.format == "JPEG":
            scale = crop.out_w / crop.side_w
            if scale <= 0.5:
                im.draft("RGB", (math.ceil(crop.width * scale), math.ceil(crop.height * scale)))
        im.load()
        im = _resized(im.convert("RGB") if im.mode not in ("RGB", "I;16", "I;16B", "I;16L", "I") else im,
                      crop, Image.Resampling.BILINEAR, what)
        return _as_rgb(im, channel_order)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"{what}: cannot decode image ({type(e).__name__}: {e})") from e


def decode_mask(data, crop: CropResize | None = None, *, what: str = "mask") -> np.ndarray:
    """Encoded matte -> (H, W) float32 alpha in [0, 1] (channel max for colour mattes, as the
    RenderMe-360 reader does), cropped + resized like the image (in 8-bit: ~4x faster than float)."""
    from PIL import Image

    im = _open(data, what)
    try:
        if crop is not None and im.size != (crop.width, crop.height):
            raise ImageError(f"{what}: mask is {im.size[0]}x{im.size[1]}, expected {crop.width}x{crop.height}")
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
            arr = np.asarray(im, dtype=np.float32)
            im = Image.fromarray(np.clip(arr / (65535.0 if im.mode.startswith("I;16") else max(arr.max(), 1.0))
                                         * 255.0 + 0.5, 0, 255).astype(np.uint8), mode="L")
        elif im.mode in ("RGB", "RGBA", "P", "CMYK", "YCbCr", "LA"):
            arr = np.asarray(im.convert("RGB"))
            im = Image.fromarray(arr.max(axis=2), mode="L")
        elif im.mode != "L":
            im = im.convert("L")
        if crop is not None:
            im = _resized(im, crop, Image.Resampling.BILINEAR, what)
        return np.asarray(im, dtype=np.float32) * np.float32(1.0 / 255.0)
    except ImageError:
        raise
    except Exception as e:
        raise ImageError(f"{what}: cannot decode mask ({type(e).__name__}: {e})") from e


def composite(rgb: np.ndarray, alpha: np.ndarray, background) -> np.ndarray:
    """Foreground over a flat ``background`` colour (3 floats in [0, 1]); uint8 out."""
    if alpha.shape != rgb.shape[:2]:
        raise ImageError(f"mask {alpha.shape} and image {rgb.shape[:2]} differ in size")
    bg = np.asarray(background, dtype=np.float32).reshape(1, 1, 3) * 255.0
    a = alpha[..., None]
    out = rgb.astype(np.float32) * a + bg * (1.0 - a)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def encode_image(rgb: np.ndarray, fmt: str = "jpg", quality: int = 95) -> tuple[str, bytes]:
    """(extension, bytes) of an (H, W, 3) uint8 image as JPEG or PNG (deterministic bytes)."""
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8), mode="RGB")
    buf = io.BytesIO()
    if fmt in ("jpg", "jpeg"):
        im.save(buf, format="JPEG", quality=int(quality), subsampling=0 if quality >= 90 else 2)
        return "jpg", buf.getvalue()
    if fmt == "png":
        im.save(buf, format="PNG", compress_level=3)
        return "png", buf.getvalue()
    raise ImageError(f"image format must be 'jpg' or 'png', got {fmt!r}")

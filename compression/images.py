"""Image files to model-sized uint8 pixels: the transforms, decoding that does no more work than the output
needs, and which files count as bad.

Two transform families, picked by input size (or by the config):
- `reference`, for inputs of REFERENCE_MIN_SIZE px and more: torchvision's reference presets. Training takes
  a RandomResizedCrop (scale 0.08-1, ratio 3/4-4/3) and a horizontal flip; evaluation resizes the short side
  to `resize` (the crop over RESIZE_RATIO, 256 for 224 as in torchvision's references) and takes the centre
  crop.
- `small`, for small inputs (28 px clothes, 32 px CIFAR): the short side resized to the crop size and the
  centre kept; training adds a 2-pixel shifted crop and a flip.

Random choices come from a generator seeded by (seed, epoch, sample index) alone, so a sample's pixels do not
depend on which loader worker, which training process or which batch decodes it, nor on a resume.

A JPEG is decoded at 1/2, 1/4 or 1/8 of its size (PIL's `draft`, done by the JPEG decoder itself) whenever
the crop needs no more pixels than that: a phone photo cropped to 224 px never needs its full resolution.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Literal

import numpy as np

from compression import CompressionError

REFERENCE_MIN_SIZE = 64
RESIZE_RATIO = 0.875  # torchvision's references: resize 256, crop 224
SMALL_SHIFT = 2  # the small family's shifted crop, as the in-memory batches do it
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
EXIF_ORIENTATION = 0x0112
SIXTEEN_BIT_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


class BadImage(CompressionError):
    """A file that cannot be used as an image (unreadable, truncated, too large); the message names it."""


@dataclass(frozen=True)
class ImageTransform:
    """How a file becomes a `size` x `size` model input, in training and in evaluation."""

    kind: Literal["reference", "small"]
    size: int
    resize: int
    scale: tuple[float, float] = (0.08, 1.0)
    ratio: tuple[float, float] = (3 / 4, 4 / 3)
    hflip: bool = True
    mode: str = "RGB"
    reduce_jpeg: bool = True  # let the JPEG decoder shrink by 2, 4 or 8 where the crop allows (False: full decode)

    @classmethod
    def for_input(cls, size: int, kind: str = "auto", resize: int | None = None,
                  scale: tuple[float, float] = (0.08, 1.0), hflip: bool = True, mode: str = "RGB") -> ImageTransform:
        """The transform for a model input of `size` px: `kind` auto picks reference from
        REFERENCE_MIN_SIZE px up, small below; `resize` defaults to size / RESIZE_RATIO (reference) or size."""
        if kind == "auto":
            kind = "reference" if size >= REFERENCE_MIN_SIZE else "small"
        if kind not in ("reference", "small"):
            raise CompressionError(f"unknown transform {kind!r}; use auto, reference or small")
        default_resize = int(size / RESIZE_RATIO) if kind == "reference" else size
        resize = resize or default_resize
        if resize < size:
            raise CompressionError(f"resize size {resize} is smaller than the crop size {size}")
        return cls(kind, size, resize, tuple(scale), (3 / 4, 4 / 3), hflip, mode)

    def describe(self) -> dict:
        """What a model file records, so that predict and serving read images as evaluation did."""
        return {"kind": self.kind, "size": self.size, "resize": self.resize, "mode": self.mode}

    @classmethod
    def from_record(cls, record: dict | None, size: int, mode: str) -> ImageTransform:
        """The evaluation transform a model file recorded; files without a record were trained on images
        fitted to their input size (short side resized, centre cropped)."""
        if not record:
            return cls("small", size, size, mode=mode)
        return cls(record["kind"], int(record["size"]), int(record["resize"]), mode=record.get("mode", mode))


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """One integer per (seed, epoch, sample): the sample's transform draws from a generator seeded with it."""
    return ((seed & 0xFFFFFFFF) << 64) | ((epoch & 0xFFFFFFFF) << 32) | (index & 0xFFFFFFFF)


def random_resized_box(width: int, height: int, scale, ratio, rng: random.Random) -> tuple[float, float, float, float]:
    """torchvision's RandomResizedCrop.get_params with a generator of our own: a box (left, top, right,
    bottom) of a random share of the area and a random aspect ratio; the centre crop after 10 misses."""
    area = width * height
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(scale[0], scale[1])
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top, left = rng.randint(0, height - h), rng.randint(0, width - w)
            return left, top, left + w, top + h
    in_ratio = width / height
    if in_ratio < min(ratio):
        w, h = width, int(round(width / min(ratio)))
    elif in_ratio > max(ratio):
        w, h = int(round(height * max(ratio))), height
    else:
        w, h = width, height
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def centre_box(width: int, height: int, resize: int, size: int) -> tuple[float, float, float, float]:
    """The box of the original image that resizing its short side to `resize` and centre-cropping `size`
    keeps (computed on the original, so the image is resampled once)."""
    side = size * min(width, height) / resize
    left, top = (width - side) / 2, (height - side) / 2
    return left, top, left + side, top + side


def crop_box(transform: ImageTransform, width: int, height: int, rng: random.Random | None):
    """(box, flip, shift) for one image of the displayed size width x height; `rng` None: evaluation.
    `shift` (dx, dy): the small family's shifted crop, in output pixels, applied after resizing."""
    if rng is None:
        return centre_box(width, height, transform.resize, transform.size), False, (0, 0)
    if transform.kind == "reference":
        box, shift = random_resized_box(width, height, transform.scale, transform.ratio, rng), (0, 0)
    else:
        box = centre_box(width, height, transform.resize, transform.size)
        shift = (rng.randint(-SMALL_SHIFT, SMALL_SHIFT), rng.randint(-SMALL_SHIFT, SMALL_SHIFT))
    return box, transform.hflip and rng.random() < 0.5, shift


def shifted(array: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """The image moved by (dx, dy) pixels, the uncovered border black (RandomCrop with padding, as the
    in-memory batches augment small images)."""
    if not dx and not dy:
        return array
    out = np.zeros_like(array)
    height, width = array.shape[:2]
    out[max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)] = \
        array[max(0, dy):height - max(0, -dy), max(0, dx):width - max(0, -dx)]
    return out


def _orientation(img) -> int:
    try:
        return int(img.getexif().get(EXIF_ORIENTATION, 1) or 1)
    except Exception:  # noqa: BLE001 - a broken EXIF block is no reason to refuse the pixels
        return 1


def _as_mode(img, mode: str):
    """Convert any PIL mode (CMYK, palette with transparency, 16-bit grey, float, RGBA, ...) to L or RGB."""
    if img.mode in SIXTEEN_BIT_MODES or img.mode == "F":
        array = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I;16") or array.max() > 255 else 255.0
        from PIL import Image

        img = Image.fromarray(np.clip(array * (255.0 / top), 0, 255).round().astype(np.uint8), "L")
    elif img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    return img if img.mode == mode else img.convert(mode)


def check_header(img, path: str) -> None:
    """Refuse an image larger than PIL's decompression-bomb limit before it is decoded."""
    from PIL import Image

    width, height = img.size
    if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
        raise BadImage(f"{path}: {width}x{height} pixels exceed PIL's decompression-bomb limit of "
                       f"{Image.MAX_IMAGE_PIXELS} pixels")


def open_image(path: str):
    """The opened (not yet decoded) image; BadImage for what PIL cannot identify or would refuse."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        pixels = str(exc).split("(")[1].split(" ")[0] if "(" in str(exc) else "too many"
        raise BadImage(f"{path}: {pixels} pixels exceed PIL's decompression-bomb limit of "
                       f"{Image.MAX_IMAGE_PIXELS} pixels") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"{path}: not a readable image ({type(exc).__name__})") from None
    check_header(img, path)
    return img


def _draft(img, mode: str, box_size: float, out_size: int) -> float:
    """Let the JPEG decoder reduce the image by 2, 4 or 8 while the crop keeps at least `out_size` px;
    returns the factor the image shrank by (1: decoded at full size)."""
    if img.format != "JPEG" or box_size <= out_size:
        return 1.0
    width, height = img.size
    need = out_size / box_size  # the share of the original resolution the output needs
    requested = (max(1, math.ceil(width * need)), max(1, math.ceil(height * need)))
    img.draft(mode if mode in ("RGB", "L") else None, requested)
    return img.size[0] / width


def _transpose(img, orientation: int):
    from PIL import ImageOps

    return img if orientation == 1 else ImageOps.exif_transpose(img)


def _decoded(img, path: str, mode: str, orientation: int):
    """The pixels of an opened image, oriented and in `mode`; BadImage when its data is truncated or corrupt."""
    try:
        img.load()
        return _as_mode(_transpose(img, orientation), mode)
    except (OSError, ValueError, SyntaxError) as exc:
        raise BadImage(f"{path}: cannot be decoded ({str(exc).splitlines()[0][:80] or type(exc).__name__})") from None


def decode(path: str, transform: ImageTransform, rng: random.Random | None = None) -> np.ndarray:
    """uint8 [C, size, size] of an image file: EXIF orientation applied, converted to the transform's mode,
    cropped and resized in one resampling (bilinear, antialiased). `rng` None: the evaluation transform."""
    from PIL import Image

    img = open_image(path)
    try:
        orientation = _orientation(img)
        width, height = img.size
        shown = (height, width) if orientation in (5, 6, 7, 8) else (width, height)
        box, flip, (dx, dy) = crop_box(transform, *shown, rng)
        factor = _draft(img, transform.mode, min(box[2] - box[0], box[3] - box[1]), transform.size) \
            if transform.reduce_jpeg else 1.0
        pixels = _decoded(img, path, transform.mode, orientation)
        box = tuple(v * factor for v in box)
        out = pixels.resize((transform.size, transform.size), Image.Resampling.BILINEAR, box=box)
        if flip:
            out = out.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
    finally:
        img.close()
    array = shifted(np.asarray(out, dtype=np.uint8), dx, dy)
    return array[None] if array.ndim == 2 else array.transpose(2, 0, 1)


def truncated(path: str, head: bytes, tail: bytes) -> bool:
    """A JPEG without its end-of-image marker or a PNG without its IEND chunk near the end: cut short (a
    copy that stopped), caught here without decoding it."""
    if head.startswith(b"\xff\xd8"):
        return b"\xff\xd9" not in tail
    if head.startswith(b"\x89PNG"):
        return b"IEND" not in tail
    return False


SOF_MARKERS = {0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF}


def jpeg_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG's frame header, walking its marker segments; None when the segments
    before it are not well formed (PIL decides then)."""
    at = 2
    while at + 9 <= len(head):
        if head[at] != 0xFF:
            return None
        marker = head[at + 1]
        if marker == 0xFF:  # fill byte
            at += 1
            continue
        length = int.from_bytes(head[at + 2:at + 4], "big")
        if marker in SOF_MARKERS:
            return int.from_bytes(head[at + 7:at + 9], "big"), int.from_bytes(head[at + 5:at + 7], "big")
        at += 2 + length
    return None


def header_size(head: bytes) -> tuple[int, int] | None:
    """(width, height) of a PNG or JPEG read from its first bytes (the common formats, read without PIL's
    parser: listing a folder of tens of thousands of files does this for each); None for other formats."""
    if head.startswith(b"\x89PNG\r\n\x1a\n") and head[12:16] == b"IHDR":
        return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")
    if head.startswith(b"\xff\xd8"):
        return jpeg_size(head)
    return None


HEADER_BYTES = 1 << 16  # a JPEG's frame header follows its EXIF block, which fits in 64 KiB


def _too_large(path: str, size: tuple[int, int]) -> str:
    from PIL import Image

    limit = Image.MAX_IMAGE_PIXELS
    if limit and size[0] * size[1] > limit:
        return f"{path}: {size[0] * size[1]} pixels exceed PIL's decompression-bomb limit of {limit} pixels"
    return ""


def check_file(path: str) -> str:
    """"" when the file looks like a usable image (its header read, its end present), else why not. Cheap:
    no pixels are decoded, and PNG and JPEG headers are read without PIL."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
            if head.startswith(b"\xff\xd8") and jpeg_size(head) is None and len(head) == 4096:
                head += f.read(HEADER_BYTES - 4096)  # an EXIF block before the frame header
            f.seek(max(0, f.seek(0, 2) - 1024))
            tail = f.read()
    except OSError as exc:
        return f"{path}: cannot be read ({exc.strerror or type(exc).__name__})"
    if not head:
        return f"{path}: empty file"
    if truncated(path, head, tail):
        return f"{path}: truncated (no end-of-image marker)"
    size = header_size(head)
    if size is not None:
        return _too_large(path, size) if min(size) > 0 else f"{path}: not a readable image (zero size)"
    try:
        open_image(path).close()
    except BadImage as exc:
        return str(exc)
    return ""

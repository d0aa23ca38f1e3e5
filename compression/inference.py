"""Inference as a client sees it: images in (uint8 0-255 or float 0-1), the dataset's own labels, names and
probabilities out, on PyTorch or on onnxruntime.

A Predictor is what the registered model and the predict flow both run; it checks a request's images
against the model (dimensions, channels, size) and says what is wrong in one line.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np
import torch

from compression import CompressionError
from compression.checkpoint import model_from_payload, read_model_file
from compression.data import to_model_input
from compression.export import run_onnx, session
from compression.images import IMAGE_SUFFIXES, BadImage, ImageTransform, decode

RUNTIMES = ("torch", "onnxruntime")


class BadImages(CompressionError):
    """The request's images do not fit the model (a client error, not a model failure)."""


def as_images(array, channels: int, size: int) -> torch.Tensor:
    """A request's images as a [N, C, H, W] tensor in [0, 1]: integer arrays are 0-255 pixels, float arrays
    0-1; [N, H, W] is taken as grey. Grey images feed a colour model (repeated); the reverse is refused."""
    try:
        images = np.asarray(array)
    except (ValueError, TypeError) as exc:
        raise BadImages(f"images must be a numeric array: {exc}") from None
    if images.dtype == bool or not (np.issubdtype(images.dtype, np.integer)
                                    or np.issubdtype(images.dtype, np.floating)):
        raise BadImages(f"images must be numbers (uint8 0-255 or float 0-1), got dtype {images.dtype}")
    if images.ndim == 3:
        images = images[:, None]
    if images.ndim != 4 or len(images) == 0:
        raise BadImages(f"images must be [N, {channels}, {size}, {size}] (or [N, {size}, {size}] grey), "
                        f"got shape {list(images.shape)}")
    if images.shape[1] not in (1, channels) or tuple(images.shape[2:]) != (size, size):
        raise BadImages(f"images must be [N, {channels}, {size}, {size}]"
                        f"{' or [N, 1, ...] grey' if channels != 1 else ''}, got shape {list(images.shape)}")
    integers = np.issubdtype(images.dtype, np.integer)
    x = torch.from_numpy(np.ascontiguousarray(images, dtype=np.float32)) / (255.0 if integers else 1.0)
    if not torch.isfinite(x).all():
        raise BadImages("images contain NaN or infinite values")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 1 + 1e-6:  # e.g. 0-255 pixels sent as floats: every answer would be wrong
        raise BadImages(f"pixel values must be 0-255 integers or 0-1 floats, got {low * (255 if integers else 1):g}"
                        f" to {high * (255 if integers else 1):g} as {'integers' if integers else 'floats'}")
    return x


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    return shifted / shifted.sum(axis=1, keepdims=True)


class Predictor:
    """A shrinkflow model file (and optionally its ONNX export) ready to score client images.

    `labels` are the dataset's own class ids for the model's outputs 0..k-1 (e.g. [5, 7, 9] for a model
    trained on Fashion-MNIST classes 5, 7 and 9); `names` their class names.
    """

    def __init__(self, checkpoint: str | os.PathLike, labels: Sequence[int] | None = None,
                 onnx: str | os.PathLike | None = None, runtime: str = "torch", threads: int = 1) -> None:
        if runtime not in RUNTIMES:
            raise CompressionError(f"unknown runtime {runtime!r}; choose from {', '.join(RUNTIMES)}")
        if runtime == "onnxruntime" and not onnx:
            raise CompressionError("runtime onnxruntime needs the model's ONNX file")
        payload = read_model_file(checkpoint)
        meta, spec = payload["meta"], payload["spec"]
        self.names = list(meta.get("classes") or range(spec["num_classes"]))
        self.labels = list(labels) if labels is not None else list(range(len(self.names)))
        if len(self.labels) != len(self.names):
            raise CompressionError(f"{len(self.labels)} labels for a model with {len(self.names)} classes")
        self.mean, self.std = meta["mean"], meta["std"]
        self.channels, self.size = spec["in_channels"], spec["input_size"]
        # Image files are read as evaluation read them (the transform the model file recorded).
        self.transform = ImageTransform.from_record(meta.get("transform"), self.size,
                                                    "L" if self.channels == 1 else "RGB")
        self.runtime = runtime
        if runtime == "onnxruntime":
            self.session, self.model = session(onnx, threads), None
        else:
            self.session, self.model = None, model_from_payload(payload, str(checkpoint))

    def logits(self, images: torch.Tensor) -> np.ndarray:
        """Logits for [N, C, H, W] images in [0, 1] (see as_images)."""
        x = to_model_input(images, self.mean, self.std, self.channels)
        if self.session is not None:
            return run_onnx(self.session, x)
        with torch.no_grad():
            return self.model(x).numpy()

    def predict(self, array, batch_size: int = 256) -> dict[str, list]:
        """Per image: the dataset label, its name, its probability and the probability of every class
        (a dict by class name), as columns."""
        images = as_images(array, self.channels, self.size)
        probs = np.concatenate([softmax(self.logits(images[i:i + batch_size]))
                                for i in range(0, len(images), batch_size)])
        top = probs.argmax(1)
        return {"label": [self.labels[i] for i in top], "name": [self.names[i] for i in top],
                "probability": [float(probs[n, i]) for n, i in enumerate(top)],
                "probabilities": [dict(zip(self.names, map(float, row))) for row in probs]}


# ---------------------------------------------------------------- image files

def image_files(root: str | os.PathLike) -> list[tuple[str, str | None]]:
    """(path, class folder) of every image under `root`: ImageFolder layout (root/<class>/<image>, the
    folder names the class) or flat (root/<image>, class None). Sorted, so output rows are stable."""
    from pathlib import Path

    root = Path(root)
    if not root.is_dir():
        raise CompressionError(f"image folder {root} does not exist")
    found = [(str(p), None if p.parent == root else p.parent.name) for p in sorted(root.rglob("*"))
             if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and len(p.relative_to(root).parts) <= 2]
    if not found:
        raise CompressionError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {root} or its class folders")
    return found


def read_images(paths: Sequence[str], transform: ImageTransform, channels: int,
                bad_images: str = "fail") -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(uint8 [N, channels, size, size], (position, why) of each unusable file left out): each image read with the
    model's evaluation transform (for the reference presets: short side resized to `resize`, centre crop).
    A file that is not a usable image (unreadable, truncated, larger than PIL's decompression-bomb limit) is
    bad input under `bad_images` fail, and left out (its row missing from the pixels) under skip."""
    if channels not in (1, 3):
        raise CompressionError(f"models with {channels} input channels cannot read image files")
    out = np.empty((len(paths), channels, transform.size, transform.size), dtype=np.uint8)
    kept, bad = 0, []
    for i, path in enumerate(paths):
        try:
            pixels = decode(path, transform)
        except BadImage as exc:
            if bad_images == "fail":
                raise CompressionError(f"cannot read image {exc}") from None
            bad.append((i, str(exc)))
            continue
        out[kept] = pixels if len(pixels) == channels else np.repeat(pixels, channels, axis=0)
        kept += 1
    return out[:kept], bad


def true_labels(folders: Sequence[str | None], labels: Sequence[int], names: Sequence[str]) -> list[int | None]:
    """The dataset label of each image from its class folder, named by class name or by label id; None for
    images outside class folders. A folder that is neither is refused (it would make accuracy wrong)."""
    by_folder = {**{str(label): label for label in labels}, **dict(zip(names, labels))}
    unknown = sorted({f for f in folders if f is not None and f not in by_folder})
    if unknown:
        raise CompressionError(f"class folder(s) {', '.join(unknown)} match none of the model's classes "
                               f"({', '.join(f'{label}={n}' for label, n in zip(labels, names))})")
    return [None if f is None else by_folder[f] for f in folders]

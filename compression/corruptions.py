"""Seeded image corruptions made locally from test images, in the spirit of MNIST-C and ImageNet-C
(Hendrycks & Dietterich 2019; Mu & Gilmer 2019), and the figures read from a model's logits on them.

Images are uint8 [N, C, H, W] (C = 1 or 3, any size from 28 px up) in and out; corruptions act on pixels in
[0, 1], before the caller normalises them for the model. Three severities each (1 mild .. 3 strong).

Deterministic and independent of batch boundaries: the random draws of an image come from a numpy Generator
seeded with (seed, the corruption's name, severity, the image's index in the whole set), so corrupting a set
in one call or in batches (pass each batch's `indices`) gives the same pixels.
"""

from __future__ import annotations

import io
import math
import zlib
from collections.abc import Callable

import numpy as np
import torch
from PIL import Image
from torch.nn import functional as F
from torchvision.transforms import InterpolationMode
from torchvision.transforms.v2 import functional as TF

from compression import CompressionError
from compression.accuracy import agreement, top1_accuracy
from compression.fidelity import _check_labels, _check_logits

CORRUPTIONS = ("gaussian_noise", "shot_noise", "impulse_noise", "gaussian_blur", "jpeg", "contrast", "brightness",
               "pixelate", "affine")
SEVERITIES = (1, 2, 3)

# Per severity 1, 2, 3. Noise, JPEG, contrast and pixelate follow ImageNet-C's first levels; the blur's sigma is
# CIFAR-10-C-like at 32 px and grows with the square root of the image size, so 224 px gets ImageNet-C's range.
_NOISE_SIGMA = (0.08, 0.12, 0.18)
_SHOT_PHOTONS = (60.0, 25.0, 12.0)  # Poisson rate at full intensity: fewer photons, more noise
_IMPULSE_AMOUNT = (0.03, 0.06, 0.09)  # share of values set to 0 or 1
_BLUR_SIGMA_32PX = (0.6, 1.0, 1.5)
_JPEG_QUALITY = (30, 15, 8)
_CONTRAST = (0.4, 0.25, 0.1)  # blend factor towards the image's grey mean
_BRIGHTNESS = (0.15, 0.3, 0.45)  # added to every pixel (ImageNet-C adds to HSV value)
_PIXELATE = (0.5, 0.35, 0.25)  # side of the coarse grid as a fraction of the image's side
_AFFINE = ((10.0, 0.06), (20.0, 0.10), (30.0, 0.15))  # rotation in degrees, shift as a fraction of the side


def _check_images(images: torch.Tensor) -> None:
    if not isinstance(images, torch.Tensor) or images.dtype != torch.uint8 or images.dim() != 4:
        what = f"{images.dtype} {tuple(images.shape)}" if isinstance(images, torch.Tensor) else type(images).__name__
        raise CompressionError(f"images must be uint8 [N, C, H, W], got {what}")
    n, c, h, w = images.shape
    if n == 0 or c not in (1, 3) or min(h, w) < 8:
        raise CompressionError(f"images must be non-empty with 1 or 3 channels and at least 8 px, got "
                               f"{tuple(images.shape)}")


def _check_request(name: str, severity: int) -> None:
    if name not in CORRUPTIONS:
        raise CompressionError(f"unknown corruption {name!r}; known: {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise CompressionError(f"severity must be 1, 2 or 3, got {severity!r}")


def _generators(seed: int, name: str, severity: int, indices: torch.Tensor) -> list[np.random.Generator]:
    """One Generator per image, from (seed, corruption, severity, image index): batch boundaries cannot move
    an image's draws. The name enters as its CRC32, so adding corruptions to the list changes no seed."""
    key = zlib.crc32(name.encode())
    return [np.random.default_rng([seed, key, severity, int(i)]) for i in indices.tolist()]


def _per_image(x: torch.Tensor, rngs: list[np.random.Generator], draw: Callable) -> torch.Tensor:
    return torch.stack([draw(image, rng) for image, rng in zip(x, rngs)])


def _gaussian_noise(x, severity, rngs):
    sigma = _NOISE_SIGMA[severity - 1]
    return _per_image(x, rngs, lambda img, rng: img + sigma * torch.from_numpy(
        rng.standard_normal(img.shape, dtype=np.float32)))


def _shot_noise(x, severity, rngs):
    photons = _SHOT_PHOTONS[severity - 1]
    return _per_image(x, rngs, lambda img, rng: torch.from_numpy(
        rng.poisson(img.double().numpy() * photons).astype(np.float32)) / photons)


def _impulse(img: torch.Tensor, rng: np.random.Generator, amount: float) -> torch.Tensor:
    """Salt and pepper: each value becomes 1 with probability amount/2, 0 with amount/2."""
    u = torch.from_numpy(rng.random(img.shape, dtype=np.float32))
    return torch.where(u < amount / 2, 1.0, torch.where(u > 1 - amount / 2, 0.0, img))


def _impulse_noise(x, severity, rngs):
    return _per_image(x, rngs, lambda img, rng: _impulse(img, rng, _IMPULSE_AMOUNT[severity - 1]))


def _gaussian_blur(x, severity, rngs):
    sigma = _BLUR_SIGMA_32PX[severity - 1] * math.sqrt(min(x.shape[-2:]) / 32)
    kernel = min(2 * math.ceil(3 * sigma) + 1, 2 * (min(x.shape[-2:]) // 2) - 1)  # reflect padding < the side
    return TF.gaussian_blur(x, [kernel, kernel], [sigma, sigma])


def _jpeg_one(image: torch.Tensor, quality: int) -> torch.Tensor:
    array = image.permute(1, 2, 0).numpy()
    pil = Image.fromarray(array[:, :, 0] if array.shape[2] == 1 else array)  # mode L or RGB, from the shape
    buffer = io.BytesIO()
    pil.save(buffer, format="JPEG", quality=quality)
    decoded = np.asarray(Image.open(buffer).convert(pil.mode))
    return torch.from_numpy(decoded.copy()).reshape(array.shape).permute(2, 0, 1)


def _jpeg(x, severity, rngs):
    quality = _JPEG_QUALITY[severity - 1]
    pixels = (x * 255).round().to(torch.uint8)
    return torch.stack([_jpeg_one(image, quality) for image in pixels]).float() / 255


def _contrast(x, severity, rngs):
    return TF.adjust_contrast(x, _CONTRAST[severity - 1])


def _brightness(x, severity, rngs):
    return x + _BRIGHTNESS[severity - 1]


def _pixelate(x, severity, rngs):
    h, w = x.shape[-2:]
    f = _PIXELATE[severity - 1]
    coarse = F.interpolate(x, size=(max(1, round(h * f)), max(1, round(w * f))), mode="area")
    return F.interpolate(coarse, size=(h, w), mode="nearest")


def _affine_one(img: torch.Tensor, rng: np.random.Generator, degrees: float, shift: float) -> torch.Tensor:
    """Rotation by +-degrees and a shift by +-shift of the side along each axis, directions drawn."""
    sign, sx, sy = rng.choice([-1.0, 1.0], size=3)
    h, w = img.shape[-2:]
    return TF.affine(img, angle=float(sign * degrees), translate=[float(sx * shift * w), float(sy * shift * h)],
                     scale=1.0, shear=[0.0, 0.0], interpolation=InterpolationMode.BILINEAR, fill=0.0)


def _affine(x, severity, rngs):
    degrees, shift = _AFFINE[severity - 1]
    return _per_image(x, rngs, lambda img, rng: _affine_one(img, rng, degrees, shift))


_APPLY = {"gaussian_noise": _gaussian_noise, "shot_noise": _shot_noise, "impulse_noise": _impulse_noise,
          "gaussian_blur": _gaussian_blur, "jpeg": _jpeg, "contrast": _contrast, "brightness": _brightness,
          "pixelate": _pixelate, "affine": _affine}
_RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "affine"}


def corrupt(images: torch.Tensor, name: str, severity: int, seed: int = 0,
            indices: torch.Tensor | None = None) -> torch.Tensor:
    """`images` (uint8 [N, C, H, W]) with corruption `name` at `severity` (1..3), as uint8 of the same shape.

    `indices` are the images' positions in the whole set (default 0..N-1): pass them when corrupting a set
    batch by batch, so each image gets the draws it gets in one call."""
    _check_images(images)
    _check_request(name, severity)
    if seed < 0:
        raise CompressionError(f"seed must be non-negative, got {seed}")
    indices = torch.arange(images.shape[0]) if indices is None else torch.as_tensor(indices).flatten()
    if indices.shape[0] != images.shape[0] or (indices.numel() and int(indices.min()) < 0):
        raise CompressionError(f"need one non-negative index per image: {indices.shape[0]} for "
                               f"{images.shape[0]} images")
    rngs = _generators(seed, name, severity, indices) if name in _RANDOM else []
    x = images.float() / 255
    return (_APPLY[name](x, severity, rngs).clamp(0, 1) * 255).round().to(torch.uint8)


def stratified_subset(labels: torch.Tensor, per_class: int, seed: int = 0) -> torch.Tensor:
    """Sorted indices of up to `per_class` images of every class present (all of a smaller class), drawn
    with a seeded numpy Generator: a smaller test set with the class balance kept."""
    labels = torch.as_tensor(labels)
    if labels.dim() != 1 or labels.numel() == 0 or labels.is_floating_point():
        raise CompressionError(f"labels must be a non-empty integer vector, got {labels.dtype} {tuple(labels.shape)}")
    if per_class < 1:
        raise CompressionError(f"per_class must be at least 1, got {per_class}")
    rng = np.random.default_rng(seed)
    chosen = []
    for c in torch.unique(labels).tolist():
        members = (labels == c).nonzero().flatten().numpy()
        chosen.append(rng.choice(members, size=min(per_class, members.size), replace=False))
    return torch.from_numpy(np.sort(np.concatenate(chosen))).long()


@torch.no_grad()
def corruption_logits(forward: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor,
                      prepare: Callable[[torch.Tensor], torch.Tensor], seed: int = 0,
                      corruptions: tuple[str, ...] = CORRUPTIONS, severities: tuple[int, ...] = SEVERITIES,
                      batch_size: int = 256) -> dict[str, dict[int, torch.Tensor]]:
    """Logits [N, K] of `forward` on every corruption and severity of `images` (uint8), batch by batch;
    `prepare` turns corrupted uint8 images into the model's input (e.g. `compression.data.to_model_input` with
    the dataset's mean and std). Every model scored with the same seed sees the same corrupted pixels."""
    _check_images(images)
    for name in corruptions:
        for severity in severities:
            _check_request(name, severity)
    out: dict[str, dict[int, torch.Tensor]] = {}
    for name in corruptions:
        for severity in severities:
            parts = []
            for start in range(0, images.shape[0], batch_size):
                index = torch.arange(start, min(start + batch_size, images.shape[0]))
                parts.append(forward(prepare(corrupt(images[index], name, severity, seed, index))).float().cpu())
            out.setdefault(name, {})[severity] = torch.cat(parts)
    return out


def corruption_accuracy(logits: dict[str, dict[int, torch.Tensor]],
                        labels: torch.Tensor) -> dict[str, dict[int, float]]:
    """Top-1 accuracy per corruption and severity, from `corruption_logits`' output."""
    result = {}
    for name, by_severity in logits.items():
        for severity, values in by_severity.items():
            _check_logits(values, f"{name} {severity} logits")
            _check_labels(labels, *values.shape)
            result.setdefault(name, {})[severity] = top1_accuracy(values, labels)
    return result


def corruption_agreement(reference_logits: dict[str, dict[int, torch.Tensor]],
                         candidate_logits: dict[str, dict[int, torch.Tensor]]) -> dict[str, dict[int, float]]:
    """Top-1 agreement of candidate and reference per corruption and severity (both saw the same pixels)."""
    _check_same_keys(reference_logits, candidate_logits)
    result = {}
    for name, by_severity in reference_logits.items():
        for severity, ref in by_severity.items():
            cand = candidate_logits[name][severity]
            if ref.shape != cand.shape or ref.dim() != 2:
                raise CompressionError(f"{name} {severity}: logits {tuple(ref.shape)} and {tuple(cand.shape)} differ")
            result.setdefault(name, {})[severity] = agreement(ref, cand)
    return result


def _check_same_keys(a: dict[str, dict], b: dict[str, dict]) -> None:
    keys_a = {(name, s) for name, by in a.items() for s in by}
    keys_b = {(name, s) for name, by in b.items() for s in by}
    if keys_a != keys_b or not keys_a:
        raise CompressionError(f"corruption results differ or are empty: {sorted(keys_a ^ keys_b)[:4] or 'none given'}")


def relative_corruption_error(candidate_accuracy: dict[str, dict[int, float]],
                              reference_accuracy: dict[str, dict[int, float]]) -> dict:
    """Hendrycks' corruption error normalised by the reference instead of AlexNet, from accuracies.

    "relative_error": the candidate's error summed over corruptions and severities, divided by the same sum
    of the reference's (above 1: less robust than the reference); "per_corruption": that ratio per corruption
    (None where the reference made no error), whose mean is Hendrycks' mCE with the reference as baseline."""
    _check_same_keys(candidate_accuracy, reference_accuracy)
    per_corruption, total_cand, total_ref = {}, 0.0, 0.0
    for name, by_severity in reference_accuracy.items():
        ref_err = sum(1.0 - acc for acc in by_severity.values())
        cand_err = sum(1.0 - candidate_accuracy[name][s] for s in by_severity)
        per_corruption[name] = cand_err / ref_err if ref_err > 0 else None
        total_cand, total_ref = total_cand + cand_err, total_ref + ref_err
    defined = [v for v in per_corruption.values() if v is not None]
    return {"relative_error": total_cand / total_ref if total_ref > 0 else None, "per_corruption": per_corruption,
            "mean_per_corruption": sum(defined) / len(defined) if defined else None}

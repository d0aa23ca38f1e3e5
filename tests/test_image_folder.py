"""Image folders streamed from their files: the manifest, the transforms, bad images, determinism, the digest.

Every image here is a real JPEG or PNG file written by the test."""

import io
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

from compression import CompressionError
from compression.data import load_dataset
from compression.images import BadImage, ImageTransform, check_file, decode
from compression.loader import Shard
from compression.manifest import Manifest, scan


def _photo(width: int, height: int, seed: int) -> np.ndarray:
    """A smooth picture with a random tint: resampling it twice stays close to resampling it once."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    base = np.stack([xx * 200 // width, yy * 200 // height, (xx + yy) * 100 // (width + height)], -1)
    return np.clip(base + rng.integers(0, 55, 3), 0, 255).astype(np.uint8)


def write_folder(root, classes=("cat", "dog", "fox"), per_class=8, size=(96, 72)):
    """JPEG and PNG files, alternately, in root/<class>/."""
    for c, name in enumerate(classes):
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            image = Image.fromarray(_photo(*size, seed=100 * c + i))
            image.save(root / name / (f"{i}.jpg" if i % 2 else f"{i}.png"), quality=90)
    return root


def _bomb_png(path, side: int = 40_000) -> None:
    """A PNG whose header claims side x side pixels (over PIL's decompression-bomb limit); no pixels follow."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b""))


def _odd_files(folder):
    """Readable images in modes a photo collection has (converted), and unreadable ones (left out or refused)."""
    Image.new("CMYK", (40, 40), (0, 255, 255, 0)).save(folder / "cmyk.jpg")
    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 255, 0, 0] * 128)
    palette.save(folder / "palette.png", transparency=0)
    Image.fromarray(np.full((40, 40), 40_000, dtype=np.uint16)).save(folder / "sixteen.png")
    Image.new("RGBA", (40, 40), (0, 0, 255, 128)).save(folder / "rgba.png")
    (folder / "notes.jpg").write_text("not an image")
    buffer = io.BytesIO()
    Image.fromarray(_photo(64, 64, 1)).save(buffer, "JPEG")
    (folder / "cut.jpg").write_bytes(buffer.getvalue()[: len(buffer.getvalue()) * 2 // 3])
    _bomb_png(folder / "bomb.png")


def test_manifest_lists_every_image_compactly_without_decoding(tmp_path):
    root = write_folder(tmp_path / "images", per_class=6)
    (root / "cat" / "readme.txt").write_text("not listed: not an image suffix")
    manifest = scan(root)
    assert manifest.classes == ["cat", "dog", "fox"] and len(manifest) == 18
    assert manifest.relative_path(0) == "cat/0.png" and manifest.labels.tolist() == [0] * 6 + [1] * 6 + [2] * 6
    assert manifest.sizes[0] == (root / "cat" / "0.png").stat().st_size
    assert manifest.nbytes() / len(manifest) < 40  # path bytes + offset + label + size: tens of bytes
    manifest.save(tmp_path / "m.npz")
    again = Manifest.load(tmp_path / "m.npz")
    assert again.identity() == manifest.identity() and again.root == str(root)
    manifest.write_csv(tmp_path / "m.csv.gz")
    import gzip

    lines = gzip.open(tmp_path / "m.csv.gz", "rt").read().splitlines()
    assert lines[0] == "relative_path,class,size_bytes" and lines[1].startswith('"cat/0.png",cat,')


def test_bad_images_are_skipped_with_one_warning_or_fail_naming_the_file(tmp_path, caplog):
    root = write_folder(tmp_path / "images", per_class=4)
    _odd_files(root / "dog")
    with caplog.at_level("WARNING", logger="shrinkflow"):
        manifest = scan(root, bad_images="skip")
    assert manifest.skipped == 3 and len(manifest) == 12 + 4
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 1 and "skipping 3 unreadable image(s)" in warnings[0]
    assert "bomb.png" in warnings[0] and "decompression-bomb" in warnings[0] and "cut.jpg" in warnings[0]
    with pytest.raises(BadImage, match=r"dog/bomb.png: .*data.bad_images: fail"):
        scan(root, bad_images="fail")
    assert "truncated" in check_file(str(root / "dog" / "cut.jpg"))
    assert "not a readable image" in check_file(str(root / "dog" / "notes.jpg"))
    small = ImageTransform.for_input(16)
    for name in ("cmyk.jpg", "palette.png", "sixteen.png", "rgba.png"):
        pixels = decode(str(root / "dog" / name), small)
        assert pixels.shape == (3, 16, 16) and pixels.dtype == np.uint8, name
    assert decode(str(root / "dog" / "sixteen.png"), small).mean() == pytest.approx(40_000 / 65535 * 255, abs=1)
    assert decode(str(root / "dog" / "palette.png"), small)[0].mean() == 255  # red, the palette's entry 1


def test_an_empty_class_folder_is_named(tmp_path):
    root = write_folder(tmp_path / "images", per_class=2)
    (root / "emu").mkdir()
    with pytest.raises(CompressionError, match="class folder .*emu has no images"):
        scan(root)


def test_exif_orientation_is_applied_before_cropping(tmp_path):
    stored = np.zeros((30, 60, 3), dtype=np.uint8)
    stored[:15] = (255, 0, 0)  # the stored top half red; shown rotated 90 degrees clockwise it is the right half
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.fromarray(stored).save(tmp_path / "phone.jpg", exif=exif.tobytes(), quality=95)
    pixels = decode(str(tmp_path / "phone.jpg"), ImageTransform.for_input(16))
    red = pixels[0].astype(int) - pixels[2].astype(int)
    assert red[:, 12:].mean() > 200 and red[:, :4].mean() < 50


def test_large_jpeg_is_decoded_reduced_and_matches_a_full_decode(tmp_path):
    Image.fromarray(_photo(1024, 768, 3)).save(tmp_path / "big.jpg", quality=92)
    reference = ImageTransform.for_input(224)
    reduced = decode(str(tmp_path / "big.jpg"), reference).astype(int)
    with Image.open(tmp_path / "big.jpg") as img:
        full = img.convert("RGB")  # decoded at full size
        side = 224 * 768 / 256
        box = ((1024 - side) / 2, (768 - side) / 2, (1024 + side) / 2, (768 + side) / 2)
        expected = np.asarray(full.resize((224, 224), Image.Resampling.BILINEAR, box=box)).transpose(2, 0, 1)
    assert np.abs(reduced - expected).mean() < 2


def _batches(bundle, shard=Shard(), epoch=1, workers=None, split="train"):  # noqa: B008 - Shard is a frozen dataclass
    if workers is not None:
        bundle.workers = workers
    batches = bundle.batches(split, 8, train=True, augment=True, seed=5, shard=shard)
    batches.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in batches]


def test_samples_do_not_depend_on_loader_workers_processes_or_a_resume(tmp_path):
    root = write_folder(tmp_path / "images", per_class=8, size=(80, 64))
    bundle = load_dataset("image-folder", data_dir=str(root), image_size=64, val_per_class=1, loader_workers=0)
    assert bundle.transform.kind == "reference" and bundle.transform.resize == 73
    one = _batches(bundle)
    assert len(one) == 2 and one[0][0].shape == (8, 3, 64, 64)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, _batches(bundle, workers=2)))
    halves = [_batches(bundle, Shard(rank, 2), workers=0) for rank in (0, 1)]
    for step, (x, y) in enumerate(one):
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), x)
        assert torch.equal(torch.cat([halves[0][step][1], halves[1][step][1]]), y)
    fresh = load_dataset("image-folder", data_dir=str(root), image_size=64, val_per_class=1, loader_workers=0)
    assert all(torch.equal(a[0], b[0]) for a, b in zip(one, _batches(fresh)))  # a resumed run's epoch 1
    assert not torch.equal(one[0][0], _batches(bundle, epoch=2)[0][0])


def test_in_memory_batches_shard_the_same_global_batch():
    bundle = load_dataset(classes=[5, 7], train_per_class=24, val_per_class=4, test_per_class=4, download=False)
    whole = _batches(bundle)
    halves = [_batches(bundle, Shard(rank, 2)) for rank in (0, 1)]
    assert len(whole) == len(halves[0]) == len(halves[1]) == 6
    for step, (x, _y) in enumerate(whole):
        assert torch.equal(torch.cat([halves[0][step][0], halves[1][step][0]]), x)
    with pytest.raises(CompressionError, match="cannot be split evenly over 3 training processes"):
        bundle.batches("train", 8, train=True, shard=Shard(0, 3))


def test_the_digest_sees_changed_files_and_the_loader_skips_a_file_broken_after_listing(tmp_path):
    root = write_folder(tmp_path / "images", per_class=6)
    first = load_dataset("image-folder", data_dir=str(root), image_size=32, val_per_class=1, loader_workers=0)
    again = load_dataset("image-folder", data_dir=str(root), image_size=32, val_per_class=1, loader_workers=0)
    assert first.digests == again.digests
    Image.fromarray(_photo(96, 72, 999)).save(root / "dog" / "3.jpg", quality=70)  # another picture, same name
    changed = load_dataset("image-folder", data_dir=str(root), image_size=32, val_per_class=1, loader_workers=0)
    assert changed.digests != first.digests
    victim = changed.manifest.path(int(changed.train.rows[0]))
    raw = open(victim, "rb").read()
    open(victim, "wb").write(raw[:len(raw) // 2] + raw[-12:])  # pixels cut short, its header and end intact
    labels = torch.cat([y for _, y in changed.batches("train", 4)])
    assert len(labels) == len(changed.train) - 1  # left out (with a warning), the worker lives on
    changed.bad_images = "fail"
    with pytest.raises(BadImage, match="cannot be decoded"):
        list(changed.batches("train", 4))

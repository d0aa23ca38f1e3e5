"""The manifest of an image folder: every image listed once (relative path, class, file size), never decoded.

Held as numpy arrays (one byte buffer of paths with offsets, labels, sizes): tens of bytes per image, shared
with loader worker processes as a few arrays instead of a list of Python tuples that every worker would copy
object by object (pytorch issue 13246). Listed in parallel, one thread per class folder; each file's header
is read (not its pixels) so that files PIL cannot open, truncated JPEG/PNG files and decompression bombs are
found before training, where the bad-image policy skips them or fails with one line.

The digest of a split hashes the manifest (paths, classes, sizes), the split's rows and the contents of a
seeded sample of its files: it sees files added, removed, renamed, moved between classes or changed in size,
and a changed file among the sampled ones; it cannot see a file rewritten with exactly the same size outside
that sample.
"""

from __future__ import annotations

import hashlib
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from compression import CompressionError
from compression.images import IMAGE_SUFFIXES, BadImage, check_file

log = logging.getLogger("shrinkflow")

DIGEST_SAMPLE = 32  # files per split whose bytes the digest reads
BAD_NAMED = 3  # bad files named in the one warning line
BAD_POLICIES = ("skip", "fail")


@dataclass
class Manifest:
    """Images under `root`: row i is paths[offsets[i]:offsets[i + 1]] (relative, UTF-8), labels[i] (an index
    into classes) and sizes[i] (bytes)."""

    root: str
    classes: list[str]
    blob: np.ndarray  # uint8, every relative path back to back
    offsets: np.ndarray  # int64, len(self) + 1
    labels: np.ndarray  # int32
    sizes: np.ndarray  # int64
    skipped: int = 0  # bad files left out under the skip policy

    def __len__(self) -> int:
        return len(self.labels)

    def relative_path(self, row: int) -> str:
        return self.blob[self.offsets[row]:self.offsets[row + 1]].tobytes().decode()

    def path(self, row: int) -> str:
        return os.path.join(self.root, self.relative_path(row))

    def identity(self) -> str:
        """sha256 of what the manifest lists (not where the folder is)."""
        h = hashlib.sha256(repr(self.classes).encode())
        for array in (self.blob, self.offsets, self.labels, self.sizes):
            h.update(np.ascontiguousarray(array).tobytes())
        return h.hexdigest()

    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.blob, self.offsets, self.labels, self.sizes))

    def save(self, path: str | os.PathLike) -> None:
        np.savez(path, blob=self.blob, offsets=self.offsets, labels=self.labels, sizes=self.sizes,
                 classes=np.array(self.classes), root=np.array(self.root), skipped=np.array(self.skipped))

    @classmethod
    def load(cls, path: str | os.PathLike) -> Manifest:
        with np.load(path, allow_pickle=False) as f:
            return cls(str(f["root"]), [str(c) for c in f["classes"]], f["blob"], f["offsets"], f["labels"],
                       f["sizes"], int(f["skipped"]))

    def write_csv(self, path: str | os.PathLike) -> None:
        """relative_path,class,size_bytes, one row per image (gzip when the name ends in .gz)."""
        import gzip

        opener = gzip.open if str(path).endswith(".gz") else open
        with opener(path, "wt", encoding="utf-8", newline="") as f:
            f.write("relative_path,class,size_bytes\n")
            for row in range(len(self)):
                f.write(f'"{self.relative_path(row)}",{self.classes[self.labels[row]]},{self.sizes[row]}\n')


def class_folders(root: Path) -> list[str]:
    """ImageFolder's classes: the sorted sub-folder names of root."""
    return sorted(entry.name for entry in os.scandir(root) if entry.is_dir())


def _list_class(root: Path, name: str) -> list[tuple[str, int]]:
    """(relative path, size) of every image file under root/name, in sorted order, as ImageFolder walks."""
    found = []
    for folder, dirs, files in os.walk(root / name, followlinks=True):
        dirs.sort()
        for file in sorted(files):
            if file.lower().endswith(IMAGE_SUFFIXES):
                full = os.path.join(folder, file)
                found.append((os.path.relpath(full, root), os.stat(full).st_size))
    return found


CHECK_CHUNK = 512  # files per thread task: one task per file costs more in scheduling than the check


def _check_chunk(root: str, paths: list[str]) -> list[str]:
    return [check_file(os.path.join(root, path)) for path in paths]


def _check_all(root: Path, listed: list[tuple[str, int]], threads: int) -> list[str]:
    """Why each file cannot be used ("" when it can), chunks of files read by `threads` threads (reading is
    what they overlap on a network or cold disk; the header parsing itself holds the GIL)."""
    paths = [path for path, _ in listed]
    chunks = [paths[i:i + CHECK_CHUNK] for i in range(0, len(paths), CHECK_CHUNK)]
    with ThreadPoolExecutor(threads) as pool:
        return [reason for part in pool.map(lambda chunk: _check_chunk(str(root), chunk), chunks) for reason in part]


def _bad_files(reasons: list[str], policy: str, root: Path) -> int:
    bad = [r for r in reasons if r]
    if not bad:
        return 0
    if policy == "fail":
        raise BadImage(f"{bad[0]} (data.bad_images: fail; {len(bad)} bad file(s) in {root}; "
                       "set data.bad_images: skip to leave them out)")
    named = "; ".join(bad[:BAD_NAMED]) + (f"; and {len(bad) - BAD_NAMED} more" if len(bad) > BAD_NAMED else "")
    log.warning("[data] skipping %d unreadable image(s) in %s: %s", len(bad), root, named)
    return len(bad)


def scan(root: str | os.PathLike, classes: list[str] | None = None, bad_images: str = "skip",
         threads: int | None = None) -> Manifest:
    """List an ImageFolder tree (root/<class>/.../<image>) into a manifest; `classes` must match when given."""
    root = Path(root)
    if bad_images not in BAD_POLICIES:
        raise CompressionError(f"bad_images must be one of {', '.join(BAD_POLICIES)}, got {bad_images!r}")
    if not root.is_dir():
        raise CompressionError(f"image folder {root} does not exist")
    names = class_folders(root)
    if classes is not None and names != classes:
        raise CompressionError(f"{root} has classes {names}, expected {classes}")
    if len(names) < 2:
        raise CompressionError(f"image folder {root} has {len(names)} class folder(s); at least 2 are needed")
    # Threads overlap file reads (a cold disk, a network share); the parsing holds the GIL, so more than a
    # few per core only queue for it.
    threads = threads or min(8, 2 * (os.cpu_count() or 1))
    with ThreadPoolExecutor(threads) as pool:
        per_class = list(pool.map(lambda name: _list_class(root, name), names))
    if empty := [name for name, files in zip(names, per_class) if not files]:
        raise CompressionError(f"class folder {root / empty[0]} has no images ({', '.join(IMAGE_SUFFIXES)})")
    listed = [item for files in per_class for item in files]
    labels = np.concatenate([np.full(len(files), c, dtype=np.int32) for c, files in enumerate(per_class)])
    reasons = _check_all(root, listed, threads)
    skipped = _bad_files(reasons, bad_images, root)
    keep = np.array([not r for r in reasons], dtype=bool)
    if emptied := [name for c, name in enumerate(names) if not keep[labels == c].any()]:
        raise CompressionError(f"class folder {root / emptied[0]} has no readable images")
    listed = [item for item, ok in zip(listed, keep) if ok]
    encoded = [path.encode() for path, _ in listed]
    offsets = np.zeros(len(encoded) + 1, dtype=np.int64)
    np.cumsum([len(e) for e in encoded], out=offsets[1:])
    blob = np.frombuffer(b"".join(encoded), dtype=np.uint8).copy()
    sizes = np.array([size for _, size in listed], dtype=np.int64)
    return Manifest(str(root), names, blob, offsets, labels[keep], sizes, skipped)


def _file_sha256(path: str) -> bytes:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.digest()


def split_digest(manifest: Manifest, rows: np.ndarray, labels: np.ndarray, identity: str | None = None) -> str:
    """Digest of one split: the manifest, the split's rows and labels, and the bytes of DIGEST_SAMPLE of its
    files chosen with a generator seeded by the split itself (the same files every time)."""
    h = hashlib.sha256((identity or manifest.identity()).encode())
    h.update(np.ascontiguousarray(rows, dtype=np.int64).tobytes())
    h.update(np.ascontiguousarray(labels, dtype=np.int64).tobytes())
    seed = int.from_bytes(hashlib.sha256(h.digest()).digest()[:8], "little")
    sample = np.random.default_rng(seed).choice(len(rows), size=min(DIGEST_SAMPLE, len(rows)), replace=False)
    for position in np.sort(sample):
        h.update(_file_sha256(manifest.path(int(rows[position]))))
    return h.hexdigest()

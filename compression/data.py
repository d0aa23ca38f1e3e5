"""Datasets behind one interface: small ones (Fashion-MNIST, CIFAR-10) held as in-memory uint8 tensors with a
vectorised batch iterator, image folders of any size streamed from their files (compression/loader.py).

torchvision's FashionMNIST converts every sample to PIL in __getitem__; slicing one uint8 tensor is many
times faster on CPU and needs no worker processes. An image folder is listed into a manifest and decoded by
DataLoader workers batch by batch, so its memory does not grow with its size. Every stage, the search and
predict use either through DataBundle (`batches`, `pixel_batches`, `in_channels`, `input_size`) without
knowing which.
"""

from __future__ import annotations

import gzip
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from compression import CompressionError
from compression.images import ImageTransform
from compression.loader import (
    SINGLE,
    FolderBatches,
    FolderSplit,
    Shard,
    default_workers,
    epoch_order,
    global_batches,
    shard_positions,
    start_worker_server,
)
from compression.manifest import Manifest, scan

FASHION_MNIST_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
SYSTEM_FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

# Per-channel statistics used to normalise inputs (0-1 pixel scale).
NORMALIZATION = {
    "fashion-mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


@dataclass
class Split:
    """One split of a dataset: uint8 images [N, C, H, W] and int64 labels [N]."""

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise CompressionError(f"images must be uint8 [N, C, H, W], "
                                   f"got {self.images.dtype} {tuple(self.images.shape)}")
        if len(self.images) != len(self.labels):
            raise CompressionError(f"{len(self.images)} images but {len(self.labels)} labels")

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor) -> Split:
        return Split(self.images[index], self.labels[index], self.classes)

    def relabel(self, labels: torch.Tensor, classes: list[str]) -> Split:
        return Split(self.images, labels, classes)

    def digest(self) -> str:
        """Content hash of the split: same pixels, labels and class names give the same digest."""
        h = hashlib.sha256()
        h.update(repr((tuple(self.images.shape), self.classes)).encode())
        h.update(self.labels.numpy().tobytes())
        h.update(self.images.contiguous().numpy().tobytes())
        return h.hexdigest()

    def class_counts(self) -> list[int]:
        return torch.bincount(self.labels[self.labels >= 0], minlength=len(self.classes)).tolist()

    def without_labels(self) -> Split:
        """The same images with every label set to -1 (unknown): a transfer set for distillation."""
        return Split(self.images, torch.full_like(self.labels, -1), self.classes)

    def concat(self, other: Split) -> Split:
        return Split(torch.cat([self.images, other.images]), torch.cat([self.labels, other.labels]), self.classes)


AnySplit = Split | FolderSplit


@dataclass
class DataBundle:
    """Train/val/test splits of one task plus the normalisation every model trained on it uses.

    In-memory splits (Split) or streamed ones (FolderSplit, with `transform`, `workers` and `bad_images`
    saying how their files are read)."""

    name: str
    train: AnySplit
    val: AnySplit
    test: AnySplit
    mean: tuple[float, ...]
    std: tuple[float, ...]
    source: str = ""
    # Training images beyond the label budget, labels hidden (-1); only distillation uses them.
    unlabeled: AnySplit | None = None
    digests: dict[str, str] = field(default_factory=dict)
    transform: ImageTransform | None = None
    workers: int = 0
    bad_images: str = "skip"
    settings: dict = field(default_factory=dict)  # load_dataset's arguments: another process loads the same data

    @property
    def classes(self) -> list[str]:
        return self.train.classes

    @property
    def streamed(self) -> bool:
        return isinstance(self.train, FolderSplit)

    @property
    def manifest(self) -> Manifest | None:
        return self.train.manifest if self.streamed else None

    @property
    def in_channels(self) -> int:
        if self.streamed:
            return 1 if self.transform.mode == "L" else 3
        return self.train.images.shape[1]

    @property
    def input_size(self) -> int:
        return self.transform.size if self.streamed else self.train.images.shape[-1]

    def eval_transform(self) -> dict | None:
        """What a model file records so that predict and serving read image files as evaluation does."""
        transform = self.transform or ImageTransform.for_input(self.input_size, "small")
        return {**transform.describe(), "mode": "L" if self.in_channels == 1 else "RGB"}

    def model_meta(self) -> dict:
        """What every model file trained on this data records for inference: the classes, the normalisation
        and the evaluation transform of image files."""
        return {"classes": self.classes, "mean": list(self.mean), "std": list(self.std),
                "transform": self.eval_transform()}

    def batches(self, split: str, batch_size: int, train: bool = False, augment: bool = False, seed: int = 0,
                channels: int | None = None, shard: Shard = SINGLE, normalize: bool = True) -> Batches | FolderBatches:
        """Batches of one split: shuffled (and optionally augmented) when `train`, in order otherwise; with a
        `shard`, this process's slice of every global batch of `batch_size`."""
        part = self.transfer if split == "transfer" else getattr(self, split)
        common = dict(shuffle=train, augment=augment and train, seed=seed, drop_last=train, channels=channels,
                      shard=shard, normalize=normalize)
        if isinstance(part, FolderSplit):
            return FolderBatches(part, batch_size, self.mean, self.std, self.transform, workers=self.workers,
                                 bad_images=self.bad_images, **common)
        return Batches(part, batch_size, self.mean, self.std, **common)

    def pixel_batches(self, split: str, batch_size: int = 256):
        """(uint8 [B, C, H, W], labels) of a split in order, as a client sends them: evaluation-sized pixels."""
        yield from self.batches(split, batch_size, normalize=False)

    @property
    def transfer(self) -> AnySplit:
        """What a KD student learns from: the labelled training set plus the unlabeled images."""
        return self.train.concat(self.unlabeled) if self.unlabeled is not None else self.train

    def compute_digests(self) -> dict[str, str]:
        names = ("train", "val", "test") + (("unlabeled",) if self.unlabeled is not None else ())
        self.digests = {name: getattr(self, name).digest() for name in names}
        return self.digests


# ---------------------------------------------------------------- Fashion-MNIST

def _read_idx(path: Path) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CompressionError(f"{path} is not an IDX file of unsigned bytes")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    data = np.frombuffer(raw, dtype=np.uint8, offset=offset)
    if data.size != int(np.prod(dims)):
        raise CompressionError(f"{path} is truncated: expected {int(np.prod(dims))} values, found {data.size}")
    return data.reshape(dims)


def _has_fashion_mnist(directory: Path) -> bool:
    return all((directory / name).is_file() or (directory / name[:-3]).is_file()
               for name in FASHION_MNIST_FILES.values())


def _idx_path(directory: Path, name: str) -> Path:
    gz = directory / name
    return gz if gz.is_file() else directory / name[:-3]


def find_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> Path:
    """Directory holding the four Fashion-MNIST IDX files.

    Looked up in order: `data_dir`, ./data, ./data/fashion-mnist, the Debian package's directory, then a
    torchvision download into ./data when online. One error lists every place tried.
    """
    if data_dir is not None and not Path(data_dir).is_dir():
        raise CompressionError(f"data directory {data_dir} does not exist")
    candidates = [Path(data_dir)] if data_dir else []
    candidates += [Path("data"), Path("data/fashion-mnist"), Path("data/FashionMNIST/raw"), SYSTEM_FASHION_MNIST_DIR]
    for directory in candidates:
        if _has_fashion_mnist(directory):
            return directory
    tried = [str(c) for c in candidates]
    if download:
        target = Path(data_dir) if data_dir else Path("data")
        try:
            from torchvision.datasets import FashionMNIST

            FashionMNIST(str(target), train=True, download=True)
            FashionMNIST(str(target), train=False, download=True)
            raw = target / "FashionMNIST" / "raw"
            if _has_fashion_mnist(raw):
                return raw
        except Exception as exc:  # noqa: BLE001 - no network, no write permission, bad checksum, ...: one more place tried
            tried.append(f"torchvision download into {target} "
                         f"({type(exc).__name__}: {str(exc).splitlines()[0][:80]})")
    else:
        tried.append("torchvision download (disabled)")
    raise CompressionError(
        "Fashion-MNIST not found; tried " + "; ".join(tried)
        + ". Install it with `apt-get install dataset-fashion-mnist` or pass data.data_dir"
    )


def load_fashion_mnist(data_dir: str | os.PathLike | None = None, download: bool = True) -> tuple[Split, Split, str]:
    """(official train split, official test split, directory read)."""
    directory = find_fashion_mnist(data_dir, download)
    splits = []
    for prefix in ("train", "test"):
        images = _read_idx(_idx_path(directory, FASHION_MNIST_FILES[f"{prefix}_images"]))
        labels = _read_idx(_idx_path(directory, FASHION_MNIST_FILES[f"{prefix}_labels"]))
        splits.append(Split(torch.from_numpy(images.copy()).unsqueeze(1),
                            torch.from_numpy(labels.astype(np.int64)), list(FASHION_MNIST_CLASSES)))
    return splits[0], splits[1], str(directory)


# ---------------------------------------------------------------- CIFAR-10 and image folders

def load_cifar10(data_dir: str | os.PathLike) -> tuple[Split, Split, str]:
    """CIFAR-10 from the official python batches (`cifar-10-batches-py` under data_dir); never downloads.

    The batches are pickles, as the dataset ships them: read only copies you trust.
    """
    import pickle

    folder = Path(data_dir) / "cifar-10-batches-py"
    names = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}
    missing = [n for n in names["train"] + names["test"] + ["batches.meta"] if not (folder / n).is_file()]
    if missing:
        raise CompressionError(f"CIFAR-10 not found: {folder} lacks {', '.join(missing)}")
    with open(folder / "batches.meta", "rb") as f:
        classes = list(pickle.load(f, encoding="latin1")["label_names"])
    splits = []
    for part in ("train", "test"):
        images, labels = [], []
        for name in names[part]:
            with open(folder / name, "rb") as f:
                batch = pickle.load(f, encoding="latin1")
            images.append(np.asarray(batch["data"], dtype=np.uint8).reshape(-1, 3, 32, 32))
            labels += list(batch["labels"])
        splits.append(Split(torch.from_numpy(np.concatenate(images)), torch.tensor(labels, dtype=torch.int64), classes))
    return splits[0], splits[1], str(folder)


def _whole(manifest: Manifest) -> FolderSplit:
    return FolderSplit(manifest, np.arange(len(manifest), dtype=np.int64),
                       torch.from_numpy(manifest.labels.astype(np.int64)), list(manifest.classes))


def load_image_folder(root: str | os.PathLike, bad_images: str = "skip", manifests: dict[str, Manifest] | None = None,
                      workers: int = 0) -> tuple[FolderSplit, FolderSplit | None, str]:
    """Images in torchvision's ImageFolder layout (root/<class>/<image>), listed into a manifest, not decoded.

    With root/train and root/test (or root/val) the test split is listed too; otherwise it is None and the
    caller carves one out of the training images. `manifests` ("train", optionally "test"): listings made
    before (by the data stage), used instead of listing the folder again. With loader `workers` their fork
    server starts first, in the background.
    """
    root = Path(root)
    if not root.is_dir():
        raise CompressionError(f"image folder {root} does not exist")
    if workers:
        start_worker_server()
    if manifests:
        train = _whole(manifests["train"])
        return train, _whole(manifests["test"]) if "test" in manifests else None, str(root)
    if not (root / "train").is_dir():
        return _whole(scan(root, bad_images=bad_images)), None, str(root)
    train = _whole(scan(root / "train", bad_images=bad_images))
    for name in ("test", "val"):
        if (root / name).is_dir():
            return train, _whole(scan(root / name, train.classes, bad_images)), str(root)
    return train, None, str(root)


# ---------------------------------------------------------------- selection and splitting

def select_classes(split: Split, classes: list[int]) -> Split:
    """Keep only `classes` (indices into split.classes), relabelled 0..k-1 in the order given."""
    if not classes:
        raise CompressionError("class subset is empty")
    bad = [c for c in classes if not 0 <= c < len(split.classes)]
    if bad:
        raise CompressionError(f"class subset {bad} out of range 0..{len(split.classes) - 1}")
    if len(set(classes)) != len(classes):
        raise CompressionError(f"class subset {classes} has duplicates")
    lookup = torch.full((len(split.classes),), -1, dtype=torch.int64)
    lookup[torch.tensor(classes)] = torch.arange(len(classes))
    new_labels = lookup[split.labels]
    keep = (new_labels >= 0).nonzero().squeeze(1)
    return split.subset(keep).relabel(new_labels[keep], [split.classes[c] for c in classes])


def _per_class_order(split: Split, seed: int) -> list[torch.Tensor]:
    """For each class, the indices of its samples in a seeded random order."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(split), generator=g)
    labels = split.labels[order]
    return [order[labels == c] for c in range(len(split.classes))]


def cap_per_class(split: Split, per_class: int | None, seed: int, skip: int = 0) -> Split:
    """At most `per_class` samples of each class, chosen with a seeded shuffle, kept in their original order.

    `skip` passes over the first samples of each class in that order: with the same seed,
    cap_per_class(s, n) and cap_per_class(s, m, skip=n) never share a sample.
    """
    if per_class is None and not skip:
        return split
    end = None if per_class is None else skip + per_class
    keep = torch.cat([idx[skip:end] for idx in _per_class_order(split, seed)])
    return split.subset(keep.sort().values)


def split_per_class(split: Split, held_out_per_class: int, seed: int) -> tuple[Split, Split]:
    """Stratified, seeded split: `held_out_per_class` samples of each class go to the second part."""
    per_class = _per_class_order(split, seed)
    short = [split.classes[c] for c, idx in enumerate(per_class) if len(idx) <= held_out_per_class]
    if short:
        raise CompressionError(f"classes {short} have too few samples to hold out {held_out_per_class} for validation")
    held = torch.cat([idx[:held_out_per_class] for idx in per_class]).sort().values
    rest = torch.cat([idx[held_out_per_class:] for idx in per_class]).sort().values
    return split.subset(rest), split.subset(held)


def _official_splits(name: str, data_dir: str | None, download: bool, bad_images: str,
                     manifests: dict[str, Manifest] | None, seed: int, workers: int):
    """(train, test, source, normalisation) of a dataset as it ships; an image folder without a test folder
    gets a seeded, stratified fifth of each class (at least one image) as its test split."""
    if name == "fashion-mnist":
        return *load_fashion_mnist(data_dir, download), NORMALIZATION["fashion-mnist"]
    if name == "cifar10":
        if data_dir is None:
            raise CompressionError("cifar10 needs data.data_dir (the folder holding cifar-10-batches-py)")
        return *load_cifar10(data_dir), NORMALIZATION["cifar10"]
    if name == "image-folder":
        if data_dir is None:
            raise CompressionError("image-folder needs data.data_dir (root/<class>/<image> layout)")
        train, test, source = load_image_folder(data_dir, bad_images, manifests, workers)
        if test is None:
            smallest = min(train.class_counts())
            train, test = split_per_class(train, max(1, smallest // 5), seed + 1)
        return train, test, source, NORMALIZATION["imagenet"]
    raise CompressionError(f"unknown dataset {name!r}; choose fashion-mnist, cifar10 or image-folder")


def load_dataset(
    name: str = "fashion-mnist",
    data_dir: str | None = None,
    classes: list[int] | None = None,
    train_per_class: int | None = None,
    unlabeled_per_class: int = 0,
    val_per_class: int = 100,
    test_per_class: int | None = None,
    image_size: int = 64,
    download: bool = True,
    seed: int = 0,
    transform: str = "auto",
    resize_size: int | None = None,
    crop_scale: tuple[float, float] = (0.08, 1.0),
    hflip: bool = True,
    loader_workers: int | None = None,
    bad_images: str = "skip",
    manifests: dict[str, Manifest] | None = None,
) -> DataBundle:
    """Load a dataset and cut it into train/val/test for one task.

    Validation samples come out of the official training split (stratified, seeded) before the
    training set is capped to `train_per_class` (the label budget); up to `unlabeled_per_class` further
    training images per class become the unlabeled transfer set. Test is the official test split.
    An image folder is streamed at `image_size` with the `transform` family (images.ImageTransform).
    """
    settings = {k: v for k, v in locals().items() if k != "manifests"}
    workers = default_workers() if loader_workers is None else loader_workers
    train, test, source, norm = _official_splits(name, data_dir, download, bad_images, manifests, seed, workers)
    if classes is not None:
        train, test = select_classes(train, classes), select_classes(test, classes)
    train, val = split_per_class(train, val_per_class, seed)
    unlabeled = None
    if unlabeled_per_class:
        if train_per_class is None:
            raise CompressionError("unlabeled_per_class needs a label budget (train_per_class)")
        unlabeled = cap_per_class(train, unlabeled_per_class, seed, skip=train_per_class).without_labels()
    streamed = isinstance(train, FolderSplit)
    bundle = DataBundle(
        name=name, train=cap_per_class(train, train_per_class, seed), unlabeled=unlabeled, val=val,
        test=cap_per_class(test, test_per_class, seed), mean=norm[0], std=norm[1], source=source,
        transform=ImageTransform.for_input(image_size, transform, resize_size, crop_scale, hflip) if streamed else None,
        workers=workers, bad_images=bad_images,
        settings=settings)
    bundle.compute_digests()
    return bundle


# ---------------------------------------------------------------- model input

def _per_channel(values: Sequence[float], channels: int) -> torch.Tensor:
    stats = torch.as_tensor(values, dtype=torch.float32).view(1, -1, 1, 1)
    # Grey statistics for colour images or vice versa: one averaged value for every channel.
    return stats if stats.shape[1] == channels else stats.mean().view(1, 1, 1, 1)


def to_model_input(images: torch.Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None,
                   channels: int | None = None) -> torch.Tensor:
    """Images [N, C, H, W], uint8 (0-255) or float scaled to [0, 1], as a model's float input.

    Normalised with the dataset's per-channel `mean` and `std` (0-1 pixel scale; None for both: left in
    [0, 1], the input the registered model takes), then grey images are repeated over the model's
    `channels` (None: as many as the images have).
    """
    # In place on a fresh tensor: the same operations in the same order as (x / 255 - mean) / std, so the
    # same bits, without a new tensor per step (on a CPU this was most of a 224 px batch's cost).
    x = images.to(torch.float32, copy=True)
    if images.dtype == torch.uint8:
        x.div_(255.0)
    c = x.shape[1]
    if mean is not None or std is not None:
        x.sub_(_per_channel(mean, c)).div_(_per_channel(std, c))
    if channels and channels != c:
        if c != 1:
            raise CompressionError(f"images have {c} channels, the model expects {channels}")
        x = x.expand(-1, channels, -1, -1)
    return x


# ---------------------------------------------------------------- batching

class Batches:
    """Iterates (x, y) float batches from an in-memory Split.

    Shuffling uses a generator seeded from (seed, epoch), so epoch e yields the same batches whether or not
    training was resumed before it. Augmentation (random crop with padding, horizontal flip) is vectorised
    over the global batch and drawn from the same generator; with a `shard` each training process computes
    the global batch and keeps its slice, so the samples and their augmentation do not depend on how many
    processes train (small images: the repeated work is cheap next to a training step).
    """

    def __init__(self, split: Split, batch_size: int, mean, std, shuffle: bool = False, augment: bool = False,
                 seed: int = 0, drop_last: bool = False, channels: int | None = None, shard: Shard = SINGLE,
                 normalize: bool = True) -> None:
        if batch_size < 1:
            raise CompressionError(f"batch_size must be >= 1, got {batch_size}")
        self.split = split
        self.global_batch, self.batch_size = batch_size, shard.batch_size(batch_size)
        self.shuffle = shuffle
        self.augment = augment
        self.seed = seed
        self.shard, self.normalized = shard, normalize
        self.drop_last = drop_last and len(split) > batch_size
        self.epoch = 0
        self.device = torch.device("cpu")
        c = split.images.shape[1]
        self.channels = channels or c
        if self.channels != c and c != 1:
            raise CompressionError(f"data has {c} channels, the model expects {self.channels}")
        self.mean, self.std = tuple(mean), tuple(std)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return global_batches(len(self.split), self.global_batch, self.drop_last)

    def _augment(self, x: torch.Tensor, g: torch.Generator, pad: int = 2) -> torch.Tensor:
        b, _, h, w = x.shape
        padded = torch.nn.functional.pad(x, (pad, pad, pad, pad))
        oy = torch.randint(0, 2 * pad + 1, (b,), generator=g)
        ox = torch.randint(0, 2 * pad + 1, (b,), generator=g)
        rows = (oy[:, None] + torch.arange(h))[:, None, :, None]
        cols = (ox[:, None] + torch.arange(w))[:, None, None, :]
        chans = torch.arange(x.shape[1])[None, :, None, None]
        out = padded[torch.arange(b)[:, None, None, None], chans, rows, cols]
        flip = torch.rand(b, generator=g) < 0.5
        return torch.where(flip[:, None, None, None], out.flip(-1), out)

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        return to_model_input(images, self.mean, self.std, self.channels)

    def _global_batch(self, idx: torch.Tensor, g: torch.Generator) -> torch.Tensor:
        x = self.normalize(self.split.images[idx])
        return self._augment(x, g) if self.augment else x

    def __iter__(self):
        n = len(self.split)
        order, g = epoch_order(n, self.shuffle, self.seed, self.epoch)
        whole = SINGLE if self.augment else self.shard  # augmented: the global batch is drawn whole, then sliced
        for i in range(len(self)):
            start, stop = i * self.global_batch, min((i + 1) * self.global_batch, n)
            idx = shard_positions(order, start, stop, whole)
            if not self.normalized:
                yield self.split.images[idx], self.split.labels[idx]
                continue
            x, y = self._global_batch(idx, g), self.split.labels[idx]
            if whole is not self.shard:
                mine = shard_positions(torch.arange(len(idx)), 0, len(idx), self.shard)
                x, y = x[mine], y[mine]
            if len(y):
                yield x.to(self.device), y.to(self.device)

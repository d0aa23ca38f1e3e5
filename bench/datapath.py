"""Data path: one pass over the full Fashion-MNIST training set (60,000 images) as normalised float
batches, through shrinkflow's in-memory batching and through torchvision's FashionMNIST + DataLoader
(num_workers 0, and 2 with the spawn start method), plain and with the same augmentation (random crop
with 2-pixel padding, horizontal flip). Also one training epoch's worth of ResNet-18 steps fed by each
loader, so the data cost is seen against the compute it feeds.
"""

from __future__ import annotations

import gzip
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import QUICK, WORK, save, say

BATCH = 128
TRAIN_STEPS = 5 if QUICK else 40


def torchvision_root() -> Path:
    """torchvision's FashionMNIST layout (<root>/FashionMNIST/raw/<unpacked idx files>) from our copy."""
    from compression.data import FASHION_MNIST_FILES, find_fashion_mnist

    source = Path(find_fashion_mnist(None, download=False))
    raw = WORK / "torchvision" / "FashionMNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    for name in FASHION_MNIST_FILES.values():
        target = raw / name.removesuffix(".gz")
        if not target.exists():
            gz = source / (name if name.endswith(".gz") else name + ".gz")
            if gz.exists():
                with gzip.open(gz, "rb") as src, open(target, "wb") as dst:
                    shutil.copyfileobj(src, dst)
            else:
                shutil.copy(source / name.removesuffix(".gz"), target)
    return WORK / "torchvision"


def ours(augment: bool):
    from compression.data import load_dataset

    bundle = load_dataset(val_per_class=1, download=False, seed=0)
    return bundle.batches("train", BATCH, train=True, augment=augment)


def torchvision_loader(workers: int, augment: bool):
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import FashionMNIST

    steps = [T.RandomCrop(28, padding=2), T.RandomHorizontalFlip()] if augment else []
    transform = T.Compose(steps + [T.ToTensor(), T.Normalize((0.2860,), (0.3530,))])
    dataset = FashionMNIST(str(torchvision_root()), train=True, transform=transform, download=False)
    extra = {"multiprocessing_context": "spawn", "persistent_workers": False} if workers else {}
    return DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True, **extra)


def one_pass(loader, limit: int | None = None) -> tuple[int, float]:
    start = time.perf_counter()
    n = 0
    for i, (x, _) in enumerate(loader):
        n += len(x)
        if limit and i + 1 >= limit:
            break
    return n, time.perf_counter() - start


def train_steps(loader, steps: int) -> float:
    """images/s of ResNet-18 training steps fed by `loader` (the loader's start-up included)."""
    import torch

    from compression.models import build_model

    torch.manual_seed(0)
    model = build_model("resnet18", 10, 1, 28).train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    start = time.perf_counter()
    n = 0
    for i, (x, y) in enumerate(loader):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
        n += len(x)
        if i + 1 >= steps:
            break
    return n / (time.perf_counter() - start)


def main() -> None:
    limit = 50 if QUICK else None
    rows = []
    loaders = {"shrinkflow in-memory": lambda aug: ours(aug),
               "torchvision DataLoader, 0 workers": lambda aug: torchvision_loader(0, aug),
               "torchvision DataLoader, 2 workers (spawn)": lambda aug: torchvision_loader(2, aug)}
    for augment in (False, True):
        for name, make in loaders.items():
            say(f"data path: {name}, augment={augment}")
            n, seconds = one_pass(make(augment), limit)
            rows.append({"loader": name, "augment": augment, "images": n, "seconds": seconds,
                         "images_per_s": n / seconds})
    training = []
    for name, make in loaders.items():
        say(f"data path: {TRAIN_STEPS} ResNet-18 training steps fed by {name}")
        training.append({"loader": name, "images_per_s": train_steps(make(True), TRAIN_STEPS)})
    base = {r["augment"]: r["images_per_s"] for r in rows if r["loader"] == "shrinkflow in-memory"}
    for r in rows:
        r["ours_over_this"] = base[r["augment"]] / r["images_per_s"]
    save("datapath", {"batch_size": BATCH, "passes": rows, "training": training, "train_steps": TRAIN_STEPS,
                      "command": "python bench/datapath.py"})


if __name__ == "__main__":
    main()

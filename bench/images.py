"""Image folders at real scale, on folders of JPEG files this script generates (stripes whose angle is the
class, a tint and noise: learnable, and fine enough in texture that resampling shows):

(a) peak memory of a process that lists a folder and takes one epoch of training batches through the loader
    (a few ResNet-18 steps, then decoding alone), for 1,000 and 20,000 images at 224 px; the previous
    in-memory path (every image decoded into one tensor first) beside it on the smaller folders;
(b) time to the first training batch, same folders;
(c) loader throughput with 2 workers against torchvision's ImageFolder + DataLoader with its reference
    training preset and the same workers, on 256 px and 1,024 px JPEG sources; the 1,024 px ones also
    without reduced decoding, and a short training run on each to see accuracy unchanged;
(d) two DDP processes against one: epoch time and agreement;
(f) a pipeline at 224 px on the small folder: wall time per stage, the loader's share of training time.

(e), the demo against the code before streaming, is measured by bench/compression_results.py runs of both.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import PYTHON, QUICK, QUICK_PIPELINE, WORK, kept_parts, save, say, use_prefect_env

CLASSES = 10
SIZES = (200, 1_000) if QUICK else (1_000, 20_000)
EAGER_SIZES = (200,) if QUICK else (1_000, 4_000)
THROUGHPUT_IMAGES = 128 if QUICK else 1_000
BATCH = 64
FOLDERS = WORK / "images"


# ---------------------------------------------------------------- folders

def _class_tint(label: int, rng):
    """An RGB colour of the class's hue at a random brightness: what a short training can learn through
    RandomResizedCrop and flips (a flip turns one stripe angle into another class's)."""
    import colorsys

    import numpy as np

    red, green, blue = colorsys.hsv_to_rgb(label / CLASSES, 0.55, rng.uniform(0.55, 0.85))
    return np.array([red, green, blue]) * 255


def _picture(args: tuple) -> None:
    """One JPEG: stripes at the class's angle, random frequency and phase, a random tint (or, for the short
    training, the class's), plus noise."""
    import numpy as np
    from PIL import Image

    path, label, width, height, seed, class_tint = args
    rng = np.random.default_rng(seed)
    angle = math.pi * label / CLASSES
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32) / max(width, height)
    wave = np.sin((xx * math.cos(angle) + yy * math.sin(angle)) * rng.uniform(20, 40) + rng.uniform(0, 6.3))
    tint = _class_tint(label, rng) if class_tint else rng.uniform(60, 200, 3)
    pixels = wave[..., None] * 50 + tint + rng.normal(0, 12, (height, width, 3))
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)


def generate(name: str, count: int, width: int, height: int, class_tint: bool = False) -> Path:
    """FOLDERS/name with `count` JPEGs in CLASSES class folders (made once, kept for later runs)."""
    from multiprocessing import Pool

    root = FOLDERS / name
    done = root / ".complete"
    if done.exists():
        return root
    jobs = []
    for i in range(count):
        label = i % CLASSES
        (root / f"class{label}").mkdir(parents=True, exist_ok=True)
        jobs.append((root / f"class{label}" / f"{i:06d}.jpg", label, width, height, i, class_tint))
    say(f"images: writing {count} {width}x{height} JPEGs to {root}")
    with Pool(os.cpu_count()) as pool:
        pool.map(_picture, jobs, chunksize=64)
    done.touch()
    return root


# ---------------------------------------------------------------- (a), (b): one process per folder

class PeakMemory:
    """Peak resident memory (RSS) of this process, and the peak proportional set size (PSS: shared pages
    split between the processes sharing them) of it with its descendants (fork server, loader workers)."""

    def __init__(self, every: float = 0.1) -> None:
        import psutil

        self.process, self.every = psutil.Process(), every
        self.own = self.tree = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                own = self.process.memory_info().rss
                tree = sum(p.memory_full_info().pss for p in [self.process, *self.process.children(recursive=True)])
            except psutil.Error:
                continue
            self.own, self.tree = max(self.own, own), max(self.tree, tree)
            time.sleep(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def probe(root: str, eager: bool) -> dict:
    """List the folder and take one epoch of training batches (3 ResNet-18 steps on 8 images of a batch:
    the steps' activations would hide the loader's memory; then decoding alone)."""
    import torch

    from compression.models import build_model

    torch.set_num_threads(1)
    model = build_model("resnet18", CLASSES, 3, 224)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
    with PeakMemory() as memory:
        started = time.perf_counter()
        batches = _eager_batches(root) if eager else _streamed_batches(root)
        first, images = None, 0
        for step, (x, y) in enumerate(batches):
            if first is None:
                first = time.perf_counter() - started
            if step < 3:
                optimizer.zero_grad()
                torch.nn.functional.cross_entropy(model(x[:8]), y[:8]).backward()
                optimizer.step()
            images += len(y)
        epoch = time.perf_counter() - started
    return {"first_batch_s": first, "epoch_s": epoch, "batched_images": images, "peak_rss_mb": memory.own / 2**20,
            "peak_pss_with_workers_mb": memory.tree / 2**20}


def _streamed_batches(root: str):
    from compression.data import load_dataset

    bundle = load_dataset("image-folder", data_dir=root, image_size=224, val_per_class=5, loader_workers=2)
    return bundle.batches("train", BATCH, train=True, augment=True, seed=0)


def _eager_batches(root: str):
    """The path before streaming (commit 936afee): every image decoded and resized into one uint8 tensor."""
    import torch
    from PIL import Image
    from torchvision.datasets import ImageFolder
    from torchvision.transforms.functional import center_crop, pil_to_tensor, resize

    folder = ImageFolder(root)
    images = []
    for path, _ in folder.samples:
        with Image.open(path) as img:
            images.append(center_crop(resize(pil_to_tensor(img.convert("RGB")), 224, antialias=True), [224, 224]))
    pixels, labels = torch.stack(images), torch.tensor(folder.targets)
    del images
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    order = torch.randperm(len(labels))
    for i in range(0, len(order) - BATCH + 1, BATCH):
        idx = order[i:i + BATCH]
        yield (pixels[idx].float() / 255 - mean) / std, labels[idx]


def scale_runs(rounds: int = 1 if QUICK else 3) -> list[dict]:
    """The folder sizes in turn, `rounds` times (the report takes medians), then the path before streaming."""
    rows = []
    for _ in range(rounds):
        for count in SIZES:
            root = generate(f"scale-{count}", count, 256, 256)
            rows.append({"images": count, "path": "streamed", **_child(["--probe", str(root)])})
    for count in EAGER_SIZES:
        root = generate(f"scale-{count}", count, 256, 256)
        rows.append({"images": count, "path": "in-memory (before)", **_child(["--probe", str(root), "--eager"])})
    return rows


def _child(args: list[str]) -> dict:
    say(f"images: {' '.join(args)}")
    done = subprocess.run([PYTHON, __file__, *args], capture_output=True, text=True, timeout=3600)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------- (c): loader throughput and reduced decoding

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def torchvision_loader(root: Path, workers: int):
    """torchvision's reference training path: ImageFolder, ClassificationPresetTrain(crop_size=224)."""
    import torch
    import torchvision.transforms as T
    from torch.utils.data import DataLoader
    from torchvision.datasets import ImageFolder

    preset = T.Compose([T.RandomResizedCrop(224, interpolation=T.InterpolationMode.BILINEAR, antialias=True),
                        T.RandomHorizontalFlip(0.5), T.PILToTensor(), T.ConvertImageDtype(torch.float),
                        T.Normalize(MEAN, STD)])
    return DataLoader(ImageFolder(str(root), transform=preset), batch_size=BATCH, shuffle=True, num_workers=workers,
                      multiprocessing_context="forkserver", persistent_workers=True, drop_last=True)


def streamed_loader(root: Path, workers: int, reduce_jpeg: bool = True):
    from dataclasses import replace

    from compression.data import load_dataset

    bundle = load_dataset("image-folder", data_dir=str(root), image_size=224, val_per_class=1, loader_workers=workers)
    bundle.transform = replace(bundle.transform, reduce_jpeg=reduce_jpeg)
    return bundle.batches("train", BATCH, train=True, augment=True, seed=0)


def images_per_second(loader) -> float:
    """Steady state: the second pass over the folder (the first starts the workers)."""
    for epoch in (0, 1):
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        started, images = time.perf_counter(), 0
        for x, _ in loader:
            images += len(x)
    return images / (time.perf_counter() - started)


def throughput_runs(rounds: int = 1 if QUICK else 3) -> list[dict]:
    """Each loader in turn, `rounds` times, per source size; the median of each is reported."""
    import statistics

    rows = []
    for side in (256, 1024):
        root = generate(f"throughput-{side}-{THROUGHPUT_IMAGES}", THROUGHPUT_IMAGES, side,
                        side * 3 // 4 if side > 256 else side)
        makers = {"shrinkflow": lambda root=root: streamed_loader(root, 2),
                  "torchvision reference": lambda root=root: torchvision_loader(root, 2)}
        if side > 256:
            makers["shrinkflow, JPEG decoded at full size"] = lambda root=root: streamed_loader(root, 2,
                                                                                               reduce_jpeg=False)
        seen = {name: [] for name in makers}
        for _ in range(rounds):
            for name, make in makers.items():
                say(f"images: throughput, {side} px sources, {name}")
                seen[name].append(images_per_second(make()))
        base = statistics.median(seen["torchvision reference"])
        rows += [{"source_px": side, "loader": name, "images_per_s": statistics.median(v),
                  "over_torchvision": statistics.median(v) / base} for name, v in seen.items()]
    return rows


def accuracy_runs() -> list[dict]:
    """A short ResNet-18 training on a 1,024 px folder whose classes a short run can learn (the class
    sets the hue), JPEGs decoded reduced and at full size."""
    from dataclasses import replace

    import torch

    from compression.data import load_dataset
    from compression.fit_plan import FitPlan, train_on
    from compression.measure import evaluate_classifier
    from compression.models import build_model
    from compression.train_config import TrainConfig

    root = generate(f"accuracy-1024-{THROUGHPUT_IMAGES}", THROUGHPUT_IMAGES, 1024, 768, class_tint=True)
    rows = []
    for reduce_jpeg in (True, False):
        say(f"images: short training, reduced decoding {reduce_jpeg}")
        bundle = load_dataset("image-folder", data_dir=str(root), image_size=224, val_per_class=2 if QUICK else 10,
                              loader_workers=2)
        bundle.transform = replace(bundle.transform, reduce_jpeg=reduce_jpeg)
        torch.manual_seed(0)
        # ResNet-18: MobileNetV3's BatchNorm momentum (0.01) leaves its running statistics near their start after
        # a run this short, so it predicts one class in eval mode whatever the decoding.
        model = build_model("resnet18", CLASSES, 3, 224)
        cfg = TrainConfig(epochs=1 if QUICK else 3, batch_size=32, optimizer="adamw", lr=1e-3, augment=True,
                          weight_decay=0.01)
        started = time.perf_counter()
        train_on(model, bundle, cfg, FitPlan(), name=f"reduced={reduce_jpeg}")
        accuracy = evaluate_classifier(model, bundle.batches("test", 128))["accuracy"]
        n = len(bundle.test)
        rows.append({"reduced_decoding": reduce_jpeg, "test_accuracy": accuracy, "test_images": n,
                     "standard_error": math.sqrt(accuracy * (1 - accuracy) / n),
                     "seconds": time.perf_counter() - started})
    return rows


# ---------------------------------------------------------------- (d): DDP, (f): a 224 px pipeline

def ddp_runs() -> dict:
    """One process against two (gloo) on the 1,000-image folder at 96 px, BatchNorm frozen so they agree."""
    import copy

    import torch

    from compression.data import load_dataset
    from compression.fit_plan import FitPlan, train_on
    from compression.models import build_model
    from compression.train_config import TrainConfig
    from tasks.config import DistributedConfig
    from tasks.distributed import fit_distributed

    root = generate(f"scale-{SIZES[0]}", SIZES[0], 256, 256)
    bundle = load_dataset("image-folder", data_dir=str(root), image_size=96, val_per_class=10, loader_workers=2)
    torch.manual_seed(0)
    model = build_model("resnet18", CLASSES, 3, 96)
    # frozen BatchNorm from scratch has no normalisation at all: a small rate keeps the loss finite
    cfg = TrainConfig(epochs=2, batch_size=32, optimizer="sgd", lr=0.005, augment=True, freeze_norm=True)
    one, two = copy.deepcopy(model), copy.deepcopy(model)
    say("images: DDP, one process")
    alone = train_on(one, bundle, cfg, FitPlan(), name="one process")
    say("images: DDP, two processes")
    work = WORK / "images-ddp"
    together = fit_distributed(DistributedConfig(processes_per_node=2), None, two, bundle, cfg, FitPlan(), None,
                               "train", work / "checkpoints", "two processes", "")
    largest = max((a - b).abs().max().item() for a, b in zip(one.state_dict().values(), two.state_dict().values())
                  if a.is_floating_point())
    return {"images": len(bundle.train), "epoch_seconds_one": [r["epoch_time"] for r in alone.history],
            "epoch_seconds_two": [r["epoch_time"] for r in together.history], "largest_weight_difference": largest,
            "val_acc_one": alone.best_val_accuracy, "val_acc_two": together.best_val_accuracy}


def pipeline_run() -> dict:
    """configs/imagenet-resnet18.yaml (from scratch: no weights here) on the small folder, capped per class."""
    use_prefect_env("images-pipeline")
    from mlflow.tracking import MlflowClient

    from bench.common import fresh_store
    from flows.compress import compress

    work = WORK / "images-pipeline"
    uri = fresh_store(work)
    root = generate(f"scale-{SIZES[0]}", SIZES[0], 256, 256)
    started = time.perf_counter()
    result = compress("configs/imagenet-resnet18.yaml", {
        "tracking.uri": uri, "output_dir": str(work / "outputs"), "source": "scratch:resnet18",
        "data.data_dir": str(root), "data.train_per_class": 8 if QUICK else 30, "data.val_per_class": 5,
        "data.test_per_class": 10, "finetune.freeze_epochs": 0, "finetune.train.epochs": 1,
        "distill.train.epochs": 1, "prune.train.epochs": 1, "prune.iterative_steps": 1, "quantize.enabled": True,
        "quantize.calibration_size": 32, "export.onnx": True, "evaluate.speed_rounds": 1,
        # BENCH_QUICK=1: the quick measurement settings, and no occlusion maps (at 224 px, one image is ~170
        # forward passes per model; the other quick pipelines draw them at 28 px)
        **({**{k: v for k, v in QUICK_PIPELINE.items() if k.startswith(("evaluate.", "fidelity."))},
            "fidelity.attribution_images": 0} if QUICK else {})})
    wall = time.perf_counter() - started
    client = MlflowClient(uri)
    parent = client.get_run(result["run_id"])
    stages = []
    for key, run_id in sorted(parent.data.tags.items()):
        if key.startswith("stage.") and key.endswith(".run_id") and run_id:
            run = client.get_run(run_id)
            shares = [v for k, v in run.data.metrics.items() if k.endswith("loader_share")]
            stages.append({"stage": key[6:-7], "seconds": (run.info.end_time - run.info.start_time) / 1000,
                           "loader_share": sum(shares) / len(shares) if shares else None,
                           "start": run.info.start_time})
    stages.sort(key=lambda s: s["start"])
    return {"wall_seconds": wall, "stages": stages, "train_images": 10 * (8 if QUICK else 30)}


def _demo_commands(name: str, outputs: Path) -> list[list[str]]:
    """What `shrinkflow demo` runs, its outputs in `outputs` (never the checkout's own outputs/, which holds the
    user's cache). The fidelity stage came after streaming (it is timed in bench/fidelity.py): it is left out
    of this code's run, so the two runs do the same work."""
    settings = ["--set", f"output_dir={outputs}"] + (["--set", "fidelity.enabled=false"] if name == "after" else [])
    if QUICK:  # the quick settings both commits know (the earlier one has no fidelity stage)
        settings += [arg for key, value in QUICK_PIPELINE.items() if not key.startswith("fidelity.")
                     for arg in ("--set", f"{key}={json.dumps(value)}")]
    return [["run", "configs/pretrain.yaml", "--flow", "pretrain", *settings],
            ["run", "configs/quickstart.yaml", *settings]]


def demo_before_and_after(commit: str, rounds: int = 1 if QUICK else 3) -> dict:
    """(e) the demo of `commit` (a worktree) and of this checkout, in turn, each on a fresh store and outputs."""
    import shutil
    import statistics

    from tasks.config import PROJECT_ROOT

    before = WORK / "demo-before"
    if not before.exists():
        # `make clean` deletes bench/.work but git still lists the worktree, and then refuses to add it again
        subprocess.run(["git", "worktree", "prune"], cwd=PROJECT_ROOT, check=True)
        subprocess.run(["git", "worktree", "add", "--detach", str(before), commit], cwd=PROJECT_ROOT, check=True)
    seconds = {"before": [], "after": []}
    for _ in range(rounds):
        for name, root in (("before", before), ("after", PROJECT_ROOT)):
            store = WORK / f"demo-{name}-store"
            shutil.rmtree(store, ignore_errors=True)
            store.mkdir(parents=True)
            env = {**os.environ, "PREFECT_HOME": str(store / "prefect"), "GIT_PYTHON_REFRESH": "quiet",
                   "MLFLOW_TRACKING_URI": f"sqlite:///{store / 'mlflow.db'}"}
            env.pop("PREFECT_API_URL", None)
            say(f"images: the demo, {name} ({commit if name == 'before' else 'this checkout'})")
            started = time.perf_counter()
            for command in _demo_commands(name, store / "outputs"):
                subprocess.run([PYTHON, "-m", "cli", *command], cwd=root, env=env, check=True, capture_output=True)
            seconds[name].append(time.perf_counter() - started)
    return {"commit_before": commit, "seconds": seconds,
            "ratio": statistics.median(seconds["after"]) / statistics.median(seconds["before"])}


DEMO_BASELINE = "936afee"  # the last commit with the in-memory image folder path
SECTION = "## 11. Image folders at real scale: memory, start-up, loader throughput, DDP"


def _median_by(rows: list[dict], keys: tuple[str, str], value: str) -> dict:
    import statistics

    grouped: dict = {}
    for row in rows:
        grouped.setdefault((row[keys[0]], row[keys[1]]), []).append(row[value])
    return {k: statistics.median(v) for k, v in grouped.items()}


def _scale_lines(r: dict) -> list[str]:
    from bench.report import goal, table

    small, large = (200, 1_000) if r.get("quick") else (1_000, 20_000)
    rss = _median_by(r["scale"], ("path", "images"), "peak_rss_mb")
    first = _median_by(r["scale"], ("path", "images"), "first_batch_s")
    rows = [{**row} for row in r["scale"]]
    growth = rss[("streamed", large)] - rss[("streamed", small)]
    ratio = first[("streamed", large)] / first[("streamed", small)]
    return [
        "(a), (b): one process per run lists the folder (224 px crops of 256 px JPEGs, 10 classes) and takes one "
        "epoch of training batches of 64 through the loader with 2 workers (three ResNet-18 steps on 8 images of a "
        "batch, then decoding alone); peak RSS of the process, PSS (shared pages split) with its fork server and "
        "workers; the path before streaming decodes every image into one tensor first.", "",
        table(rows, [("path", "path", ""), ("images", "images", "{:,}"), ("first_batch_s", "first batch s", "{:.2f}"),
                     ("epoch_s", "epoch s", "{:.1f}"), ("peak_rss_mb", "peak RSS MB", "{:,.0f}"),
                     ("peak_pss_with_workers_mb", "PSS with workers MB", "{:,.0f}")]), "",
        f"- (a) memory: {large:,} images take {growth:+.0f} MB of peak RSS over {small:,} (medians; goal at most "
        f"+64 MB: {goal(growth <= 64)}).",
        f"- (b) time to the first batch: {ratio:.2f}x from {small:,} to {large:,} images (goal at most 1.5x: "
        f"{goal(ratio <= 1.5)}).", ""]


def _throughput_lines(r: dict) -> list[str]:
    from bench.report import goal, table

    at = {(row["source_px"], row["loader"]): row["over_torchvision"] for row in r["throughput"]}
    accuracy = r["accuracy"]
    gap = abs(accuracy[0]["test_accuracy"] - accuracy[1]["test_accuracy"])
    noise = 2 * math.hypot(accuracy[0]["standard_error"], accuracy[1]["standard_error"])
    return [
        "(c) loader throughput, 2 workers each, batches of 64 at 224 px with RandomResizedCrop and flip, the "
        "second pass over 1,000 images (the first starts the workers), median of the rounds: shrinkflow's streamed "
        "batches (normalised float, as training gets them) against torchvision's ImageFolder + DataLoader with its "
        "reference training preset (ClassificationPresetTrain).", "",
        table(r["throughput"], [("source_px", "source px", ""), ("loader", "loader", ""),
                                ("images_per_s", "images/s", "{:,.0f}"),
                                ("over_torchvision", "x torchvision", "{:.2f}x")]), "",
        f"- 256 px sources: {at[(256, 'shrinkflow')]:.2f}x torchvision (goal at least 0.95x: "
        f"{goal(at[(256, 'shrinkflow')] >= 0.95)}); 1,024 px JPEGs: {at[(1024, 'shrinkflow')]:.2f}x (goal at least "
        f"1.5x: {goal(at[(1024, 'shrinkflow')] >= 1.5)}), {at[(1024, 'shrinkflow, JPEG decoded at full size')]:.2f}x "
        "without reduced decoding.",
        "- A short training run of ResNet-18 (from scratch) on a 1,024 px folder whose class also sets the "
        "hue (stripe angles alone do not survive flips), JPEGs decoded reduced and at full size: test accuracy "
        + ", ".join(
            f"{'reduced' if a['reduced_decoding'] else 'full size'} {a['test_accuracy']:.4f} "
            f"(+/- {a['standard_error']:.4f}, {a['test_images']} images, {a['seconds']:.0f} s)" for a in accuracy)
        + f"; the difference {gap:.4f} against twice the combined standard error {noise:.4f}: "
        + ("within noise." if gap <= noise else "**outside noise**."), ""]


def _ddp_lines(r: dict) -> list[str]:
    d = r["ddp"]
    return [f"(d) data-parallel training, ResNet-18 at 96 px on {d['images']} images, BatchNorm frozen, batch 32: "
            f"epoch seconds with one process {', '.join(f'{s:.1f}' for s in d['epoch_seconds_one'])}, with two "
            f"processes (gloo) {', '.join(f'{s:.1f}' for s in d['epoch_seconds_two'])} on this 2-core machine (each "
            "process gets one core; no speed-up is expected here, the point is that it runs and agrees: the largest "
            f"weight difference after two epochs is {d['largest_weight_difference']:.1e}, val accuracy "
            f"{d['val_acc_one']:.4f} and {d['val_acc_two']:.4f}).", ""]


def _pipeline_lines(r: dict) -> list[str]:
    from bench.report import goal, table

    p, lines = r["pipeline"], []
    if "demo" in r:
        demo = r["demo"]
        seconds = {k: ", ".join(f"{v / 60:.2f}" for v in vs) for k, vs in demo["seconds"].items()}
        lines += [f"(e) the demo (pretrain, then quickstart, on a fresh store and outputs; this code without the "
                  "fidelity stage, "
                  f"which came later and is timed in section 12), {demo['commit_before']} (before streaming) "
                  f"and this code in turn: minutes {seconds['before']} against {seconds['after']}; median ratio "
                  f"{demo['ratio']:.3f} (goal at most 1.05: {goal(demo['ratio'] <= 1.05)}).", ""]
    rows = [{**s, "loader_share": None if s["loader_share"] is None else 100 * s["loader_share"]} for s in p["stages"]]
    return lines + [
        f"(f) `configs/imagenet-resnet18.yaml` from scratch on the 1,000-image folder at 224 px, "
        f"{p['train_images']} training images, one epoch per training stage, int8 and ONNX on: "
        f"{p['wall_seconds']:.0f} s "
        "in all; each stage's MLflow run time and, for training stages, the mean loader share of their epochs (the "
        "fidelity stage scores every candidate on every corrupted and occluded image at 224 px: with one epoch of "
        "training it dominates here; its share of the demo's time is in section 12):", "",
        table(rows, [("stage", "stage", ""), ("seconds", "seconds", "{:.1f}"),
                     ("loader_share", "loader %", "{:.0f}%")]),
        ""]


def section(r: dict) -> list[str]:
    """The docs/benchmarks.md section for bench/results/images.json."""
    quick = "BENCH_QUICK tiny workloads: not results; " if r.get("quick") else ""
    parts = (f"; parts not rerun by `--only` measured at {r['other_parts_commit']}" if r.get("other_parts_commit")
             else "")
    return [SECTION, "", f"`python bench/images.py` ({quick}finished {r.get('finished', '?')} at "
            f"{r.get('git_commit', '?')}{parts}), on JPEG folders it generates (stripes at the class's angle, a tint, "
            "noise).", "",
            *_scale_lines(r), *_throughput_lines(r), *_ddp_lines(r), *_pipeline_lines(r)]


PARTS = {"scale": lambda: scale_runs(), "throughput": lambda: throughput_runs(), "accuracy": lambda: accuracy_runs(),
         "ddp": lambda: ddp_runs(), "pipeline": lambda: pipeline_run(),
         "demo": lambda: demo_before_and_after(DEMO_BASELINE)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--probe", metavar="FOLDER", help=argparse.SUPPRESS)
    parser.add_argument("--eager", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--skip-demo", action="store_true", help="leave out (e), the demo runs of both commits")
    parser.add_argument("--only", metavar="PART,...", help=f"run these parts ({', '.join(PARTS)}) and replace them "
                        "in bench/results/images.json, keeping the others (their commit is noted)")
    args = parser.parse_args()
    if args.probe:
        print(json.dumps(probe(args.probe, args.eager)))
        return
    parts = args.only.split(",") if args.only else [p for p in PARTS if p != "demo" or not args.skip_demo]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        parser.error(f"--only: unknown part {unknown[0]!r}; parts: {', '.join(PARTS)}")
    kept = kept_parts(parser, "images", parts, PARTS) if args.only else {}
    results = {part: PARTS[part]() for part in parts}
    save("images", {**kept, **results, "command": "python bench/images.py"})


if __name__ == "__main__":
    main()

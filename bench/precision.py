"""Training precision on this CPU: float32 against bf16 autocast (`train.amp: bf16`), side by side in one run.

The same training steps (`compression.training.train_one_epoch`, AdamW, real Fashion-MNIST images) for each
model below, float32 and bf16 alternating round by round, so the ratio of each round is measured under the same
machine load; the table gives the medians. Where the CPU has no native bf16 the script says so and stops (the
setting is refused there). The models: ResNet-18 as a 28 px run builds it, with torchvision's stem and with
`model.stem: no-pool`; the no-pool model trimmed to one block per stage (the student section 7 (e) distils);
that student pruned to about 110,000 parameters (what (e)'s trials recover); ResNet-18 on 224 px RGB images
(the real-scale case, the same pictures resized).
"""

from __future__ import annotations

import copy
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import QUICK, save, say

BATCH = 128
STEPS = 2 if QUICK else 8  # steps per measurement
ROUNDS = 1 if QUICK else 3
SECTION = "## 13. Training precision on CPU: float32 against bf16"


def _split(size: int, channels: int, count: int):
    """`count` real training images at `size` px with `channels` channels, as a Split."""
    import torch.nn.functional as F

    from compression.data import Split, load_dataset

    train = load_dataset(train_per_class=count // 10 + 1, val_per_class=1, test_per_class=1, seed=0).train
    images, labels = train.images[:count], train.labels[:count]
    if size != images.shape[-1]:
        images = F.interpolate(images.float(), size=(size, size), mode="bilinear").round().clamp(0, 255).byte()
    return Split(images.expand(-1, channels, -1, -1).contiguous(), labels, train.classes)


def _models() -> list[tuple[str, object, int, int, int]]:
    """(label, model, image size, channels, batch size) of each row."""
    import torch

    from compression.models import build_model, count_params
    from compression.pruning import prune_structured
    from compression.trimming import trim

    torch.manual_seed(0)
    student = trim(build_model("resnet18", 10, 1, 28, stem="no-pool"), 1)
    pruned = copy.deepcopy(student)
    prune_structured(pruned, torch.randn(1, 1, 28, 28), 0.85, iterative_steps=1, round_to=8)
    return [("ResNet-18, torchvision stem, 28 px", build_model("resnet18", 10, 1, 28), 28, 1, BATCH),
            ("ResNet-18, no-pool stem, 28 px", build_model("resnet18", 10, 1, 28, stem="no-pool"), 28, 1, BATCH),
            ("its student: one block per stage", student, 28, 1, BATCH),
            (f"that student pruned to {count_params(pruned):,} params", pruned, 28, 1, BATCH),
            ("ResNet-18, 224 px RGB", build_model("resnet18", 10, 3, 224), 224, 3, 32)]


def _measure(model, split, batch: int) -> dict:
    """Median images/s of float32 and bf16 training steps over the rounds, and the median paired ratio."""
    import torch

    from compression.data import Batches
    from compression.training import cross_entropy, precision_for, train_one_epoch

    cpu = torch.device("cpu")
    optimizer = torch.optim.AdamW(model.parameters(), 1e-3)
    batches = Batches(split, batch, [0.5], [0.25], shuffle=True, augment=False)
    loss = cross_entropy()
    rates = {"fp32": [], "bf16": []}
    for round_ in range(ROUNDS + 1):  # round 0 warms both paths up and is not counted
        for name, precision in (("fp32", precision_for(cpu, False)), ("bf16", precision_for(cpu, "bf16"))):
            row = train_one_epoch(model, batches, loss, optimizer, cpu, precision=precision)
            if round_:
                rates[name].append(row["images_per_s"])
    ratios = [b / f for f, b in zip(rates["fp32"], rates["bf16"])]
    return {"fp32_images_per_s": statistics.median(rates["fp32"]),
            "bf16_images_per_s": statistics.median(rates["bf16"]), "bf16_over_fp32": statistics.median(ratios)}


def main() -> None:
    import torch

    from compression.models import count_params
    from compression.training import native_bf16

    if not native_bf16(torch.device("cpu")):
        say("precision: this CPU has no native bf16 (AVX512-BF16 or AMX); train.amp: bf16 is refused here")
        return
    rows, cores = [], torch.get_num_threads()
    for label, model, size, channels, batch in _models():
        split = _split(size, channels, batch * STEPS)
        for threads in sorted({1, cores}):  # 1: as each of a search's trials trains on a 2-core machine
            torch.set_num_threads(threads)
            rows.append({"model": label, "params": count_params(model), "image_size": size, "batch_size": batch,
                         "threads": threads, **_measure(model.train(), split, batch)})
            say(f"precision: {label}, {threads} threads: bf16 {rows[-1]['bf16_over_fp32']:.2f}x float32")
        torch.set_num_threads(cores)
    save("precision", {"rows": rows, "steps": STEPS, "rounds": ROUNDS,
                       "command": "python bench/precision.py"})


def section(results: dict) -> list[str]:
    """The docs/benchmarks.md section for bench/results/precision.json."""
    from bench.report import table

    return [SECTION, "",
            f"`python bench/precision.py`: {results['steps']} training steps per measurement (AdamW, real "
            f"Fashion-MNIST images), float32 and bf16 autocast alternating for {results['rounds']} rounds after a "
            "warm-up round, on one thread and on all of them; medians, and the median of each "
            "round's paired ratio. bf16 is `train.amp: bf16` (refused on a CPU without native bf16); the default "
            "(`amp: true`) trains in float32 on CPU.", "",
            table(results["rows"], [("model", "model", ""), ("params", "params", "{:,}"),
                                    ("image_size", "px", "{}"), ("batch_size", "batch", "{}"),
                                    ("threads", "threads", "{}"),
                                    ("fp32_images_per_s", "float32 images/s", "{:,.0f}"),
                                    ("bf16_images_per_s", "bf16 images/s", "{:,.0f}"),
                                    ("bf16_over_fp32", "bf16 / float32", "{:.2f}x")]), ""]


if __name__ == "__main__":
    main()

"""quantize: post-training int8 copies of the final float student, each checked against it on the val split.

A quantized model whose val accuracy falls further than quantize.max_accuracy_drop below the float model's
is logged (metrics, tag) but not offered as a candidate, so it can never be registered.
"""

from __future__ import annotations

import logging
from itertools import islice

from compression import candidates
from compression.budget import int8_rejection
from compression.measure import evaluate_classifier
from compression.models import example_input, input_channels
from compression.quantization import quantize as quantize_model
from tasks.config import PipelineConfig
from tasks.data import get_bundle
from tasks.outputs import Quantized
from tasks.stage import stage_task
from tasks.training import load, save_candidate

log = logging.getLogger("shrinkflow")


def calibration_batches(cfg: PipelineConfig, bundle, channels: int) -> list:
    """The training images static int8 is calibrated on (torch's and onnxruntime's alike): shuffled (seeded)
    so that the observers see every class, not the first ones of a class-sorted split."""
    size = cfg.quantize.calibration_size
    batch = min(64, size)
    shuffled = bundle.batches("train", batch, train=True, seed=cfg.seed, channels=channels)
    return [x for x, _ in islice(shuffled, -(-size // batch))]


@stage_task("quantize", sections=("quantize",))
def quantize(cfg: PipelineConfig, ctx, run, workdir, data: dict, model: dict) -> Quantized:
    bundle = get_bundle(cfg, data)
    settings = cfg.quantize
    float_model = load(model)
    channels = input_channels(float_model)
    calibration = calibration_batches(cfg, bundle, channels)
    example = example_input(float_model, size=bundle.input_size)
    val = bundle.batches("val", cfg.data.eval_batch_size, channels=channels)
    float_acc = evaluate_classifier(float_model, val)["accuracy"]
    run.log_metrics({"float_val_accuracy": float_acc, "calibration_images": sum(len(x) for x in calibration)})
    made = {}
    for mode in settings.modes:
        quantized = quantize_model(float_model, mode, example, calibration if mode == "static" else None,
                                   settings.backend)
        acc = evaluate_classifier(quantized, val)["accuracy"]
        drop = float_acc - acc
        run.log_metrics({"val_accuracy": acc, "val_accuracy_drop": drop}, prefix=f"{mode}.")
        if (rejected := int8_rejection(float_acc, acc, settings.max_accuracy_drop)) is not None:
            log.warning("[quantize] %s int8 model loses %.2f points on val (limit %.2f): not a candidate",
                        mode, 100 * drop, 100 * settings.max_accuracy_drop)
            run.set_tags({f"{mode}.rejected": rejected})
            continue
        made[mode] = save_candidate(run, quantized, workdir, candidates.quantized(mode), bundle, val_accuracy=acc,
                                      source_sha256=model["sha256"])
    return Quantized(**made)

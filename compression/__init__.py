"""Pure PyTorch core of shrinkflow. Nothing in this package imports prefect or mlflow; the orchestration and
tracking layers live in `tasks/` and `flows/`.

Modules:
- `data`: datasets as in-memory uint8 tensors, seeded splits, fast batches, `to_model_input` normalisation.
- `models`: torchvision classifiers adapted to channels, input size and classes; the `shrinkflow_spec`
  helpers (`model_spec`, `example_input`, `quantization_info`, ...) and `count_params`.
- `training`: the one train/evaluate engine (`fit`, `train_one_epoch`), seeded and resumable.
- `train_config`: the training settings every stage shares (no torch import: configs validate without it).
- `transfer`: head-first fine-tuning of a pretrained model.
- `distillation`: knowledge distillation loss (Hinton et al., 2015).
- `trimming`: depth trimming, dropping whole residual blocks.
- `pruning`: unstructured magnitude pruning and structured channel pruning (Torch-Pruning).
- `quantization`: post-training int8 (static and dynamic) for CPU.
- `export`: ONNX export, parity with PyTorch and onnxruntime speed.
- `measure`: accuracy, parameters, MACs, size and CPU speed, interleaved timing rounds.
- `comparison`: candidates against each other: ratios to the teacher, KD gain, int8 speed verdicts.
- `selection`: which candidate to register, by accuracy budget and cost objective.
- `checkpoint`: the model file (spec + tensors, loadable with weights_only) and its sha256.
- `fileio`: atomic file writes.
- `search`: the budgeted search's pure core: budgets, search spaces, constructibility.
- `inference`: a model as a client sees it: images in, the dataset's labels and probabilities out.
- `onnx_runtime`: onnxruntime's int8 (QDQ) quantizer and the accuracy of an ONNX file.
"""

import atexit
import gc

# torch, torchvision, Prefect and MLflow leave a great many objects alive at exit, and the interpreter's
# teardown garbage-collects them pass after pass: seconds per process (docs/benchmarks.md, start-up; every CLI
# command, deployment flow run and Dask worker imports this package). Frozen at exit, they are freed without
# those passes. Exit handlers that run after this one (atexit runs the latest registered first) work as
# before: freezing only exempts the objects alive at that moment from garbage collection.
atexit.register(gc.freeze)


class CompressionError(ValueError):
    """A bad input or an impossible request, reported to the user as one line."""


def first_line(exc: BaseException) -> str:
    """An exception as one line: its message's first line, or its type when the message is empty."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__

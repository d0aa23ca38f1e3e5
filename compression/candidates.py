"""The candidates' names, one set for every layer: what each stage calls the models it makes, and what the
comparison, the choice of the model to register, the search, the fidelity report and stability look them
up by."""

from __future__ import annotations

TEACHER = "teacher"  # the fine-tuned (or fetched) reference every other candidate is compared with
STUDENT_KD = "student_kd"  # distilled from the teacher
STUDENT_PLAIN = "student_plain"  # the same student trained on labels alone (the KD gain's baseline)
PRUNED = "pruned"  # structured pruning: channels removed
SPARSE = "sparse"  # unstructured pruning: weights zeroed


def quantized(mode: str) -> str:
    """The int8 candidate of a quantization mode ("static", "dynamic")."""
    return f"quantized_{mode}"


QUANTIZED_STATIC = quantized("static")  # the int8 model an int8 ONNX export stands beside

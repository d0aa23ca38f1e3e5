"""The accuracy budget, checked in one place: registration's choice, the search's feasibility and ranking, its
figure, the int8 gates (PyTorch and onnxruntime) and the quality gates all ask these two questions."""

from __future__ import annotations

# Accuracies and figures are float32 means and ratios, logged and read back: a tie with the limit must not fail
# on the last bit.
TOLERANCE = 1e-9


def within_drop(accuracy: float, reference_accuracy: float, max_drop: float) -> bool:
    """Whether `accuracy` is at most `max_drop` below `reference_accuracy` (a tie passes)."""
    return accuracy >= reference_accuracy - max_drop - TOLERANCE


def within_limit(excess: float) -> bool:
    """Whether a figure's excess over its limit (value - limit for a maximum) is none (a tie passes)."""
    return excess <= TOLERANCE


def int8_rejection(float_accuracy: float, int8_accuracy: float, max_drop: float) -> str | None:
    """None when an int8 model keeps within `max_drop` of the float model it was made from (val accuracy), else
    why it is not used: the gate of PyTorch int8 (quantize) and of onnxruntime int8 (export) alike."""
    if within_drop(int8_accuracy, float_accuracy, max_drop):
        return None
    return f"val accuracy drop {float_accuracy - int8_accuracy:.4f} > {max_drop}"

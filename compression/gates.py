"""Quality gates of the @champion alias: limits on what compression changed, read from a candidate's
evaluation row once the fidelity report's figures are merged into it (`compression.comparison.with_fidelity`).

A gate is named by its config key (`register.gates.<name>`), reads one figure of the row and passes when the
figure is within its limit. A figure the row lacks fails the gate: an unmeasured model is not promoted.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from compression import CompressionError
from compression.budget import within_limit


@dataclass(frozen=True)
class Gate:
    """One gate: how to read its figure from a row, whether the limit is a maximum, how to show the figure."""

    figure: Callable[[dict], float | None]
    is_maximum: bool
    what: str  # the figure in words, for the one-line verdict
    show: Callable[[float], str]


def _get(key: str) -> Callable[[dict], float | None]:
    return lambda row: row.get(key)


def _ece_increase(row: dict) -> float | None:
    candidate, teacher = row.get("calibration.ece_scaled"), row.get("calibration.ece_scaled_reference")
    return None if candidate is None or teacher is None else candidate - teacher


def _points(value: float) -> str:
    return f"{100 * value:.2f} points"


def _count(value: float) -> str:
    return f"{value:.0f}"


def _ratio(value: float) -> str:
    return f"{value:.3f}x"


def _share(value: float) -> str:
    return f"{100 * value:.2f}%"


GATES: dict[str, Gate] = {
    "max_drop_ci_high": Gate(_get("fidelity.drop_ci_high"), True, "upper end of the 95% interval of the accuracy drop",
                             _points),
    "max_images_lost": Gate(_get("fidelity.lost"), True, "test images lost", _count),
    "max_class_drop": Gate(_get("fidelity.max_class_drop"), True, "largest per-class accuracy drop", _points),
    "max_ece_increase": Gate(_ece_increase, True, "ECE after temperature scaling above the teacher's", _points),
    "max_relative_corruption_error": Gate(_get("robustness.relative_error"), True,
                                          "corruption error relative to the teacher's", _ratio),
    "min_agreement": Gate(_get("fidelity.agreement"), False, "top-1 agreement with the teacher", _share),
}


def check_gates(row: dict, limits: dict[str, float]) -> list[dict]:
    """One result per gate in `limits` ({name: limit}, the gates that are set), in GATES order:
    {"gate", "value" (None: not measured), "limit", "passed", "excess" (how far past the limit; 0 if passed)}."""
    unknown = sorted(set(limits) - set(GATES))
    if unknown:
        raise CompressionError(f"unknown gate {unknown[0]!r}; known: {', '.join(GATES)}")
    results = []
    for name, gate in GATES.items():
        if name not in limits:
            continue
        limit, value = float(limits[name]), gate.figure(row)
        if value is None or not math.isfinite(value):
            results.append({"gate": name, "value": None, "limit": limit, "passed": False, "excess": None})
            continue
        excess = value - limit if gate.is_maximum else limit - value
        passed = within_limit(excess)
        results.append({"gate": name, "value": float(value), "limit": limit, "passed": passed,
                        "excess": 0.0 if passed else float(excess)})
    return results


def passes(row: dict, limits: dict[str, float]) -> bool:
    return all(result["passed"] for result in check_gates(row, limits))


def describe(result: dict) -> str:
    """One gate result in words: "max_images_lost failed: test images lost 9, limit 0 (over by 9)"."""
    gate = GATES[result["gate"]]
    limit = gate.show(result["limit"])
    if result["value"] is None:
        return f"{result['gate']} failed: {gate.what} was not measured (limit {limit})"
    value = gate.show(result["value"])
    if result["passed"]:
        return f"{result['gate']} passed: {gate.what} {value}, limit {limit}"
    side = "over" if gate.is_maximum else "under"
    return f"{result['gate']} failed: {gate.what} {value}, limit {limit} ({side} by {gate.show(result['excess'])})"


def gate_tags(results: list[dict]) -> dict[str, str]:
    """Model version and run tags: `gate.<name>` = "passed (value, limit)" or "failed (value, limit, by ...)"."""
    tags = {}
    for result in results:
        gate = GATES[result["gate"]]
        value = "not measured" if result["value"] is None else gate.show(result["value"])
        verdict = "passed" if result["passed"] else "failed"
        by = "" if result["passed"] or result["excess"] is None else f", by {gate.show(result['excess'])}"
        tags[f"gate.{result['gate']}"] = f"{verdict} ({value}, limit {gate.show(result['limit'])}{by})"
    return tags

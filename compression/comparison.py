"""How candidates compare, from their evaluation rows (one dict per candidate, as `evaluate` makes them):
ratios against a reference model, what distillation gained, and whether an int8 model is faster than the
float model it was made from."""

from __future__ import annotations

from typing import Required, TypedDict

from compression.candidates import STUDENT_KD, STUDENT_PLAIN, TEACHER

# Two identical models differ by up to this factor in speed on a shared CPU: within it is not a speed-up.
SPEED_MARGIN = 1.1
# A file at least this many times smaller is reported as smaller.
SIZE_MARGIN = 1.05


class EvaluationRow(TypedDict, total=False):
    """One candidate as the evaluate stage measured it on the test split; the one row type every consumer reads
    (the comparison table, the report, registration, the search's pick, the plots). Later stages add to a copy:
    the ONNX figures (`onnx_*`, tasks/export.with_onnx), the fidelity figures under their own dotted names
    (`fidelity.agreement`, `calibration.ece_scaled`, ..., see `with_fidelity`) and the ratios (`with_ratios`)."""

    candidate: Required[str]
    accuracy: Required[float]
    params: Required[int]
    nonzero_params: Required[int]
    macs: Required[int]
    size_bytes: Required[int]  # the model file as shipped (compression.measure.file_size)
    latency_p50_ms: float
    latency_p95_ms: float
    throughput_ips: float
    sha256: Required[str]
    path: Required[str]
    stage_run_id: Required[str]
    source_sha256: str | None  # an int8 model's float parent
    onnx_latency_p50_ms: float
    onnx_throughput_ips: float
    onnx_accuracy: float
    onnx_path: str
    onnx_format: str
    accuracy_drop: float
    params_x: float
    macs_x: float
    speedup: float


def evaluation_row(candidate: str, accuracy: float, costs: dict, *, sha256: str, path: str, stage_run_id: str,
                   source_sha256: str | None = None) -> EvaluationRow:
    """A row from a candidate's test accuracy, its cost figures (compression.measure.profile plus size_bytes)
    and the file it was measured from."""
    return EvaluationRow(candidate=candidate, accuracy=accuracy, **costs, sha256=sha256, path=path,
                         stage_run_id=stage_run_id, source_sha256=source_sha256)


def reference_row(rows: list[EvaluationRow], reference: str = TEACHER) -> EvaluationRow:
    """The row of the candidate named `reference`, else the first row."""
    return next((row for row in rows if row["candidate"] == reference), rows[0])


def with_ratios(rows: list[EvaluationRow], reference: str = TEACHER) -> list[EvaluationRow]:
    """Copies of the rows with accuracy_drop, params_x, macs_x (how many times smaller) and speedup
    (throughput, how many times faster) against the reference."""
    ref = reference_row(rows, reference)
    return [{**row,
             "accuracy_drop": ref["accuracy"] - row["accuracy"],
             "params_x": ref["params"] / row["params"],
             "macs_x": ref["macs"] / row["macs"],
             "speedup": row["throughput_ips"] / ref["throughput_ips"]} for row in rows]


def kd_gain(rows: list[EvaluationRow]) -> float | None:
    """Test accuracy of the KD student minus the same student trained without KD; None without both."""
    acc = {r["candidate"]: r["accuracy"] for r in rows}
    if STUDENT_KD in acc and STUDENT_PLAIN in acc:
        return acc[STUDENT_KD] - acc[STUDENT_PLAIN]
    return None


def speed_word(gain: float) -> str:
    """'faster', 'slower' or 'about as fast' for a speed ratio (above 1: faster)."""
    return "faster" if gain > SPEED_MARGIN else "slower" if gain < 1 / SPEED_MARGIN else "about as fast"


def _speed_note(row: dict, source: dict) -> str:
    throughput = row["throughput_ips"] / source["throughput_ips"]
    latency = source["latency_p50_ms"] / row["latency_p50_ms"]
    smaller = source["size_bytes"] / row["size_bytes"]
    size = f"file {smaller:.1f}x smaller" if smaller >= SIZE_MARGIN else "file about the same size"
    return (f"{row['candidate']} against {source['candidate']} (the float model it was made from): "
            f"{speed_word(latency)} at batch 1, {speed_word(throughput)} in throughput on this CPU; "
            f"throughput {throughput:.2f}x, latency p50 {row['latency_p50_ms']:.2f} vs "
            f"{source['latency_p50_ms']:.2f} ms, {size}.")


def speed_notes(rows: list[EvaluationRow]) -> list[str]:
    """One measured sentence per candidate made from another one in the rows (int8 from its float source,
    found by `source_sha256`): faster or not, at batch 1 and in throughput, and how much smaller its file is."""
    by_sha = {r["sha256"]: r for r in rows}
    return [_speed_note(row, by_sha[row["source_sha256"]]) for row in rows if row.get("source_sha256") in by_sha]


def with_fidelity(rows: list[EvaluationRow], figures: dict[str, dict], sentences: dict[str, list[str]],
                  method: str) -> list[EvaluationRow]:
    """Copies of evaluation rows with each candidate's fidelity figures (`figures[candidate]`: {"reference":
    {...}, "parent": {...} or None}): against the reference under their own names ("fidelity.agreement",
    "calibration.ece_scaled", ...), against an int8 model's float parent with a "parent." prefix, its "what
    changed" `sentences` under "what_changed" and how they were measured (`method`) under "fidelity.method"."""
    merged = []
    for row in rows:
        pair = figures.get(row["candidate"])
        if pair is None:
            merged.append(row)
            continue
        parent = {f"parent.{key}": value for key, value in (pair.get("parent") or {}).items()}
        extra = {"what_changed": sentences[row["candidate"]]} if row["candidate"] in sentences else {}
        merged.append({**row, **pair["reference"], **parent, **extra, "fidelity.method": method})
    return merged


# Fidelity figures as comparison-table columns: {column: key of the merged evaluation row}.
FIDELITY_COLUMNS = {"agreement": "fidelity.agreement", "drop_ci_low": "fidelity.drop_ci_low",
                    "drop_ci_high": "fidelity.drop_ci_high", "lost": "fidelity.lost", "gained": "fidelity.gained",
                    "max_class_drop": "fidelity.max_class_drop", "ece": "calibration.ece",
                    "ece_scaled": "calibration.ece_scaled", "corruption_error_x": "robustness.relative_error",
                    "attribution_rho": "attribution.spearman", "parent_agreement": "parent.fidelity.agreement"}
# The figures a pipeline run carries per candidate (`<candidate>.<figure>`), which `shrinkflow compare` lists.
SUMMARY_FIGURES = ("fidelity.agreement", "fidelity.drop_ci_high", "fidelity.lost", "fidelity.max_class_drop",
                   "calibration.ece_scaled", "robustness.relative_error", "parent.fidelity.agreement")

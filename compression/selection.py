"""Which candidate to register: the cheapest one within the accuracy budget that passes the quality gates, else
the one that would have been champion, as challenger."""

from __future__ import annotations

from compression.budget import within_drop
from compression.candidates import QUANTIZED_STATIC, TEACHER
from compression.comparison import reference_row
from compression.gates import check_gates, describe

# The cost each registration objective minimises: a key of the evaluation rows.
OBJECTIVES = {"params": "params", "macs": "macs", "latency": "latency_p50_ms", "size": "size_bytes"}


def _cheapest(rows: list[dict], objective: str) -> dict:
    return min(rows, key=lambda r: (r[OBJECTIVES[objective]], -r["accuracy"]))


def _within(rows: list[dict], ref: dict, max_drop: float) -> list[dict]:
    return [r for r in rows if within_drop(r["accuracy"], ref["accuracy"], max_drop)]


def _passing(row: dict, gates: dict[str, float]) -> bool:
    return all(result["passed"] for result in check_gates(row, gates))


def choose(rows: list[dict], max_drop: float, objective: str, reference: str = TEACHER,
           gates: dict[str, float] | None = None) -> tuple[dict, str]:
    """(row, alias) among evaluation rows ({"candidate", "accuracy", cost keys, fidelity figures}).

    "champion": the cheapest row (by `objective`, then the more accurate) whose accuracy is within `max_drop`
    of the reference row (the one named `reference`, else the first) and that passes every gate of `gates`
    ({name: limit}, compression/gates.py). The reference is not gated (it is what the gates compare with).
    When the cheapest row within the budget is a compressed one and no compressed row within the budget
    passes the gates, that cheapest row is "challenger": a gate never hands the alias back to the reference.
    "challenger" too when nothing is within the budget: the most accurate row other than the reference."""
    ref = reference_row(rows, reference)
    within = _within(rows, ref, max_drop)
    if not within:
        compressed = [r for r in rows if r is not ref] or rows
        return max(compressed, key=lambda r: r["accuracy"]), "challenger"
    pick = _cheapest(within, objective)
    if not gates or pick is ref:
        return pick, "champion"
    passing = [r for r in within if r is not ref and _passing(r, gates)]
    if not passing:
        return pick, "challenger"
    return _cheapest([ref, *passing], objective), "champion"  # the reference is always within its own budget


def gate_log(rows: list[dict], row: dict, alias: str, max_drop: float, objective: str,
             gates: dict[str, float] | None, reference: str = TEACHER) -> list[str]:
    """The registration decision on the gates, in at most two lines: which gates the budget's cheapest row
    failed and by how much (when it was not registered champion), and what the registered row scored on
    every gate. Empty when no gate is set."""
    if not gates:
        return []
    ref = reference_row(rows, reference)
    within = _within(rows, ref, max_drop)
    pick = _cheapest(within, objective) if within else row
    lines = []
    failed = [describe(r) for r in check_gates(pick, gates) if not r["passed"]] if pick is not ref else []
    if failed:
        lines.append(f"{pick['candidate']} is not @champion: gate " + "; gate ".join(failed))
    if row is ref:
        lines.append(f"{row['candidate']} registered @{alias} (the reference the gates compare with is not gated)")
    elif pick is not row or alias == "champion":
        verdicts = "; ".join(describe(r) for r in check_gates(row, gates))
        lines.append(f"{row['candidate']} registered @{alias}: {verdicts}")
    return lines


def pick_within_gates(trials: list[dict], row_of, gates: dict[str, float] | None, pick) -> tuple[dict | None, str]:
    """A search's pick that respects the gates: `pick(trials)` (compression.search.pick, budget bound) over
    the trials whose evaluation row (`row_of(trial)`) passes every gate; when none passes both the budget and
    the gates, `pick` over all of them, as "challenger" at best."""
    passing = [t for t in trials if not gates or _passing(row_of(t), gates)]
    best, alias = pick(passing)
    if alias == "champion":
        return best, alias
    best, alias = pick(trials)
    return best, "challenger" if best is not None else alias


def export_targets(candidates: dict[str, dict], final: dict) -> tuple[dict[str, dict], dict[str, dict]]:
    """(float models to export to ONNX, int8 ones) of a run's candidates (model refs by name, in the order
    they were offered): the reference (the first) and the `final` float model; with them the static int8
    candidate made from that float model, whose int8 ONNX is made from the float export. Other candidates
    are compared but not exported: they are steps on the way to the final model."""
    first = next(iter(candidates.values()))
    floats = {ref["name"]: ref for ref in (first, final)}
    int8 = {name: ref for name, ref in candidates.items()
            if name == QUANTIZED_STATIC and ref.get("source_sha256") == final["sha256"]}
    return floats, int8

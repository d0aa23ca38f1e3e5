"""Which candidate to register: the cheapest one within the accuracy budget, else the most accurate one."""

from __future__ import annotations

from compression.comparison import reference_row

# The cost each registration objective minimises: a key of the evaluation rows.
OBJECTIVES = {"params": "params", "macs": "macs", "latency": "latency_p50_ms", "size": "size_bytes"}


def choose(rows: list[dict], max_drop: float, objective: str, reference: str = "teacher") -> tuple[dict, str]:
    """(row, alias) among evaluation rows ({"candidate", "accuracy", cost keys}).

    "champion": the cheapest row (by `objective`, then the more accurate) whose accuracy is within `max_drop`
    of the reference row (the one named `reference`, else the first); "challenger": when none is, the most
    accurate row other than the reference."""
    ref = reference_row(rows, reference)
    within = [r for r in rows if r["accuracy"] >= ref["accuracy"] - max_drop - 1e-9]
    if within:
        return min(within, key=lambda r: (r[OBJECTIVES[objective]], -r["accuracy"])), "champion"
    compressed = [r for r in rows if r is not ref] or rows
    return max(compressed, key=lambda r: r["accuracy"]), "challenger"

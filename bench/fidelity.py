"""Fidelity benchmark (issue #26): what compression changed, on the demo's task (configs/pretrain.yaml, then
configs/quickstart.yaml: classes 5-9, 100 labels per class) and on all ten Fashion-MNIST classes
(configs/fmnist10.yaml, the full 10,000-image test set):

1. each task's pipeline once (seed 0, registering as usual): the fidelity report of every candidate against the
   teacher, the int8 model against its float parent (goal: agreement >= 99.5%), calibration before and after
   temperature scaling of the teacher and the registered model, the registered model's corruption error relative
   to the teacher's, and the fidelity stage's time as a share of the whole pipeline's (goal: <= 15%);
2. the same config through `shrinkflow stability` (seed 0 from the cache, then the next seeds): every student's
   churn against its own seed's teacher beside the churn between the teachers of different seeds, the floor
   (goal: the registered candidate within 1.5x of it), and the images whose modal label compression changes.

All runs share one Prefect home and one sqlite MLflow store under bench/.work/fidelity. BENCH_QUICK=1 shrinks
the data, the epochs and the fidelity report's samples and runs the demo's task alone (minutes; its numbers are
not results).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import QUICK, QUICK_PIPELINE, Timer, fresh_store, save, say, use_prefect_env

TASKS = {"quickstart": "configs/quickstart.yaml", "fmnist10": "configs/fmnist10.yaml"}
# BENCH_QUICK=1: the demo's task alone (all ten classes take the same path with another config), two seeds.
QUICK_TASKS, QUICK_SEEDS = ["quickstart"], 2
# Seeds per task's stability run (the first is the pipeline of step 1, from the cache). All ten classes take about
# 25 minutes a seed here, the demo about 4.
SEEDS = {"quickstart": 3, "fmnist10": 2}
PARENT_AGREEMENT_GOAL, CHURN_GOAL, COST_GOAL = 0.995, 1.5, 0.15
SECTION = "## 12. Fidelity: what compression changed"

# The figures kept per candidate (a row of the evaluation table with the fidelity report merged in).
KEPT = ("accuracy", "size_bytes", "macs", "fidelity.agreement", "fidelity.lost", "fidelity.gained", "fidelity.kl",
        "fidelity.accuracy_drop", "fidelity.drop_ci_low", "fidelity.drop_ci_high", "fidelity.mcnemar_p",
        "fidelity.max_class_drop", "fidelity.significant_classes", "forgotten.count", "calibration.ece",
        "calibration.mce", "calibration.nll", "calibration.brier", "calibration.temperature",
        "calibration.ece_scaled", "calibration.mce_scaled", "calibration.nll_scaled", "calibration.brier_scaled",
        "robustness.clean_accuracy", "robustness.accuracy", "robustness.agreement", "robustness.relative_error",
        "attribution.spearman", "attribution.top10_overlap", "parent.fidelity.agreement",
        "parent.fidelity.lost", "parent.fidelity.gained", "what_changed")


def _stage_seconds(client, run_id: str, stage: str) -> float | None:
    tags = client.get_run(run_id).data.tags
    if f"stage.{stage}.run_id" not in tags:
        return None
    info = client.get_run(tags[f"stage.{stage}.run_id"]).info
    return (info.end_time - info.start_time) / 1000


def _pipeline_seconds(client, run_id: str) -> float:
    info = client.get_run(run_id).info
    return (info.end_time - info.start_time) / 1000


def run_task(task: str, store: dict, seeds: int) -> dict:
    """The task's pipeline (timed, its fidelity stage's share of it), then its stability over `seeds` seeds."""
    from mlflow.tracking import MlflowClient

    from flows.compress import compress
    from flows.stability import stability

    overrides = {**store, **(QUICK_PIPELINE if QUICK else {})}
    say(f"fidelity: {task}: the pipeline")
    with Timer() as t:
        result = compress(TASKS[task], overrides)
    client = MlflowClient(store["tracking.uri"])
    pipeline, report = _pipeline_seconds(client, result["run_id"]), _stage_seconds(client, result["run_id"], "fidelity")
    say(f"fidelity: {task}: {t.seconds / 60:.1f} min, the fidelity stage {report:.0f} s; stability over {seeds} seeds")
    with Timer() as s:
        population = stability(TASKS[task], overrides, seeds)
    rows = {r["candidate"]: {k: r.get(k) for k in KEPT} for r in result["rows"]}
    method = next((r["fidelity.method"] for r in result["rows"] if r.get("fidelity.method")), "")
    return {"config": TASKS[task], "method": method, "seconds": t.seconds, "pipeline_seconds": pipeline,
            "fidelity_seconds": report,
            "cost_share": report / pipeline, "run_id": result["run_id"], "registered": result["registered"],
            "markdown": result["markdown"], "rows": rows, "stability_seconds": s.seconds,
            "stability": {k: population[k] for k in ("run_id", "seeds", "markdown", "population", "spreads")}}


def main(tasks: list[str], seeds: dict[str, int]) -> None:
    work = use_prefect_env("fidelity")
    from flows.pretrain import pretrain

    uri = fresh_store(work)
    store = {"tracking.uri": uri, "output_dir": str(work / "outputs")}
    results = {"tasks": {}, "command": "python bench/fidelity.py", "tracking_uri": uri}
    say("fidelity: the demo's upstream model (configs/pretrain.yaml)")
    pretrain("configs/pretrain.yaml", {**store, **(QUICK_PIPELINE if QUICK else {})})
    for task in tasks:
        try:
            results["tasks"][task] = run_task(task, store, QUICK_SEEDS if QUICK else seeds[task])
        except Exception as exc:  # noqa: BLE001 - one task failing must not lose the other's results
            results["tasks"][task] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            say(f"fidelity: {task} failed: {results['tasks'][task]['error']}")
        save("fidelity", results)


# ---------------------------------------------------------------- docs/benchmarks.md


def _pct(value) -> str:
    return "" if value is None else f"{100 * value:.2f}%"


def _points(value) -> str:
    return "" if value is None else f"{100 * value:+.2f}"


def _candidates_table(rows: dict) -> str:
    from bench.report import table

    shown = []
    for name, row in rows.items():
        low, high = row.get("fidelity.drop_ci_low"), row.get("fidelity.drop_ci_high")
        shown.append({**row, "candidate": name, "ci": "" if low is None else f"[{_points(low)}, {_points(high)}]",
                      "drop": (None if row.get("fidelity.accuracy_drop") is None
                               else 100 * row["fidelity.accuracy_drop"]),
                      "agreement": _pct(row.get("fidelity.agreement")),
                      "class_drop": _points(row.get("fidelity.max_class_drop")),
                      "lost_gained": f"{row.get('fidelity.lost', 0):.0f}/{row.get('fidelity.gained', 0):.0f}",
                      "parent": _pct(row.get("parent.fidelity.agreement"))})
    return table(shown, [("candidate", "candidate", ""), ("accuracy", "test acc", "{:.4f}"),
                         ("drop", "drop (pt)", "{:+.2f}"), ("ci", "drop 95% CI (pt)", ""),
                         ("fidelity.mcnemar_p", "McNemar p", "{:.2g}"), ("agreement", "agreement", ""),
                         ("lost_gained", "lost/gained", ""), ("fidelity.kl", "KL", "{:.4f}"),
                         ("class_drop", "worst class (pt)", ""),
                         ("fidelity.significant_classes", "classes signif.", "{:.0f}"),
                         ("forgotten.count", "forgotten", "{:.0f}"), ("calibration.ece", "ECE", "{:.3f}"),
                         ("calibration.ece_scaled", "ECE scaled", "{:.3f}"), ("calibration.nll", "NLL", "{:.3f}"),
                         ("calibration.nll_scaled", "NLL scaled", "{:.3f}"),
                         ("calibration.brier_scaled", "Brier scaled", "{:.3f}"),
                         ("robustness.accuracy", "corrupted acc", "{:.4f}"),
                         ("robustness.relative_error", "corruption err x", "{:.2f}"),
                         ("attribution.spearman", "occlusion rho", "{:.2f}"), ("parent", "vs float parent", "")])


def _churn_lines(run: dict) -> list[str]:
    population = run["stability"]["population"]
    floor, registered = population["churn_floor"], (run.get("registered") or {}).get("candidate")
    lines = [f"- Churn between the teachers of {population['seeds']} seeds (the floor): {_pct(floor)} of the "
             f"{population['images']} test images. Each candidate's churn against its own seed's teacher:"]
    for name, figures in population["candidates"].items():
        if name == population["reference"]:
            continue
        ratio = figures.get("churn_vs_floor")
        mark = ""
        if name == registered and ratio is not None:
            mark = f" (registered; goal <= {CHURN_GOAL}x: {'met' if ratio <= CHURN_GOAL else '**missed**'})"
        lines.append(f"  `{name}` {_pct(figures['churn']['mean'])} (worst seed {_pct(figures['churn']['worst'])}), "
                     f"{'' if ratio is None else f'{ratio:.2f}x the floor'}; {figures['forgotten']} images whose "
                     f"modal label changed{mark}.")
    return lines


def _task_lines(task: str, run: dict) -> list[str]:
    if "error" in run:
        return [f"### {task}", "", f"The run failed: `{run['error']}`.", ""]
    rows, registered = run["rows"], (run.get("registered") or {}).get("candidate")
    teacher, final = rows.get("teacher", {}), rows.get(registered, {})
    int8 = {n: r["parent.fidelity.agreement"] for n, r in rows.items()
            if r.get("parent.fidelity.agreement") is not None}
    out = [f"### {task} (`{run['config']}`)", "", _candidates_table(rows), "",
           f"- Registered: `{registered}`. The fidelity stage took {run['fidelity_seconds']:.0f} s of the pipeline's "
           f"{run['pipeline_seconds']:.0f} s: {_pct(run['cost_share'])} (goal <= {COST_GOAL:.0%}: "
           f"{'met' if run['cost_share'] <= COST_GOAL else '**missed**'})."]
    for name, agreement in int8.items():
        out.append(f"- `{name}` agrees with its float parent on {_pct(agreement)} of test images (goal >= "
                   f"{PARENT_AGREEMENT_GOAL:.1%}: {'met' if agreement >= PARENT_AGREEMENT_GOAL else '**missed**'}).")
    if teacher.get("calibration.ece") is not None and final.get("calibration.ece") is not None:
        out.append(f"- Calibration (ECE, 15 bins) before -> after temperature scaling: teacher "
                   f"{teacher['calibration.ece']:.3f} -> {teacher['calibration.ece_scaled']:.3f} (T = "
                   f"{teacher['calibration.temperature']:.2f}), `{registered}` {final['calibration.ece']:.3f} -> "
                   f"{final['calibration.ece_scaled']:.3f} (T = {final['calibration.temperature']:.2f}).")
    if final.get("robustness.relative_error") is not None:
        out.append(f"- Under the 9 corruptions x 3 severities, `{registered}` errs "
                   f"{final['robustness.relative_error']:.2f}x "
                   f"as often as the teacher (accuracy {final['robustness.accuracy']:.4f} against clean "
                   f"{final['robustness.clean_accuracy']:.4f} on the same images).")
    out += _churn_lines(run)
    if run.get("method"):
        out.append(f"- Measured: {run['method']}")
    if final.get("what_changed"):
        out.append(f"- In words: {final['what_changed']}")
    return out + [""]


def section(result: dict) -> list[str]:
    """The docs/benchmarks.md section for bench/results/fidelity.json."""
    quick = "BENCH_QUICK tiny workloads: not results; " if result.get("quick") else ""
    out = [SECTION, "",
           f"`python bench/fidelity.py` ({quick}finished {result.get('finished', '?')}): each task's pipeline once "
           "(seed 0, registered as usual), its fidelity report for every candidate against the teacher (the int8 "
           "models also against the float model they were made from), then `shrinkflow stability` on the same "
           "config (seed 0 from the cache, then the next seeds, nothing registered). Drops and intervals in points "
           "(teacher minus candidate); churn between seeds on seed 0's test split. How to read each figure: "
           "docs/fidelity.md.", ""]
    for task, run in result.get("tasks", {}).items():
        out += _task_lines(task, run)
    return out


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=QUICK_TASKS if QUICK else list(TASKS), choices=list(TASKS))
    parser.add_argument("--quickstart-seeds", type=int, default=SEEDS["quickstart"])
    parser.add_argument("--fmnist10-seeds", type=int, default=SEEDS["fmnist10"])
    args = parser.parse_args()
    main(args.tasks, {"quickstart": args.quickstart_seeds, "fmnist10": args.fmnist10_seeds})

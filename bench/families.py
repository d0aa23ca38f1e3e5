"""Model families benchmark (issue #14), on the demo's task (configs/quickstart.yaml: Fashion-MNIST classes 5-9,
100 labels per class, 400 unlabelled per class for KD): the full pipeline with teachers of three families besides
ResNet-18, side by side in one run: teacher against final model (the registered one), params, MACs, latency,
throughput, accuracy drop and KD gain. Goal: for each family, >= 4x fewer MACs at <= 1 point of accuracy drop.

No weights can be downloaded here, so each family is first pretrained from random weights on the demo's
upstream task (configs/pretrain.yaml: classes 0-4, 1000 images per class), as the demo's ResNet-18 is; that step
is kept in bench/.work/families-upstream across runs (`--upstream-only` runs just it). The demo's config then
runs with `source=file:<that teacher>` (and FINETUNE below). The ResNet-18 reference rows are the demo of section 3
(bench/results/compression.json), not re-run.

Everything runs in one Prefect home and one sqlite MLflow store under bench/.work/families.
`python bench/families.py --report` regenerates docs/benchmarks.md (bench/report.py) from the saved results.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import QUICK, QUICK_PIPELINE, RESULTS, WORK, Timer, fresh_store, save, say, use_prefect_env

# Per family: settings beyond the demo's (and FINETUNE below), each from a measured run with the demo's prune ratio
# of 0.6: MobileNetV2 and EfficientNet-B0 are compact already, and 0.6 took their pruned students 2.2 and 2.0 points
# below their teachers (at 13.9x and 14.5x fewer MACs). Pruning removes MACs about as (1 - ratio)^2 (6.3x and 6.0x
# at 0.6, on top of trimming's 2.2x and 2.4x), so these ratios aim at 4.5x and 4.3x in all. At 0.3 MobileNetV2's
# pruned student still lost 2.7 points against its KD student after the demo's 2 recovery epochs: it gets 5.
FAMILIES = {
    "mobilenet_v2": {"prune.ratio": 0.3, "prune.train.epochs": 5},
    "regnet_y_400mf": {},
    "efficientnet_b0": {"prune.ratio": 0.25},
}
# Why not the others the issue names, measured here (see the section's text): MobileNetV3's BatchNorm momentum
# is 0.01, so after a few hundred steps its running statistics are still near their init and eval-mode accuracy
# is chance (20%, against 67% with batch statistics, after one upstream epoch); the smallest ViT (vit_b_16, 85M
# params) trains at ~4 images/s and Swin-T at about a third of ResNet-18's speed.
NOT_RUN = {"mobilenet_v3_large": "BatchNorm momentum 0.01: after one upstream epoch (78 steps) its eval-mode "
                                 "accuracy was 20% (chance) against 67% with batch statistics",
           "vit_b_16": "85M parameters: about 4 training images/s on this machine",
           "swin_t": "about a third of ResNet-18's training speed here"}
# BENCH_QUICK=1 runs one family (the others take the same path with another torchvision model; every
# architecture's stages are checked by bench/architectures.py).
QUICK_FAMILIES = ["mobilenet_v2"]
MACS_GOAL, DROP_GOAL = 4.0, 0.01
SECTION = "## 8. Model families: the demo with MobileNetV2, RegNet and EfficientNet teachers"


# The demo fine-tunes its ResNet-18 with the backbone frozen for an epoch, then at 0.3x the head's rate. From these
# weaker upstream models (55-79% upstream test accuracy) that left every teacher below the students made from it
# (MobileNetV2 69% against 82% for the plain student, in a run with the demo's settings): here the whole network
# learns at the full rate from the first epoch, and for 30 epochs instead of 12 (at 12 their val accuracy was
# still rising when the cosine schedule ran out).
FINETUNE = {"finetune.freeze_epochs": 0, "finetune.backbone_lr_factor": 1.0, "finetune.train.epochs": 30}
UPSTREAM = WORK / "families-upstream"
# configs/pretrain.yaml trains ResNet-18 for 3; from random weights these families learn slower (MobileNetV2: 49%
# train accuracy after 4)
UPSTREAM_EPOCHS = 20


def upstream_file(arch: str) -> Path:
    return UPSTREAM / "teachers" / f"{arch}.pt"


def pretrain_upstream(arch: str) -> float:
    """`arch` trained from scratch on the demo's upstream task (configs/pretrain.yaml: classes 0-4, 1000 images
    per class), as the demo's ResNet-18 is; its file, kept across benchmark runs (the store is not cleared, so a
    second call is answered from the stage cache); the teacher's test accuracy there."""
    import shutil

    from flows.pretrain import pretrain

    upstream_file(arch).parent.mkdir(parents=True, exist_ok=True)
    overrides = {"source": f"scratch:{arch}", "name": f"upstream-{arch}", "finetune.train.epochs": UPSTREAM_EPOCHS,
                 "register.model_name": f"fmnist-upstream-{arch.replace('_', '-')}",
                 "tracking.uri": f"sqlite:///{UPSTREAM / 'mlflow.db'}", "output_dir": str(UPSTREAM / "outputs"),
                 **({**QUICK_PIPELINE, "data.test_per_class": 10} if QUICK else {})}
    result = pretrain("configs/pretrain.yaml", overrides)
    teacher = next(row for row in result["table"] if row["candidate"] == "teacher")
    target = upstream_file(arch)
    shutil.copyfile(teacher["path"], target)
    say(f"families: upstream {arch}: test accuracy {teacher['accuracy']:.4f} on classes 0-4")
    return teacher["accuracy"]


def run_family(arch: str, settings: dict, store: dict) -> dict:
    """The demo's compression with `arch` pretrained upstream as the teacher's start, timed."""
    from flows.compress import compress

    registered_as = f"fmnist-sandals-to-boots-{arch.replace('_', '-')}"
    overrides = {**FINETUNE, **settings, **(QUICK_PIPELINE if QUICK else {}), "source": f"file:{upstream_file(arch)}",
                 "name": f"quickstart-{arch}", "register.model_name": registered_as}
    with Timer() as t:
        result = compress("configs/quickstart.yaml", {**store, **overrides})
    return {"arch": arch, "overrides": overrides, "own": settings, "seconds": t.seconds, "table": result["table"],
            "kd_gain": result["kd_gain"], "registered": result["registered"], "run_id": result["run_id"]}


def verdict(run: dict) -> dict:
    """Teacher and final (registered) rows and whether the final one meets the goal."""
    rows = {r["candidate"]: r for r in run["table"]}
    final = rows[run["registered"]["candidate"]] if run.get("registered") else None
    ok = bool(final) and final["candidate"] != "teacher" and final["macs_x"] >= MACS_GOAL \
        and final["accuracy_drop"] <= DROP_GOAL + 1e-9
    return {"teacher": rows["teacher"], "final": final, "goal_met": ok}


def upstream(arch: str) -> dict:
    """The upstream teacher's record (test accuracy on classes 0-4, minutes, epochs), pretraining it first if
    no earlier benchmark run left it."""
    record = upstream_file(arch).with_suffix(".json")
    if not record.exists():
        say(f"families: {arch}: pretraining upstream (configs/pretrain.yaml, {UPSTREAM_EPOCHS} epochs)")
        with Timer() as t:
            accuracy = pretrain_upstream(arch)
        record.write_text(json.dumps({"accuracy": accuracy, "minutes": t.seconds / 60,
                                      "epochs": 1 if QUICK else UPSTREAM_EPOCHS}) + "\n")
    return json.loads(record.read_text())


def main(families: list[str], upstream_only: bool = False) -> None:
    work = use_prefect_env("families")
    teachers = {arch: upstream(arch) for arch in families}
    if upstream_only:
        return
    uri = fresh_store(work)
    store = {"tracking.uri": uri, "output_dir": str(work / "outputs")}
    results = {"upstream": teachers, "finetune": FINETUNE, "not_run": NOT_RUN,
               "runs": {}, "command": "python bench/families.py", "tracking_uri": uri}
    for arch in families:
        say(f"families: {arch}: the demo's compression, teacher pretrained upstream")
        try:
            run = run_family(arch, FAMILIES[arch], store)
        except Exception as exc:  # noqa: BLE001 - one family failing must not lose the others' results
            results["runs"][arch] = {"arch": arch, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
            say(f"families: {arch} failed: {results['runs'][arch]['error']}")
        else:
            results["runs"][arch] = {**run, **verdict(run)}
            say(f"families: {arch}: {run['seconds'] / 60:.1f} min")
        save("families", results)  # after each family
    from bench.report import main as write_report

    write_report()


def _table(rows: list[dict]) -> str:
    from bench.report import table

    shown = [{**r, "drop": 100 * r["accuracy_drop"]} for r in rows]
    return table(shown, [("family", "teacher", ""), ("candidate", "model", ""), ("accuracy", "test acc", "{:.4f}"),
                         ("drop", "drop (pt)", "{:+.2f}"), ("params", "params", "{:,}"),
                         ("params_x", "params x", "{:.1f}x"), ("macs", "MACs", "{:,}"), ("macs_x", "MACs x", "{:.1f}x"),
                         ("latency_p50_ms", "p50 ms (b=1)", "{:.2f}"), ("throughput_ips", "img/s (b=64)", "{:.0f}"),
                         ("speedup", "throughput x", "{:.1f}x")])


def _resnet_reference() -> dict | None:
    path = RESULTS / "compression.json"
    if not path.exists():
        return None
    run = json.loads(path.read_text())["runs"].get("quickstart")
    return {**run, **verdict(run)} if run and run.get("registered") else None


def _family_lines(arch: str, run: dict) -> list[str]:
    if "error" in run:
        return [f"- `{arch}`: the run failed: `{run['error']}`."]
    final = run["final"]
    gain = f"{100 * run['kd_gain']:+.2f} pt" if run.get("kd_gain") is not None else "not measured"
    if not final:
        return [f"- `{arch}`: nothing registered; goal **missed**. KD gain {gain}."]
    caveat = (f" The final model is more accurate than its teacher ({100 * run['teacher']['accuracy']:.1f}% test "
              "accuracy): the students learn from 2,000 images more than the teacher's fine-tuning saw (the ones it "
              "labels for KD) and for more epochs, so the drop is measured against a teacher its students can beat."
              if final["accuracy_drop"] < 0 else "")
    smallest = max(run["table"], key=lambda row: (row["macs_x"], -row["accuracy_drop"]))
    if not run["goal_met"] and smallest["candidate"] != final["candidate"]:
        caveat += (f" The most compressed candidate, `{smallest['candidate']}`, has {smallest['macs_x']:.1f}x fewer "
                   f"MACs at {100 * smallest['accuracy_drop']:+.2f} pt.")
    status = "met" if run["goal_met"] else "**missed**"
    return [f"- `{arch}`: registered `{final['candidate']}`: {final['macs_x']:.1f}x fewer MACs at "
            f"{100 * final['accuracy_drop']:+.2f} pt (goal >= {MACS_GOAL:.0f}x at <= 1 pt: "
            f"{status}); {final['params_x']:.1f}x fewer params, "
            f"{final['speedup']:.1f}x throughput; KD gain {gain}. Time: {run['seconds'] / 60:.1f} min.{caveat}"]


def section(results: dict) -> list[str]:
    """The docs/benchmarks.md section for bench/results/families.json."""
    runs = results["runs"]
    own = "; ".join(f"`{a}` " + (", ".join(f"`{k}={v}`" for k, v in run.get("own", {}).items()) or "none")
                    for a, run in runs.items())
    upstream = results.get("upstream", {})
    out = [SECTION, "",
           f"`python bench/families.py` ({'BENCH_QUICK tiny workloads: not results; ' if results.get('quick') else ''}"
           f"finished {results.get('finished', '?')}): the demo (`configs/quickstart.yaml`: classes 5-9, 100 "
           "labels per class, 400 unlabelled per class for KD, the same epochs) with teachers of other families, one "
           "family after another in one process. No weights can be downloaded here, so each family is first "
           "pretrained on the demo's upstream task as its ResNet-18 is (`configs/pretrain.yaml`: classes 0-4, 1000 "
           "images per class, from random weights; `python bench/families.py --upstream-only`, kept across runs), and "
           "the demo starts from that file (`source=file:...`), with "
           + ", ".join(f"`{k}={v}`" for k, v in results.get("finetune", {}).items())
           + " (the demo's own fine-tuning, the backbone frozen for an epoch and then at 0.3x for 12 epochs, gave "
           "teachers of 59-79% from these weaker upstream models). Upstream test accuracy on "
           "classes 0-4: "
           + ", ".join(f"`{a}` {100 * u['accuracy']:.1f}% ({u['epochs']} epochs, {u['minutes']:.0f} min)"
                       for a, u in upstream.items()) + ". Settings of each family beyond these: " + own
           + ". The final model is the one the "
           "pipeline registered (the smallest file within 1 point of its teacher, else the most accurate one); ratios "
           "are against that family's own teacher; latency and throughput on 1 thread. The ResNet-18 rows are the "
           "demo of section 3 (another run), for reference.", "",
           "Not run: " + "; ".join(f"`{arch}` ({why})" for arch, why in results.get("not_run", {}).items())
           + ". Their trimmed, pruned and registered pipelines (MobileNetV3, ViT) run at smoke size in "
           "`tests/test_families_pipeline.py`.", ""]
    rows = []
    reference = _resnet_reference()
    for arch, run in ([("resnet18 (section 3)", reference)] if reference else []) + list(runs.items()):
        if run.get("final"):
            rows += [{**run["teacher"], "family": arch}, {**run["final"], "family": ""}]
    out += [_table(rows), ""] if rows else []
    for arch, run in runs.items():
        out += _family_lines(arch, run)
    if any((run.get("kd_gain") or 0) < 0 for run in runs.values()):
        out.append("- A negative KD gain: distilling from a teacher less accurate than the student can become on its "
                   "own teaches the student the teacher's mistakes.")
    total = sum(run.get("seconds", 0) for run in runs.values())
    out.append(f"- The whole run: {total / 60:.1f} min for {len(runs)} families (budget: about 45 min).")
    return out + [""]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="+", default=QUICK_FAMILIES if QUICK else list(FAMILIES),
                        choices=list(FAMILIES))
    parser.add_argument("--upstream-only", action="store_true",
                        help="only pretrain the families' upstream teachers that no earlier run left")
    parser.add_argument("--report", action="store_true",
                        help="only regenerate docs/benchmarks.md from the saved results")
    args = parser.parse_args()
    if args.report:
        from bench.report import main as write_report

        write_report()
    else:
        main(args.families, args.upstream_only)

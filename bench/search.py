"""Search benchmark (section 7 of docs/benchmarks.md), on the demo's task (configs/search-quickstart.yaml:
classes 5-9, 100 labels per class), budget MACs at most 10% of the fine-tuned teacher, at most 1 point of
val accuracy lost; one run, side by side:

(a) the search as README runs it (after the demo) against the hand-set recipe (configs/quickstart.yaml's own
    compression run): the registered models' test accuracy and MACs, and the search's wall time against
    the recipe's;
(b) the pruner (hyperband, the default) against none, at equal trial-seconds: trials that ended (finished
    or stopped) and the best feasible val accuracy within the smaller of the two runs' trial-seconds;
(c) one search with three targets (5%, 10%, 25%) against three searches of one target each: trial-seconds,
    wall time and each target's pick;
(d) where a trial's seconds go, before (the code at BASELINE, unpacked from git) and after, on the same small
    search: Dask and Prefect, the trial's MLflow run, the stages' training epochs, the rest of the stages,
    measuring; and the search's plan;
(e) against a published table: on all of Fashion-MNIST (configs/search-fmnist.yaml: 60,000 training images,
    ten classes, the official 10,000 test images), a ResNet-18 teacher trained from scratch and a search for
    a student with fewer parameters than the Fashion-MNIST benchmark's ~113K-parameter 2-conv CNN, within 1
    point of the teacher, beside that benchmark's references.

Everything runs in one Prefect home and one sqlite MLflow store under bench/.work/search. The upstream model is
pretrained there first (configs/pretrain.yaml) and the teacher fine-tuned once, by the recipe's compression
run; every other search runs in outputs of its own (no trial comes from another's cache, no study is reused)
with the teacher's stages copied in, so that none trains the teacher again.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import (
    PROJECT_ROOT,
    PYTHON,
    QUICK,
    QUICK_PIPELINE,
    Timer,
    fresh_store,
    kept_parts,
    save,
    say,
    use_prefect_env,
)

CONFIG = "configs/search-quickstart.yaml"
FULL_CONFIG = "configs/search-fmnist.yaml"  # (e)
CNN_PARAMS = 113_000  # (e): the reference 2-conv CNN's parameters ("about 113K")
BASELINE = "9d73231"  # (d)'s "before": the last commit before the trial-cost cuts
TEACHER_STAGES = ("load_data", "fetch_pretrained", "finetune")
TARGETS = ["5%", "10%", "25%"]
# BENCH_QUICK=1: two trials a target, one epoch each.
TRIALS_C = 2 if QUICK else 6  # (c): per target
TRIALS_D = 2 if QUICK else 4  # (d): a search of 2 rounds of 2 parallel trials
TRIALS_B = 3 if QUICK else 12  # (b): the pruner-less search, as many trials as the default one


# ---------------------------------------------------------------- running searches

def teacher_outputs(work: Path, name: str) -> str:
    """Fresh outputs for one run, holding only the teacher's stages (their cache records name runs of this
    store): the run finds its teacher and nothing else."""
    target = work / f"outputs-{name}"
    shutil.rmtree(target, ignore_errors=True)
    for stage in TEACHER_STAGES:
        shutil.copytree(work / "outputs" / stage, target / stage)
    return str(target)


def run_flow(work: Path, flow: str, config: str, overrides: dict, code: Path = PROJECT_ROOT) -> tuple[dict, float]:
    """A flow (compress or search) in a process of its own, as the CLI runs it (its own Prefect server start
    included), with the code at `code` (this checkout, or (d)'s baseline) first on its path; its result and
    the process's wall time."""
    out = work / "result.json"
    keys = ("run_id", "trials", "finalists", "plan", "table", "registered")
    script = (f"import json, sys; from flows.{flow} import {flow}; "
              f"r = {flow}({config!r}, json.loads(sys.argv[1])); "
              f"json.dump({{k: r[k] for k in {keys!r} if k in r}}, open({str(out)!r}, 'w'), default=str)")
    env = {**os.environ, "PYTHONPATH": str(code)}
    with Timer() as t:
        subprocess.run([PYTHON, "-c", script, json.dumps(overrides)], cwd=code, env=env, check=True)
    return json.loads(out.read_text()), t.seconds


def run_search(work: Path, overrides: dict, code: Path = PROJECT_ROOT) -> tuple[dict, float]:
    """The search on this checkout's CONFIG, whichever code runs it."""
    return run_flow(work, "search", str(PROJECT_ROOT / CONFIG), overrides, code)


def trial_runs(uri: str, parent_run_id: str, numbers: tuple[int, ...] = ()) -> list[dict]:
    """Each trial's MLflow run (not the re-trainings at full epochs): name, state, start, end, and the
    seconds its stages spent in training epochs (their epoch_time metrics, every step). `numbers`: trials of
    the search's study that an earlier run of it logged (a search stopped and resumed), each its latest run."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    parent = client.get_run(parent_run_id)
    experiment = parent.info.experiment_id
    runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                              "tags.`shrinkflow.stage` = 'trial'", max_results=1000)
    here = {run.data.tags.get("shrinkflow.trial") for run in runs}
    for number in (n for n in numbers if str(n) not in here):
        runs += client.search_runs(
            [experiment], f"tags.`shrinkflow.study` = '{parent.data.tags.get('shrinkflow.study')}' and "
            f"tags.`shrinkflow.stage` = 'trial' and tags.`shrinkflow.trial` = '{number}'",
            order_by=["attributes.start_time DESC"], max_results=1)
    return sorted((_trial_run(client, experiment, run) for run in runs), key=lambda r: r["end"])


def _trial_run(client, experiment: str, run) -> dict:
    stages = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{run.info.run_id}'", max_results=50)
    training = sum(m.value for stage in stages for key in stage.data.metrics if key.endswith("epoch_time")
                   for m in client.get_metric_history(stage.info.run_id, key))
    return {"name": run.data.tags.get("mlflow.runName"), "status": run.info.status,
            "state": run.data.tags.get("search.state", "COMPLETE" if run.info.status == "FINISHED" else
                                       run.info.status),
            "start": run.info.start_time / 1000, "end": (run.info.end_time or run.info.start_time) / 1000,
            "training_seconds": training,
            **{k: v for k, v in run.data.metrics.items() if k.startswith("seconds.")}}


def stage_seconds(uri: str, parent_run_id: str, stage: str) -> float:
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_run(parent_run_id).info.experiment_id
    runs = client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent_run_id}' and "
                              f"tags.`shrinkflow.stage` = '{stage}'", max_results=10)
    return sum((r.info.end_time - r.info.start_time) / 1000 for r in runs if r.info.end_time)


def within_budget(trial: dict, plan: dict) -> bool:
    limit = next(t["limit"] for t in plan["targets"] if t["label"] == trial.get("target", plan["targets"][0]["label"]))
    return trial[plan.get("metric", "macs")] <= limit


def feasible(trial: dict, plan: dict, max_drop: float = 0.01) -> bool:
    return (trial["state"] == "COMPLETE" and within_budget(trial, plan)
            and trial["accuracy"] >= plan["teacher"]["val_accuracy"] - max_drop - 1e-9)


def summary(result: dict, seconds: float, uri: str) -> dict:
    """What every part reports of a search: its trials (outcome and MLflow timing), trial-seconds, wall time."""
    numbers = tuple(t["number"] for t in result["trials"])  # a resumed search's earlier trials too
    runs = {r["name"]: r for r in trial_runs(uri, result["run_id"], numbers)}
    trials = [{**t, "run": runs.get(t["name"])} for t in result["trials"]]
    return {"run_id": result["run_id"], "plan": result["plan"], "trials": trials, "table": result["table"],
            "registered": result["registered"], "finalists": [f["name"] for f in result["finalists"]],
            "seconds": seconds, "trial_seconds": sum(r["end"] - r["start"] for r in runs.values()),
            "completed": sum(t["state"] == "COMPLETE" for t in trials),
            "pruned": sum(t["state"] == "PRUNED" for t in trials),
            "plan_seconds": stage_seconds(uri, result["run_id"], "plan_search")}


# ---------------------------------------------------------------- the parts

def part_a(work: Path, store: dict, uri: str) -> dict:
    say("search (a): the recipe's own compression run (configs/quickstart.yaml), which also fine-tunes the teacher")
    recipe, recipe_seconds = run_flow(work, "compress", "configs/quickstart.yaml", store)
    teacher_seconds = sum(stage_seconds(uri, recipe["run_id"], stage) for stage in TEACHER_STAGES)
    say(f"search (a): recipe took {recipe_seconds:.0f} s ({teacher_seconds:.0f} s of it the teacher's stages)")
    say("search (a): the search as README runs it, on the same outputs (its teacher from the cache)")
    result, seconds = run_search(work, store)
    say(f"search (a): the search took {seconds:.0f} s")
    return {"recipe": {"seconds": recipe_seconds, "teacher_seconds": teacher_seconds, "table": recipe["table"],
                       "registered": recipe["registered"], "run_id": recipe["run_id"]},
            "search": summary(result, seconds, uri)}


def part_b(work: Path, store: dict, uri: str) -> dict:
    say(f"search (b): the same search without a pruner ({TRIALS_B} trials, no re-training)")
    overrides = {**store, "output_dir": teacher_outputs(work, "no-pruner"), "search.pruner": "none",
                 "search.trials": TRIALS_B, "search.top_k": 0, "register.enabled": False}
    result, seconds = run_search(work, overrides)
    return {"none": summary(result, seconds, uri)}


def part_c(work: Path, store: dict, uri: str) -> dict:
    common = {**store, "search.trials": TRIALS_C, "search.top_k": 1}
    say(f"search (c): one search, targets {TARGETS}, {TRIALS_C} trials each")
    result, seconds = run_search(work, {**common, "output_dir": teacher_outputs(work, "three-targets"),
                                        "search.budget.max": json.dumps(TARGETS),
                                        "register.model_name": "bench-search-three-targets"})
    out = {"three": summary(result, seconds, uri), "single": {}}
    for target in TARGETS:
        say(f"search (c): one target, {target}")
        label = target.replace("%", "pct")
        result, seconds = run_search(work, {**common, "output_dir": teacher_outputs(work, f"single-{label}"),
                                            "search.budget.max": target,
                                            "register.model_name": f"bench-search-single-{label}"})
        out["single"][target] = summary(result, seconds, uri)
    return out


def baseline_code(work: Path) -> Path:
    """The code at BASELINE, unpacked from git (not checked out: this checkout stays as it is)."""
    target = work / f"code-{BASELINE}"
    if not (target / "flows").is_dir():
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        archive = subprocess.run(["git", "archive", BASELINE], cwd=PROJECT_ROOT, capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(target)], input=archive.stdout, check=True)
    return target


def part_d(work: Path, store: dict, uri: str) -> dict:
    # prune.ratio below every width: the recipe's trial gets the budget's width under both codes (the baseline
    # gave it that, whatever the config's ratio), so that both run the same four trials.
    overrides = {**store, "search.trials": TRIALS_D, "search.parallel": 2, "search.pruner": "none",
                 "search.top_k": 0, "register.enabled": False, "search.seed": 1, "prune.ratio": 0.2}
    out = {"baseline": BASELINE}
    for when, code in (("before", baseline_code(work)), ("after", PROJECT_ROOT)):
        say(f"search (d): {TRIALS_D} trials with the code {when} the cuts")
        result, seconds = run_search(work, {**overrides, "output_dir": teacher_outputs(work, f"d-{when}")}, code)
        out[when] = summary(result, seconds, uri)
    return out


def teacher_stages(uri: str, parent_run_id: str) -> dict:
    """Seconds the teacher's stages took where they ran (a stage this run found in the cache: the earlier run
    that trained it, named by the parent's stage.<name>.run_id tag), and which came from the cache."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    tags = client.get_run(parent_run_id).data.tags
    runs = {stage: client.get_run(tags[f"stage.{stage}.run_id"]) for stage in TEACHER_STAGES
            if f"stage.{stage}.run_id" in tags}
    return {"seconds": sum((r.info.end_time - r.info.start_time) / 1000 for r in runs.values() if r.info.end_time),
            "cached": [stage for stage in runs if tags.get(f"stage.{stage}.cached") == "true"]}


def e_settings() -> dict:
    """What (e) ran with, as its config says: the teacher's stem and epochs, the students' precision."""
    from tasks.config import load_config

    cfg = load_config(FULL_CONFIG)
    return {"stem": cfg.model.stem, "teacher_epochs": cfg.finetune.train.epochs,
            "student_amp": cfg.distill.train.amp, "recovery_epochs": cfg.prune.train.epochs}


def part_e(work: Path, store: dict, uri: str) -> dict:
    say(f"search (e): {FULL_CONFIG}: all of Fashion-MNIST, the ResNet-18 teacher from scratch, then the search")
    overrides = {**store, "output_dir": str(work / "outputs-fmnist")}
    if QUICK:  # a few images per class, one short trial a worker
        overrides.update({"data.train_per_class": 60, "data.val_per_class": 20, "data.test_per_class": 50,
                          "finetune.train.epochs": 1, "search.trials": 2, "search.top_k": 1})
    result, seconds = run_flow(work, "search", str(PROJECT_ROOT / FULL_CONFIG), overrides)
    teacher = teacher_stages(uri, result["run_id"])
    say(f"search (e): took {seconds:.0f} s; the teacher's stages {teacher['seconds']:.0f} s"
        + (f" (from the cache: {', '.join(teacher['cached'])})" if teacher["cached"] else ""))
    return {"search": summary(result, seconds, uri), "teacher_seconds": teacher["seconds"],
            "teacher_cached": teacher["cached"], "settings": e_settings()}


PARTS = {"a": part_a, "b": part_b, "c": part_c, "d": part_d, "e": part_e}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", metavar="PART,...", help=f"run these parts ({', '.join(PARTS)}) and replace them "
                        "in an earlier full run's results (a runs first in a full run: it fine-tunes the teacher)")
    args = parser.parse_args()
    parts = args.only.split(",") if args.only else list(PARTS)
    if unknown := [p for p in parts if p not in PARTS]:
        parser.error(f"--only: unknown part {unknown[0]!r}; parts: {', '.join(PARTS)}")
    work = use_prefect_env("search")
    uri = f"sqlite:///{work / 'mlflow.db'}" if args.only else fresh_store(work)
    store = {"tracking.uri": uri, "output_dir": str(work / "outputs"), **(QUICK_PIPELINE if QUICK else {}),
             **({"search.trial_epochs": 1, "search.trials": 3} if QUICK else {})}
    results = kept_parts(parser, "search", parts, PARTS) if args.only else {}
    results.update({"config": CONFIG, "targets": TARGETS})
    if not args.only:
        from flows.pretrain import pretrain

        say("search: pretraining the upstream model (configs/pretrain.yaml)")
        pretrain("configs/pretrain.yaml", {"tracking.uri": uri, "output_dir": str(work / "outputs"),
                                           **(QUICK_PIPELINE if QUICK else {})})
    for part in parts:
        results[part] = PARTS[part](work, store, uri)
        save("search", {**results, "command": "python bench/search.py", "tracking_uri": uri})  # after each part


if __name__ == "__main__":
    main()


# ---------------------------------------------------------------- the report

def _within(runs: list[dict], seconds: float) -> list[dict]:
    """The trials that ended within `seconds` of trial time, in the order they ended."""
    spent, kept = 0.0, []
    for trial in sorted((t for t in runs if t.get("run")), key=lambda t: t["run"]["end"]):
        spent += trial["run"]["end"] - trial["run"]["start"]
        if spent > seconds + 1e-6:
            break
        kept.append(trial)
    return kept


def _best(trials: list[dict], plan: dict) -> float | None:
    return max((t["accuracy"] for t in trials if feasible(t, plan)), default=None)


def _row(run: dict, candidate: str) -> dict:
    return next((r for r in run["table"] if r["candidate"] == candidate), {})


def _registrations(run: dict) -> list[dict]:
    reg = run.get("registered") or {}
    return reg.get("registrations") or ([reg] if reg else [])


def _fmt(value, spec: str = "{:.4f}") -> str:
    return "-" if value is None else spec.format(value)


def _section_a(r: dict) -> list[str]:
    from bench.report import goal, table

    recipe, search = r["a"]["recipe"], r["a"]["search"]
    plan, limit = search["plan"], search["plan"]["targets"][0]["limit"]
    hand, pick = recipe["registered"] or {}, (search["registered"] or {})
    rows = [{**_row(recipe, hand.get("candidate")),
             "what": f"recipe: configs/quickstart.yaml ({hand.get('candidate')})"},
            {**_row(search, pick.get("candidate")), "what": f"search: {pick.get('candidate')}"}]
    recipe_trial = next((t for t in search["trials"] if t.get("enqueued") == "recipe"), None)
    spent = recipe["seconds"] - recipe["teacher_seconds"]
    ratio = search["seconds"] / spent
    accurate = rows[1].get("accuracy", 0) >= rows[0].get("accuracy", 1) and rows[1].get("macs", limit + 1) <= limit
    return ["### (a) The search's pick against the hand-set recipe", "",
            f"Budget MACs <= {limit:,.0f} (10% of the fine-tuned teacher's {plan['teacher']['macs']:,.0f}), at most "
            f"1 point below the teacher's val accuracy ({plan['teacher']['val_accuracy']:.4f}). The search as README "
            f"runs it ({search['completed']} trials completed, {search['pruned']} stopped by the pruner, "
            f"{len(search['finalists'])} finalists, the recipe's trial among them, trained again at full epochs), on "
            "the teacher the recipe's run fine-tuned; each registered model on the test split:", "",
            table(rows, [("what", "model", ""), ("accuracy", "test acc", "{:.4f}"), ("params", "params", "{:,}"),
                         ("macs", "MACs", "{:,}"), ("size_bytes", "file bytes", "{:,}"),
                         ("latency_p50_ms", "p50 ms (b=1)", "{:.2f}")]), "",
            f"- Test accuracy: search {_fmt(rows[1].get('accuracy'))} against the recipe's "
            f"{_fmt(rows[0].get('accuracy'))}, within the budget ({goal(accurate)}). In the search, the recipe's "
            f"trial scored {_fmt((recipe_trial or {}).get('accuracy'))} on val at trial epochs.",
            f"- Wall time: the search {search['seconds']:.0f} s; the recipe's compression run "
            f"{recipe['seconds']:.0f} s, "
            f"of which {recipe['teacher_seconds']:.0f} s fine-tuned the teacher the search then found in the cache: "
            f"{ratio:.2f}x the recipe's run without it (goal: at most 3x; {goal(ratio <= 3)}), "
            f"{search['seconds'] / recipe['seconds']:.2f}x with it.", ""]


def _section_b(r: dict) -> list[str]:
    from bench.report import goal, table

    runs = {"hyperband (the search of (a))": r["a"]["search"], "none": r["b"]["none"]}
    budget = min(run["trial_seconds"] for run in runs.values())
    rows = []
    for name, run in runs.items():
        kept = _within(run["trials"], budget)
        rows.append({"what": name, "all": len(run["trials"]), "trial_s": run["trial_seconds"], "ended": len(kept),
                     "completed": sum(t["state"] == "COMPLETE" for t in kept),
                     "pruned": sum(t["state"] == "PRUNED" for t in kept), "best": _best(kept, run["plan"])})
    more = rows[0]["ended"] > rows[1]["ended"]
    better = rows[0]["best"] is not None and (rows[1]["best"] is None or rows[0]["best"] >= rows[1]["best"] - 1e-9)
    return ["### (b) The pruner against none, at equal trial-seconds", "",
            f"The same search (same sampler seed, outputs of its own) with `pruner: none`; each run's trials in the "
            f"order they ended, up to {budget:.0f} trial-seconds (the smaller run's total):", "",
            table(rows, [("what", "pruner", ""), ("all", "trials run", "{}"), ("trial_s", "their trial-seconds",
                                                                                  "{:.0f}"),
                         ("ended", f"ended within {budget:.0f} s", "{}"), ("completed", "of them completed", "{}"),
                         ("pruned", "stopped early", "{}"), ("best", "best feasible val acc", "{:.4f}")]), "",
            f"- With the pruner: {rows[0]['ended']} trials ended against {rows[1]['ended']} ({goal(more)}); best "
            f"feasible val accuracy {_fmt(rows[0]['best'])} against {_fmt(rows[1]['best'])} ({goal(better)}).", ""]


def _section_c(r: dict) -> list[str]:
    from bench.report import table

    three, singles = r["c"]["three"], r["c"]["single"]
    rows = [{"what": f"one search, targets {', '.join(r['targets'])}", "trials": len(three["trials"]),
             "trial_s": three["trial_seconds"], "wall": three["seconds"]},
            {"what": "three searches of one target", "trials": sum(len(s["trials"]) for s in singles.values()),
             "trial_s": sum(s["trial_seconds"] for s in singles.values()),
             "wall": sum(s["seconds"] for s in singles.values())}]
    picks = []
    by_alias = {reg["alias"]: reg for reg in _registrations(three)}
    for target, single in singles.items():
        label = target.replace("%", "pct").replace(".", "p")
        mine = next((reg for alias, reg in by_alias.items() if alias.startswith(f"macs-{label}")), {})
        theirs = (_registrations(single) or [{}])[0]
        picks.append({"target": target, "three": f"{mine.get('candidate', '-')} @{mine.get('alias', '-')}",
                      "three_acc": mine.get("accuracy"), "three_macs": _row(three, mine.get("candidate")).get("macs"),
                      "single": f"{theirs.get('candidate', '-')} @{theirs.get('alias', '-')}",
                      "single_acc": theirs.get("accuracy"),
                      "single_macs": _row(single, theirs.get("candidate")).get("macs")})
    share = rows[0]["trial_s"] / rows[1]["trial_s"]
    return ["### (c) Three targets in one search against three searches", "",
            f"{TRIALS_C} trials per target, the best one and the recipe's trial of each target trained again at full "
            "epochs, each search in outputs of its own:", "",
            table(rows, [("what", "run", ""), ("trials", "trials", "{}"), ("trial_s", "trial-seconds", "{:.0f}"),
                         ("wall", "wall s", "{:.0f}")]), "",
            table(picks, [("target", "MACs target", ""), ("three", "one search: registered", ""),
                          ("three_acc", "test acc", "{:.4f}"), ("three_macs", "MACs", "{:,}"),
                          ("single", "its own search: registered", ""), ("single_acc", "test acc", "{:.4f}"),
                          ("single_macs", "MACs", "{:,}")]), "",
            f"- One search of three targets: {share:.2f}x the trial-seconds and "
            f"{rows[0]['wall'] / rows[1]['wall']:.2f}x the wall time of three searches.", ""]


def _per_trial(run: dict) -> dict:
    done = [t for t in run["trials"] if t["state"] == "COMPLETE" and t.get("seconds") and t.get("run")]
    n = max(len(done), 1)
    mean = {key: sum(t["seconds"].get(key, 0) for t in done) / n for key in ("wall", "run_open", "stages", "measure")}
    training = sum(t["run"]["training_seconds"] for t in done) / n
    return {"dask_prefect": mean["wall"] - mean["run_open"] - mean["stages"] - mean["measure"],
            "run_open": mean["run_open"], "training": training, "stage_rest": mean["stages"] - training,
            "measure": mean["measure"], "wall": mean["wall"]}


def _section_d(r: dict) -> list[str]:
    from bench.report import table

    before, after = _per_trial(r["d"]["before"]), _per_trial(r["d"]["after"])
    names = {"dask_prefect": "Dask and Prefect (submission to result, less the trial's own phases)",
             "run_open": "the trial's MLflow run opened", "training": "training epochs (the stages' epoch_time)",
             "stage_rest": "the stages' other work (cache checks, runs, loading, pruning, saving, logging)",
             "measure": "measuring its model on val", "wall": "**a trial, submission to result**"}
    rows = [{"what": label, "before": before[key], "after": after[key], "x": after[key] / before[key]
             if before[key] > 0.05 else None} for key, label in names.items()]
    runs = {"plan_search (once a search)": "plan_seconds", "the search, whole": "seconds"}
    rows += [{"what": label, "before": r["d"]["before"][key], "after": r["d"]["after"][key],
              "x": r["d"]["after"][key] / r["d"]["before"][key]} for label, key in runs.items()]
    return ["### (d) Where a trial's seconds go, before and after", "",
            f"The same search ({TRIALS_D} trials, 2 workers, no pruner, sampler seed 1, `prune.ratio` 0.2 so that "
            "the recipe's trial gets the budget's width under both, outputs of its own) with the code at "
            f"{r['d']['baseline']} (before) and at this run's commit (after), both on this commit's config; "
            "seconds per completed trial, mean (the trials' `seconds.*` metrics and their stages' epoch times):", "",
            table(rows, [("what", "", ""), ("before", "before s", "{:.2f}"), ("after", "after s", "{:.2f}"),
                         ("x", "after / before", "{:.2f}x")]), ""]


def _trial_rows(run: dict) -> list[dict]:
    rows = []
    for trial in sorted(run["trials"], key=lambda t: t["number"]):
        settings = trial.get("settings", {})
        rows.append({"name": trial["name"] + (" (the recipe)" if trial.get("enqueued") == "recipe" else ""),
                     "state": trial["state"], "params": trial.get("params"), "val": trial.get("accuracy"),
                     "importance": settings.get("prune.importance"), "t": settings.get("distill.temperature"),
                     "alpha": settings.get("distill.alpha")})
    return rows


def _e_model(settings: dict | None) -> str:
    """The teacher and students of (e), in words."""
    if not settings or settings["stem"] == "torchvision":
        return ("torchvision's ResNet-18 as every 28 px run here builds it (ImageNet stem) trained from scratch as "
                "the teacher")
    side = 14 if settings["stem"] == "no-pool" else 28
    bf16 = "; its students distilled and recovered in bf16 (`amp: bf16`)" if settings["student_amp"] == "bf16" else ""
    return (f"torchvision's ResNet-18 with `model.stem: {settings['stem']}` (the first block sees a {side}x{side} map) "
            f"trained from scratch for {settings['teacher_epochs']} epochs as the teacher{bf16}")


def _e_time(e: dict) -> str:
    """Where (e)'s wall time went; a teacher from the cache was trained by an earlier run of the same command."""
    teacher = f"{e['teacher_seconds'] / 60:.0f} min"
    if e.get("teacher_cached"):
        return (f"the teacher's stages {teacher} in an earlier run of the same command (stopped once they were done "
                f"and run again: this run found them in the cache), then the search {e['search']['seconds'] / 60:.0f} "
                "min on this machine")
    return f"the whole run {e['search']['seconds'] / 60:.0f} min on this machine, {teacher} of it the teacher's stages"


def _section_e(r: dict) -> list[str]:
    from bench.report import REFERENCES, goal, table

    search = r["e"]["search"]
    plan, pick = search["plan"], search["registered"] or {}
    teacher, chosen = _row(search, "teacher"), _row(search, pick.get("candidate"))
    rows = [{"what": f"reference: {name}", "accuracy": acc} for name, acc in REFERENCES]
    rows.append({**teacher, "what": "here: the teacher, ResNet-18 from scratch"})
    for name in search["finalists"]:
        mark = f"registered @{pick['alias']}" if name == pick.get("candidate") else "not registered"
        recipe = " (the recipe)" if any(t["name"] == name and t.get("enqueued") for t in search["trials"]) else ""
        rows.append({**_row(search, name), "what": f"here: finalist {name}{recipe}, {mark}"})
    met = bool(chosen) and chosen["params"] < CNN_PARAMS and chosen["accuracy"] > 0.922
    limit = plan["targets"][0]["limit"]
    return ["### (e) Against a published table: all of Fashion-MNIST", "",
            f"`{FULL_CONFIG}`: all ten classes, 59,000 training images (100 per class held out for val), scored on "
            f"the official 10,000 test images; {_e_model(r['e'].get('settings'))}, then a "
            "search for the most accurate student with at most "
            f"{limit:,.0f} parameters (fewer than the reference CNN's ~113K) within 1 point of the teacher's val "
            f"accuracy ({plan['teacher']['val_accuracy']:.4f}). The references are the Fashion-MNIST benchmark's "
            "own table (zalandoresearch/fashion-mnist, not run here); test accuracy:", "",
            table(rows, [("what", "model", ""), ("accuracy", "test acc", "{:.4f}"), ("params", "params", "{:,}"),
                         ("macs", "MACs", "{:,}"), ("size_bytes", "file bytes", "{:,}")]), "",
            f"- Goal, a registered model with fewer parameters than the CNN and more accurate than its 92.2%: "
            f"{goal(met)}. The teacher: {_fmt(teacher.get('accuracy'))} against the reference ResNet-18's 94.9%.",
            f"- Time: {_e_time(r['e'])}; {len(search['trials'])} trials "
            f"({search['completed']} completed, {search['pruned']} stopped by the pruner); the finalists (the best "
            "and the recipe's) re-trained at full epochs. The trials (val accuracy at trial epochs):", "",
            table(_trial_rows(search), [("name", "trial", ""), ("state", "state", ""), ("params", "params", "{:,}"),
                                        ("val", "val acc", "{:.4f}"), ("importance", "importance", ""),
                                        ("t", "KD T", "{:.2f}"), ("alpha", "KD alpha", "{:.2f}")]), ""]


def section(r: dict) -> list[str]:
    """Section 7 of docs/benchmarks.md from bench/results/search.json."""
    runs = [r["a"]["search"], r["b"]["none"], r["c"]["three"], *r["c"]["single"].values(), r["d"]["before"],
            r["d"]["after"], *([r["e"]["search"]] if "e" in r else [])]
    completed = [(t, run["plan"]) for run in runs for t in run["trials"] if t["state"] == "COMPLETE"]
    within = sum(within_budget(t, plan) for t, plan in completed)
    parts = f" Parts not rerun by `--only` measured at {r['other_parts_commit']}, the rest at {r['git_commit']}."
    if r.get("part_commits"):
        at = {part: r["part_commits"].get(part, r["git_commit"]) for part in PARTS if part in r}
        parts = " Commits (parts rerun with `--only` after the full run): " + "; ".join(
            f"{', '.join(f'({p})' for p in at if at[p] == commit)} at {commit}" for commit in dict.fromkeys(at.values())
        ) + "."
    elif not r.get("other_parts_commit"):
        parts = ""
    return ["## 7. Search: the best model under a budget", "",
            "`python bench/search.py`: `configs/search-quickstart.yaml` (the demo's task: classes 5-9, 100 labels "
            "per class), MACs budgets as shares of the fine-tuned teacher's, at most 1 point of val accuracy lost. "
            + ("Every part in one run, in" if not parts else "In") + " one MLflow store; every search in outputs "
            "of its own except (a)'s, which runs where the recipe's run fine-tuned the teacher, as README's order "
            "does." + parts, "",
            *_section_a(r), *_section_b(r), *_section_c(r), *_section_d(r), *(_section_e(r) if "e" in r else []),
            f"Hit rate: {within} of {len(completed)} completed trials of every run above were within their target's "
            f"budget (budget by construction).", ""]

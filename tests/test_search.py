"""The search for real: Prefect flows, Optuna studies, Dask clusters (a LocalCluster, and `dask scheduler` and
`dask worker` processes on 127.0.0.1), MLflow sqlite stores, Fashion-MNIST subsets; plus its bad input."""

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
from mlflow.tracking import MlflowClient

from tests.conftest import PROJECT_ROOT, free_port

BIN = Path(sys.executable).parent
SPACE = {"trim.keep_per_stage": {"choices": [1, 2, [1, 1, 1, 1, 1]]},  # the last one fails inside its trials
         "prune.ratio": {"low": 0.1, "high": 0.9}, "distill.temperature": {"low": 1.0, "high": 8.0},
         "quantize.enabled": {"choices": [True, False]},
         # smoke.yaml's own rate learns; 1.0 and more leave the student at chance (finite losses, AdamW steps as
         # large as the weights): a region for the pruner to stop early
         "distill.train.lr": {"choices": [0.002, 1.0, 2.0, 5.0]}}


# Enough images (and a teacher trained enough) that a student distilled at smoke.yaml's rate is well above chance
# after its first epoch, where the rates of the bad region are at chance: the pruner's rung 0.
LEARNABLE = {"data.train_per_class": 100, "data.unlabeled_per_class": 100, "finetune.train.epochs": 2}
# The sampler's seed of the killed search: its first two sampled trials are one the pruner stops (two blocks per
# stage, a rate of 5.0) and one that fails (five stages), both before the recipe completes and the kill comes.
KILLED_SEARCH_SEED = ("--set", "search.seed=3")
# The study of the tests' one budget target, "15%" of the teacher's MACs (each target has its own).
STUDY = "macs-15pct"


def _settings(tmp_path: Path, trials: int, **extra) -> list[str]:
    values = {"tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "output_dir": str(tmp_path / "outputs"),
              "tracking.experiment": "search", "name": "search", "register.model_name": "search-model",
              "export.onnx": False, "prune.iterative_steps": 1, "quantize.calibration_size": 32,
              "search.trials": trials, "search.parallel": 2, "search.trial_epochs": 1, "search.top_k": 1,
              "search.budget.max": "15%", "search.budget.max_accuracy_drop": 1.0, "search.space": json.dumps(SPACE),
              "search.pruner": "successive_halving", **LEARNABLE, **extra}
    return [x for key, value in values.items() for x in ("--set", f"{key}={value}")]


def _search_command(tmp_path: Path, trials: int, *extra: str) -> list[str]:
    return [sys.executable, "-m", "cli", "search", "configs/smoke.yaml", *_settings(tmp_path, trials), *extra]


def _env(tmp_path: Path, prefect_api_url: str) -> dict:
    return {**os.environ, "PREFECT_HOME": str(tmp_path / "prefect-home"), "OMP_NUM_THREADS": "1",
            "PREFECT_API_URL": prefect_api_url}


def _runs(tmp_path: Path) -> tuple[MlflowClient, list]:
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = client.get_experiment_by_name("search")
    return client, (client.search_runs([experiment.experiment_id], max_results=5000) if experiment else [])


def _trial_runs(runs, full: bool = False) -> list:
    stage = "trial-full" if full else "trial"
    return [r for r in runs if r.data.tags.get("shrinkflow.stage") == stage]


def _budget(runs) -> float:
    plan = next(r for r in runs if r.data.tags.get("shrinkflow.stage") == "plan_search")
    return plan.data.metrics["budget_limit"]


def _start(command: list[str], log: Path, env: dict | None = None) -> subprocess.Popen:
    return subprocess.Popen(command, cwd=PROJECT_ROOT, stdout=open(log, "w"), stderr=subprocess.STDOUT,
                            start_new_session=True, env=env or {**os.environ, "OMP_NUM_THREADS": "1"})


def _wait_for(condition, timeout: float, what: str, every: float = 1.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = condition()
        if found:
            return found
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}")


def _study_ready(db: Path) -> bool:
    """Whether the search has created its study. Read-only: a reader that opens the database through Optuna
    while the search is still creating it races it for the schema's first rows."""
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as con:
            return bool(con.execute("SELECT count(*) FROM alembic_version").fetchone()[0]
                        and con.execute("SELECT count(*) FROM studies WHERE study_name = ?", (STUDY,)).fetchone()[0])
    except sqlite3.Error:
        return False


def _study_trials(tmp_path: Path) -> list:
    studies = list((tmp_path / "outputs" / "search").glob("*/study.db"))
    if not studies or not _study_ready(studies[0]):
        return []
    study = optuna.load_study(study_name=STUDY, storage=f"sqlite:///{studies[0]}")
    return study.get_trials(deepcopy=False)


def _wait_for_outcomes(tmp_path: Path, count: int) -> dict[int, str]:
    """The state of each trial that has an outcome, once `count` have one (at least one of them complete and
    one pruned)."""
    def kept():
        trials = [t for t in _study_trials(tmp_path) if "outcome" in t.user_attrs]
        states = {t.number: t.state.name for t in trials}
        return states if len(trials) >= count and {"COMPLETE", "PRUNED"} <= set(states.values()) else None
    return _wait_for(kept, 900, f"{count} finished trials, one of them pruned", every=0.2)


def _start_dask(tmp_path: Path) -> tuple[str, list[subprocess.Popen]]:
    """A `dask scheduler` and two one-thread `dask worker` processes on 127.0.0.1."""
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = _start([str(BIN / "dask"), "scheduler", "--host", "127.0.0.1", "--port", str(port),
                        "--no-dashboard"], tmp_path / "scheduler.log")
    workers = [_start([str(BIN / "dask"), "worker", address, "--nthreads", "1", "--no-nanny", "--no-dashboard",
                       "--name", f"w{i}"], tmp_path / f"worker{i}.log") for i in range(2)]
    return address, [scheduler, *workers]


def _kill_second_search_worker_mid_trial(tmp_path: Path, second: subprocess.Popen, worker: subprocess.Popen):
    known = {r.info.run_id for r in _runs(tmp_path)[1]}
    _wait_for(lambda: [r for r in _trial_runs(_runs(tmp_path)[1]) if r.info.status == "RUNNING"
                       and r.info.run_id not in known], 900, "a trial running in the second search", every=0.2)
    os.killpg(worker.pid, signal.SIGKILL)
    worker.wait()
    assert second.wait(timeout=1500) == 0, (tmp_path / "second.log").read_text()[-4000:]


@pytest.mark.slow
def test_search_killed_on_a_local_cluster_resumes_on_a_dask_scheduler_and_registers_within_the_budget(prefect,
                                                                                                      tmp_path):
    """The search on its own LocalCluster, kill -9 mid-way; the same command on `dask scheduler` and `dask worker`
    processes resumes it (finished trials are kept) and survives one worker killed during a trial; then it
    re-trains the best at full epochs and registers it within the budget. A third of the space fails inside its
    trials (keep_per_stage of five stages for a four-stage ResNet): those trials end FAILED, the search goes on.
    Trials the pruner stopped before the kill stay PRUNED and are not run again."""
    address, processes = _start_dask(tmp_path)
    try:
        first = _start(_search_command(tmp_path, 6, *KILLED_SEARCH_SEED), tmp_path / "first.log",
                       _env(tmp_path, prefect))
        processes.append(first)
        kept = _wait_for_outcomes(tmp_path, 3)
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
        second = _start(_search_command(tmp_path, 6, *KILLED_SEARCH_SEED, "--dask-address", address),
                        tmp_path / "second.log", _env(tmp_path, prefect))
        processes.append(second)
        _kill_second_search_worker_mid_trial(tmp_path, second, processes[1])
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
    states = {t.number: t.state.name for t in _study_trials(tmp_path) if "outcome" in t.user_attrs}
    outcomes = set(states)
    assert len(outcomes) == 6 and kept.items() <= states.items()  # finished and pruned before the kill: kept
    kept = set(kept)
    recipes = [t for t in _study_trials(tmp_path) if t.user_attrs.get("enqueued") == "recipe"]
    assert len([t for t in recipes if "outcome" in t.user_attrs]) == 1  # resumed twice, the recipe ran once
    second_log = (tmp_path / "second.log").read_text()
    assert "trials finished before; running the rest" in second_log
    _check_search_runs(tmp_path, outcomes, kept, second_log)


def _check_search_runs(tmp_path: Path, outcomes: set[int], kept: set[int], stdout: str) -> None:
    client, runs = _runs(tmp_path)
    limit = _budget(runs)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    parent = [r for r in runs if r.data.tags.get("shrinkflow.flow") == "search" and r.info.status == "FINISHED"]
    assert len(parent) == 1 and parent[0].data.metrics["trials_completed"] >= 1
    parent = parent[0]
    assert parent.data.metrics["trials_pruned"] >= 1
    trials = _trial_runs(runs)
    finished = [r for r in trials if r.info.status == "FINISHED"]
    failed = [r for r in trials if r.info.status == "FAILED" and "keep_per_stage" in r.data.tags.get("error", "")]
    pruned = [r for r in trials if r.info.status == "KILLED" and r.data.tags.get("search.state") == "PRUNED"]
    assert failed and pruned and finished
    assert all(r.data.metrics["macs"] <= limit for r in finished)  # within the budget by construction
    assert {r.data.params["trial"] for r in finished + failed + pruned} == {str(n) for n in outcomes}
    for number in kept:  # a trial finished before the kill was not trained again
        assert len([r for r in trials if r.data.params.get("trial") == str(number)]) == 1
    full = _trial_runs(runs, full=True)  # top_k=1 at full epochs, and the recipe's trial when it is not the best
    assert {r.info.status for r in full} == {"FINISHED"} and 1 <= len(full) <= 2
    assert "recipe" in {r.data.tags.get("search.enqueued") for r in full}
    assert {"search/trials.csv", "search/pareto.png", "search/best_so_far.png"} <= {
        a.path for a in client.list_artifacts(parent.info.run_id, "search")}
    version = client.get_model_version_by_alias("search-model", "champion")
    assert version.tags["search_run_id"] == parent.info.run_id and version.tags["search_trial"]
    registered = version.tags["search_trial"]
    assert parent.data.metrics[f"{registered}.accuracy"] > 0
    evaluate = next(r for r in runs if r.data.tags.get("shrinkflow.stage") == "evaluate")
    assert evaluate.data.metrics[f"{registered}.macs"] <= limit
    assert "registered trial-" in stdout and "budget: macs <=" in stdout
    shown = subprocess.run([sys.executable, "-m", "cli", "compare", "--experiment", "search", "--tracking-uri",
                            f"sqlite:///{tmp_path / 'mlflow.db'}", "--search", parent.info.run_id], cwd=PROJECT_ROOT,
                           capture_output=True, text=True, timeout=120)
    assert shown.returncode == 0 and f"trial-{min(kept)}" in shown.stdout and "FAILED" in shown.stdout, shown.stderr
    assert "KILLED" in shown.stdout and "PRUNED" in shown.stdout


SEARCH_BAD_INPUTS = [
    ("unknown budget metric", ["search.budget.metric=flops"], "search.budget.metric: Input should be"),
    ("budget max 0", ["search.budget.max=0"], "search.budget.max: 0 must be a finite number greater than 0"),
    ("negative budget", ["search.budget.max=-5"], "search.budget.max: -5 must be a finite number greater than 0"),
    ("share over 100%", ["search.budget.max=120%"], "must be more than 0% and at most 100% of the teacher"),
    ("empty space", ["search.space={}"], "search.space: the search space is empty"),
    ("parallel 0", ["search.parallel=0"], "search.parallel: Input should be greater than or equal to 1"),
    ("unknown pruner", ["search.pruner=median"],
     "search.pruner: Input should be 'none', 'successive_halving' or 'hyperband'"),
    ("parallel beyond the cores", ["search.parallel=64"], "search.parallel: 64 trials at once would start that many"),
    ("unknown knob", ['search.space={"prune.steps": {"choices": [1]}}'], "prune.steps cannot be searched"),
    ("knob value its setting refuses", ['search.space={"prune.ratio": {"low": 0.2, "high": 1.0}}'],
     "search.space.prune.ratio: 1.0: Input should be less than 1"),
    ("depth as a range", ['search.space={"trim.keep_per_stage": {"low": 1, "high": 3}}'],
     "search.space.trim.keep_per_stage: give choices"),
    ("width budget with unstructured pruning", ["prune.method=unstructured", "search.budget.max=1e9"],
     "prune.method: unstructured: a macs budget is met by construction only"),
]


@pytest.mark.parametrize("name, settings, message", [pytest.param(*c, id=c[0]) for c in SEARCH_BAD_INPUTS])
def test_search_bad_input_is_one_line_and_exit_2(name, settings, message, tmp_path, capsys):
    from cli.main import main

    args = ["search", "configs/smoke.yaml", "--set", f"output_dir={tmp_path}",
            "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"]
    code = main(args + [x for s in settings for x in ("--set", s)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and message in err[0], err


def test_unreachable_dask_address_is_one_line_and_exit_2(tmp_path, capsys):
    from cli.main import main

    code = main(["search", "configs/smoke.yaml", "--dask-address", f"tcp://127.0.0.1:{free_port()}",
                 "--set", f"output_dir={tmp_path}", "--set", f"tracking.uri=sqlite:///{tmp_path / 'mlflow.db'}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and "Dask scheduler tcp://127.0.0.1:" in err[0] and "unreachable" in err[0]


@pytest.mark.slow
def test_unreachable_budget_stops_before_any_training(prefect, tmp_path, capsys):
    from cli.main import main

    valid = {k: v for k, v in SPACE.items() if k != "trim.keep_per_stage"}
    code = main(["search", "configs/smoke.yaml", *_settings(tmp_path, 4, **{"search.budget.max": 1000,
                                                                            "search.space": json.dumps(valid)})])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "search.budget.max: macs <= 1,000 cannot be reached; the smallest this search space reaches is" in err[0]
    _, runs = _runs(tmp_path)
    assert not [r for r in runs if r.info.status == "RUNNING"]
    assert not _trial_runs(runs) and not [r for r in runs if r.data.tags.get("shrinkflow.stage") == "distill"]


def _study_config(tmp_path: Path, **overrides):
    from tasks.config import load_config

    space = {"trim.keep_per_stage": {"choices": [1, 2, [1, 1, 2, 1]]}, "distill.temperature": {"low": 1.0, "high": 3.0},
             "prune.importance": {"choices": ["l1", "taylor"]}}
    return load_config("configs/smoke.yaml", {"output_dir": str(tmp_path), "search.space": json.dumps(space),
                                              **overrides})


# One budget target's plan, as its trials read it (tasks.search.for_target).
VIEW = {"metric": "macs", "target": "macs-10pct", "limit": 1e6, "widths": {}, "several": False,
        "teacher": {"val_accuracy": 0.9}}


def test_a_new_study_queues_the_recipe_once_clipped_and_a_cut_off_recipe_trial_keeps_its_mark(tmp_path):
    """The config's own settings (smoke: one block per stage, temperature 4.0, l2 importance) as the first trial:
    4.0 clipped to the space's 3.0, l2 (no choice) left to the sampler; opened again, the study queues nothing
    more; the recipe trial cut off by a kill is queued again with its mark, once."""
    from optuna.trial import TrialState

    from compression.search import sample
    from tasks.search import open_study, sampled_space, study_path

    cfg, teacher, plan = _study_config(tmp_path), {"sha256": "0" * 64}, VIEW
    study_path(cfg, teacher).parent.mkdir(parents=True)
    study = open_study(cfg, teacher, plan)
    [waiting] = study.get_trials(deepcopy=False)
    assert waiting.state == TrialState.WAITING and waiting.user_attrs == {"enqueued": "recipe"}
    assert waiting.system_attrs["fixed_params"] == {"trim.keep_per_stage": 1, "distill.temperature": 3.0}
    assert len(open_study(cfg, teacher, plan).trials) == 1  # resumed: not queued twice
    asked = open_study(cfg, teacher, plan).ask()  # the recipe trial runs; the search is killed
    settings = sample(asked, sampled_space(cfg))
    assert settings["trim.keep_per_stage"] == 1 and settings["distill.temperature"] == 3.0
    assert asked.user_attrs["enqueued"] == "recipe"
    for _ in range(2):  # resumed twice: the cut-off trial is queued again once, with its mark
        trials = open_study(cfg, teacher, plan).get_trials(deepcopy=False)
    assert [(t.state, t.user_attrs) for t in trials] == [
        (TrialState.FAIL, {"enqueued": "recipe"}), (TrialState.WAITING, {"enqueued": "recipe", "requeued_from": 0})]
    grid_cfg = _study_config(tmp_path, **{"search.sampler": "grid"})
    study_path(grid_cfg, teacher).parent.mkdir(parents=True)
    grid = open_study(grid_cfg, teacher, plan)
    assert not [t for t in grid.trials if t.user_attrs.get("enqueued")]  # the grid is the baseline as it is


def _run_trial(study, cfg, point: dict | None, accuracy: float) -> dict:
    """One trial asked (at `point`, else the queue's next) and told as completed with `accuracy` (against VIEW's
    teacher at 0.9 and a 1-point limit); its settings."""
    from compression.search import sample
    from tasks.search import record, sampled_space

    if point is not None:
        study.enqueue_trial(point)
    asked = study.ask()
    settings = sample(asked, sampled_space(cfg))
    record(study, asked, {"state": "COMPLETE", "settings": settings, "accuracy": accuracy}, VIEW, 0.01)
    return settings


def test_a_new_study_on_the_same_teacher_queues_an_earlier_searchs_best_feasible_settings_after_the_recipe(tmp_path):
    """Another search on the same teacher file (another fidelity: another study file) starts with the recipe,
    then the most accurate feasible trial of the earlier one, clipped to its own space; a search on another
    teacher, or one whose earlier trials were all infeasible, only with the recipe."""
    from optuna.trial import TrialState

    from tasks.search import open_study, study_path

    teacher, other_teacher = {"sha256": "1" * 64}, {"sha256": "2" * 64}
    first = _study_config(tmp_path)
    study_path(first, teacher).parent.mkdir(parents=True)
    study = open_study(first, teacher, VIEW)
    _run_trial(study, first, None, 0.80)  # the recipe's trial: infeasible (10 points below the teacher)
    _run_trial(study, first, {"trim.keep_per_stage": "[1, 1, 2, 1]", "distill.temperature": 2.5,
                              "prune.importance": "taylor"}, 0.895)  # feasible
    _run_trial(study, first, {"trim.keep_per_stage": 2, "distill.temperature": 1.5,
                              "prune.importance": "l1"}, 0.85)  # infeasible, if more accurate than the recipe
    second = _study_config(tmp_path, **{"search.trial_epochs": 2, "search.space": json.dumps(
        {"trim.keep_per_stage": {"choices": [1, [1, 1, 2, 1]]}, "distill.temperature": {"low": 3.0, "high": 6.0}})})
    study_path(second, teacher).parent.mkdir(parents=True)
    queued = open_study(second, teacher, VIEW).get_trials(deepcopy=False)
    assert [t.state for t in queued] == [TrialState.WAITING] * 2
    assert queued[0].user_attrs == {"enqueued": "recipe"}
    assert queued[1].user_attrs["enqueued"] == "previous-best"
    assert queued[1].user_attrs["enqueued_from"].endswith(f"{VIEW['target']}#1")
    assert queued[1].system_attrs["fixed_params"] == {"trim.keep_per_stage": "[1, 1, 2, 1]",
                                                      "distill.temperature": 3.0}  # clipped to this space
    elsewhere = _study_config(tmp_path, **{"search.trial_epochs": 3})
    study_path(elsewhere, other_teacher).parent.mkdir(parents=True)
    assert [t.user_attrs for t in open_study(elsewhere, other_teacher, VIEW).trials] == [{"enqueued": "recipe"}]


RECIPE_SPACE = {"trim.keep_per_stage": {"choices": [1, 2]}, "distill.temperature": {"low": 1.0, "high": 8.0}}


def _trial_accuracy(runs, number: int, full: bool) -> float:
    [run] = [r for r in _trial_runs(runs, full) if r.data.tags["shrinkflow.trial"] == str(number)]
    return run.data.metrics["accuracy"]


@pytest.mark.slow
def test_the_search_starts_from_the_recipe_and_registers_a_model_at_least_as_accurate_on_val(prefect, tmp_path):
    """smoke.yaml's own settings (one block per stage, temperature 4.0, its prune ratio: within the budget) are in
    the space: they are the first trial, marked in the study, its MLflow run and the trials table; the recipe's
    trial is among those trained again at full epochs, so the registered model is at least as accurate on val as
    the recipe at the same epochs. Run after the recipe's own compression run (README's order), that re-training
    is the recipe itself: its trim, distill and prune stages come from that run's cache."""
    settings = _settings(tmp_path, 3, **{"search.space": json.dumps(RECIPE_SPACE), "fidelity.enabled": False})
    demo = subprocess.run([sys.executable, "-m", "cli", "run", "configs/smoke.yaml", *settings,
                           "--set", "register.enabled=false"], cwd=PROJECT_ROOT, env=_env(tmp_path, prefect),
                          capture_output=True, text=True, timeout=1500)
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    command = [sys.executable, "-m", "cli", "search", "configs/smoke.yaml", *settings]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=_env(tmp_path, prefect), capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    [recipe] = [t for t in _study_trials(tmp_path) if t.user_attrs.get("enqueued") == "recipe"]
    assert (recipe.number, recipe.state.name) == (0, "COMPLETE")
    assert recipe.params == {"trim.keep_per_stage": 1, "distill.temperature": 4.0}
    client, runs = _runs(tmp_path)
    tagged = [r for r in _trial_runs(runs) + _trial_runs(runs, full=True) if r.data.tags.get("search.enqueued")]
    assert {(r.data.tags["shrinkflow.trial"], r.data.tags["search.enqueued"]) for r in tagged} == {("0", "recipe")}
    assert {r.data.params["derived.prune.ratio"] for r in tagged} == {"0.5"}  # smoke.yaml's own, not the budget's
    [again] = [r for r in tagged if r.data.tags["shrinkflow.stage"] == "trial-full"]
    ran = {r.data.tags.get("shrinkflow.stage") for r in runs
           if r.data.tags.get("mlflow.parentRunId") == again.info.run_id}
    assert not ran & {"trim", "distill", "prune"}, ran  # at most its static int8 again (the demo made two modes)
    version = client.get_model_version_by_alias("search-model", "champion")
    registered = int(version.tags["search_trial"].removeprefix("trial-"))
    assert _trial_accuracy(runs, registered, full=True) >= _trial_accuracy(runs, 0, full=True)
    assert _trial_accuracy(runs, registered, full=True) >= _trial_accuracy(runs, 0, full=False)
    parent = next(r for r in runs if r.data.tags.get("shrinkflow.flow") == "search")
    table = client.download_artifacts(parent.info.run_id, "search/trials.csv", str(tmp_path))
    import pandas as pd

    rows = pd.read_csv(table, keep_default_na=False)
    assert rows.set_index("trial")["enqueued"].to_dict() == {0: "recipe", 1: "", 2: ""}
    # where each trial's seconds went: its own phases, within what the flow waited for it
    seconds = rows[rows["state"] == "COMPLETE"].filter(like="seconds_").apply(pd.to_numeric)
    phases = seconds[["seconds_run_open", "seconds_stages", "seconds_measure"]]
    assert len(seconds) and (phases.gt(0).all(axis=1) & (phases.sum(axis=1) <= seconds["seconds_wall"])).all()
    assert all(r.data.metrics["seconds.stages"] > 0 for r in _trial_runs(runs) if r.info.status == "FINISHED")
    assert "the config's own settings (recipe): trial-0," in done.stdout


def test_workers_report_epochs_to_the_study_and_the_pruner_stops_the_trials_behind(tmp_path, capfd, caplog):
    """What a trial's worker does with each epoch's row (tasks/search.py's EPOCH_OBSERVER), on a real SQLite
    study with Optuna's successive halving: the recipe's trial reports but is never stopped, a trial behind
    the others at a rung is stopped (TrialPruned) and told PRUNED, one ahead goes on, none is stopped at its
    last epoch, and a study out of reach leaves a trial to run to its end."""
    from optuna.trial import TrialState

    from compression.errors import TrialPruned
    from tasks.search import _EpochReporter, open_study, pruned_outcome, record, study_path, trial_config, trial_pruning
    from tasks.training import EPOCH_OBSERVER

    cfg, teacher = _study_config(tmp_path, **{"search.pruner": "successive_halving"}), {"sha256": "0" * 64}
    plan = VIEW
    trial_cfg = trial_config(cfg, {"distill.train.epochs": 1, "prune.train.epochs": 1, "prune.iterative_steps": 1})
    path = study_path(cfg, teacher)
    path.parent.mkdir(parents=True)
    study = open_study(cfg, teacher, plan)
    asked = [study.ask() for _ in range(4)]  # 0 is the recipe

    def epoch(number: int, val_acc: float, stage: str = "distill", part: int = 0, prunable: bool = True):
        reporter = _EpochReporter(cfg, trial_cfg, path, VIEW["target"], number, prunable)
        reporter(stage, part, {"epoch": 1, "val_accuracy": val_acc})

    epoch(0, 0.60, prunable=False)  # the recipe sets the bar at epoch 1
    epoch(1, 0.90)  # ahead of it: goes on
    with pytest.raises(TrialPruned) as stop:
        epoch(2, 0.70)  # behind the best at epoch 1: stopped after its first epoch, of two
    assert (stop.value.step, stop.value.value) == (1, 0.70)
    epoch(0, 0.10, stage="prune", part=1, prunable=False)  # the recipe far behind: never stopped
    epoch(3, 0.10, stage="prune", part=1)  # step 2, its last: stopping now would save nothing
    record(study, asked[2], pruned_outcome(2, {}, stop.value), plan, 0.01)
    pruned = study.get_trials(deepcopy=False)[2]
    assert pruned.state == TrialState.PRUNED and pruned.intermediate_values == {1: 0.70}
    assert pruned.user_attrs["outcome"]["state"] == "PRUNED"
    assert {t.number: t.intermediate_values for t in study.get_trials(deepcopy=False)} == {
        0: {1: 0.60, 2: 0.10}, 1: {1: 0.90}, 2: {1: 0.70}, 3: {2: 0.10}}
    assert study.get_trials(deepcopy=False)[0].system_attrs["completed_rung_0"] == 0.60  # the recipe's bar
    gone = _EpochReporter(cfg, trial_cfg, tmp_path / "gone" / "study.db", VIEW["target"], 3, True)
    gone("distill", 0, {"epoch": 1, "val_accuracy": 0.0})
    # where the shrinkflow logger writes depends on what configured logging before (the CLI, Prefect, pytest)
    assert "trial 3 cannot report to its study, it runs to its end" in caplog.text + capfd.readouterr().err
    fifth = study.ask().number
    with trial_pruning(cfg, trial_cfg, teacher, plan, fifth, full=False, enqueued=None):  # around a trial's stages
        EPOCH_OBSERVER.get()("distill", 0, {"epoch": 1, "val_accuracy": 0.95})
    with trial_pruning(cfg, trial_cfg, teacher, plan, 1, full=True, enqueued=None):  # a re-training: no trial
        assert EPOCH_OBSERVER.get() is None
    assert EPOCH_OBSERVER.get() is None and study.get_trials(deepcopy=False)[fifth].intermediate_values == {1: 0.95}


BAD_LR_SPACE = {"distill.train.lr": SPACE["distill.train.lr"]}


@pytest.mark.slow
def test_the_pruner_stops_trials_in_a_bad_region_early_and_the_search_goes_on_to_register(prefect, tmp_path):
    """Successive halving on a space three quarters of which cannot learn: at least one trial is stopped after
    its first epoch of two; it is PRUNED in the study, its trial and distill runs end KILLED (not FAILED) tagged
    search.state PRUNED, it never reaches the prune stage, and the search registers a model."""
    command = [sys.executable, "-m", "cli", "search", "configs/smoke.yaml",
               *_settings(tmp_path, 4, **{"search.space": json.dumps(BAD_LR_SPACE), "fidelity.enabled": False,
                                          "search.parallel": 1})]  # one at a time: the recipe sets the bar first
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=_env(tmp_path, prefect), capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    trials = _study_trials(tmp_path)
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned and all(t.intermediate_values.keys() == {1} and t.params["distill.train.lr"] >= 1.0 for t in pruned)
    assert all(t.user_attrs["outcome"]["stopped_at_epoch"] == 1 for t in pruned)
    assert {t.number for t in trials if t.state.name == "COMPLETE"} >= {0}  # the recipe ran to its end
    client, runs = _runs(tmp_path)
    assert not [r for r in runs if r.info.status in ("FAILED", "RUNNING")]
    for trial in pruned:
        [run] = [r for r in _trial_runs(runs) if r.data.tags["shrinkflow.trial"] == str(trial.number)]
        assert run.info.status == "KILLED" and run.data.tags["search.state"] == "PRUNED"
        assert run.data.tags["search.pruned_at_epoch"] == "1" and "error" not in run.data.tags
        stages = {r.data.tags["shrinkflow.stage"]: r for r in runs
                  if r.data.tags.get("mlflow.parentRunId") == run.info.run_id}
        assert "prune" not in stages and stages["distill"].info.status == "KILLED"
        assert stages["distill"].data.tags["search.state"] == "PRUNED"
    parent = next(r for r in runs if r.data.tags.get("shrinkflow.flow") == "search")
    assert parent.data.metrics["trials_pruned"] == len(pruned)
    assert parent.data.tags["search.pruner"] == "successive_halving"
    assert client.get_model_version_by_alias("search-model", "champion")
    assert f"{len(pruned)} pruned" in done.stdout and "after epoch 1 at val accuracy" in done.stdout


def test_each_pruner_setting_is_optunas_own_and_hyperband_reports_from_a_worker(tmp_path):
    import optuna

    from tasks.search import _EpochReporter, make_pruner, open_study, study_path, trial_config

    kinds = {name: type(make_pruner(_study_config(tmp_path, **{"search.pruner": name})))
             for name in ("none", "successive_halving", "hyperband")}
    assert kinds == {"none": optuna.pruners.NopPruner, "successive_halving": optuna.pruners.SuccessiveHalvingPruner,
                     "hyperband": optuna.pruners.HyperbandPruner}
    cfg, teacher = _study_config(tmp_path, **{"search.pruner": "hyperband"}), {"sha256": "1" * 64}
    plan = VIEW
    path = study_path(cfg, teacher)
    path.parent.mkdir(parents=True)
    study = open_study(cfg, teacher, plan)
    numbers = [study.ask().number for _ in range(3)]
    trial_cfg = trial_config(cfg, {"distill.train.epochs": 1, "prune.train.epochs": 1})  # 1 + 2 steps x 1 epoch
    for number, value in zip(numbers, (0.5, 0.6, 0.7)):  # improving: none is behind
        reporter = _EpochReporter(cfg, trial_cfg, path, VIEW["target"], number, prunable=True)
        reporter("distill", 0, {"epoch": 1, "val_accuracy": value})
        reporter("prune", 1, {"epoch": 1, "val_accuracy": value})
    assert [t.intermediate_values for t in study.get_trials(deepcopy=False)] == [
        {1: 0.5, 2: 0.5}, {1: 0.6, 2: 0.6}, {1: 0.7, 2: 0.7}]


def _search_with_targets(tmp_path: Path, prefect: str, targets: list[str]) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cli", "search", "configs/smoke.yaml",
               *_settings(tmp_path, 2, **{"search.space": json.dumps(RECIPE_SPACE), "fidelity.enabled": False,
                                          "search.budget.max": json.dumps(targets)})]
    done = subprocess.run(command, cwd=PROJECT_ROOT, env=_env(tmp_path, prefect), capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_two_targets_register_a_model_each_within_its_budget_and_a_third_reuses_their_trials(prefect, tmp_path):
    """One search, two MACs targets: each target's own trials (its own study), one registered version per target
    under its alias, within that target's budget, with lineage tags naming it; the same search with a third
    target runs trials for the new target only (the others' come from the study) and registers it too."""
    done = _search_with_targets(tmp_path, prefect, ["10%", "25%"])
    client, runs = _runs(tmp_path)
    [plan] = [r for r in runs if r.data.tags.get("shrinkflow.stage") == "plan_search"]
    limits = {label: plan.data.metrics[f"budget_limit.{label}"] for label in ("macs-10pct", "macs-25pct")}
    assert limits["macs-10pct"] < limits["macs-25pct"]
    for label, limit in limits.items():
        version = client.get_model_version_by_alias("search-model", label)
        # a file both targets picked is one version: each target's own tag stays
        assert version.tags[f"search_budget.{label}"] == f"macs<={limit:.6g}" and version.tags["search_target"]
        name = f"{version.tags['search_trial']}-full"
        [full] = [r for r in _trial_runs(runs, full=True) if r.data.tags["mlflow.runName"] == name]
        assert full.data.metrics["macs"] <= limit
        assert f"as models:/search-model@{label} " in done.stdout
    studies = list((tmp_path / "outputs" / "search").glob("*/study.db"))
    assert len(studies) == 1
    names = {s.study_name: s.n_trials for s in optuna.get_all_study_summaries(f"sqlite:///{studies[0]}")}
    assert names == {"macs-10pct": 2, "macs-25pct": 2}
    assert {(r.data.tags["search.target"], r.data.tags.get("search.enqueued")) for r in _trial_runs(runs)} == {
        ("macs-10pct", "recipe"), ("macs-10pct", None), ("macs-25pct", "recipe"), ("macs-25pct", None)}
    parent = next(r for r in runs if r.data.tags.get("shrinkflow.flow") == "search")
    assert parent.data.tags["search.targets"] == "macs-10pct,macs-25pct"
    assert {a.path for a in client.list_artifacts(parent.info.run_id, "search")} >= {
        "search/pareto.png", "search/trials.csv", "search/best_so_far.png"}

    _search_with_targets(tmp_path, prefect, ["10%", "25%", "50%"])
    client, later = _runs(tmp_path)
    new = [r for r in _trial_runs(later) if r.info.run_id not in {run.info.run_id for run in runs}]
    assert sorted(r.data.tags["search.target"] for r in new) == ["macs-50pct", "macs-50pct"]
    assert client.get_model_version_by_alias("search-model", "macs-50pct")
    assert {s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{studies[0]}")} == {
        "macs-10pct", "macs-25pct", "macs-50pct"}

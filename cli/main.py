"""`shrinkflow` command line: run, search, stability, predict, reproduce, compare, node, demo.

Bad input ends with one line on stderr and exit code 2; a failed run or a bug with one line, the path of
the log file that holds the traceback, and exit code 1. Progress and results go to stdout (cli/console.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

from compression import first_line
from compression.errors import is_bad_input
from tasks.config import PROJECT_ROOT


def _environment_defaults(verbose: bool) -> None:
    """Prefect reads its settings when imported: set them first."""
    # all of it reaches the log file; the console gets shrinkflow's own lines
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")


class NotFoundError(LookupError):
    """A run or experiment the command was asked about does not exist (bad input, exit 2)."""


def _flow(name: str):
    """The flow a pipeline run of `name` came from (what reproduce runs again)."""
    if name == "pretrain":
        from flows.pretrain import pretrain
        return pretrain
    if name == "search":  # parallel trials finish in any order, so TPE's later suggestions differ run to run
        raise NotFoundError("search runs are not reproduced trial for trial; run `shrinkflow search` with the "
                            "run's config.yaml artifact instead")
    if name != "compress":
        raise NotFoundError(f"runs of the {name} flow cannot be reproduced; compress and pretrain runs can")
    from flows.compress import compress
    return compress


def _print_result(result: dict) -> None:
    print(f"\nMLflow run {result['run_id']} ({result['tracking_uri']})")
    print(f"stages run: {', '.join(result['executed'])}"
          + (f"; cached: {', '.join(result['cached'])}" if result["cached"] else ""))
    print("\n" + result["markdown"] + "\n")
    if result.get("kd_gain") is not None:
        print(f"KD gain (student with KD - without, test accuracy): {100 * result['kd_gain']:+.2f} points")
    if result.get("registered"):
        reg = result["registered"]
        print(f"registered {reg['candidate']} as {reg['uri']} (version {reg['version']}, "
              f"accuracy {reg['accuracy']:.4f}, "
              f"serves on {reg['runtime']})")


def _preflight(cfg) -> None:
    """The flows' checks, run here first: bad input fails before Prefect starts."""
    from flows.chain import refusable_stages
    from tasks.preflight import preflight

    preflight(cfg, refusable_stages(cfg))


def cmd_run(args) -> int:
    from tasks.config import load_config, parse_set_options

    overrides = parse_set_options(args.set or [])
    _preflight(load_config(args.config, overrides))  # bad input fails here, before Prefect starts
    result = _flow(args.flow)(config=args.config, overrides=overrides)
    _print_result(result)
    return 0


def cmd_search(args) -> int:
    from flows.search import search
    from tasks.config import load_config, parse_set_options
    from tasks.preflight import check_dask, check_search_cluster
    from tasks.search import check_constructible

    overrides = parse_set_options(args.set or [])
    if args.dask_address:
        overrides["search.dask_address"] = args.dask_address
    cfg = load_config(args.config, overrides)
    _preflight(cfg)
    check_search_cluster(cfg)
    check_constructible(cfg)
    check_dask(cfg.search.dask_address or os.environ.get("SHRINKFLOW_DASK_ADDRESS"))
    result = search(config=args.config, overrides=overrides)
    _print_search(result)
    return 0


def cmd_stability(args) -> int:
    from flows.stability import stability
    from tasks.config import load_config, parse_set_options

    overrides = parse_set_options(args.set or [])
    _preflight(load_config(args.config, overrides))  # bad input fails here, before Prefect starts
    result = stability(config=args.config, overrides=overrides, seeds=args.seeds)
    print(f"\nMLflow run {result['run_id']} ({result['tracking_uri']})")
    for run in result["runs"]:
        cached = f"; cached: {', '.join(run['cached'])}" if run["cached"] else ""
        print(f"seed {run['seed']}: pipeline run {run['run_id']}, stages run: {', '.join(run['executed'])}{cached}")
    print("\n" + result["markdown"] + "\n")
    return 0


def _seed_count(text: str) -> int:
    """--seeds: an integer of at least 2 (else a one-line usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        value = None
    if value is None or value < 2:
        raise argparse.ArgumentTypeError(f"needs an integer of at least 2 (churn needs two seeds), got {text!r}")
    return value


def cmd_predict(args) -> int:
    from flows.predict import predict
    from tasks.config import load_config, parse_set_options
    from tasks.predict import output_dir, registered_version, store_of
    from tasks.tracking_uri import check_tracking

    # Bad input fails here, before Prefect starts: the config, the image folder, the store, the model.
    overrides = parse_set_options(args.set or [])
    cfg = load_config(args.config, overrides) if args.config else None
    if args.images and not Path(args.images).is_dir():
        raise NotFoundError(f"image folder {args.images} does not exist")
    output_dir(args.output)
    store = store_of(cfg, args.tracking_uri)
    check_tracking(store)
    registered_version(args.model, store)
    result = predict(model=args.model, images=args.images, config=args.config, overrides=overrides,
                     experiment=args.experiment, tracking_uri=args.tracking_uri, output=args.output,
                     bad_images=args.bad_images)
    print(f"\nMLflow run {result['run_id']} ({result['tracking_uri']})")
    version = f" version {result['model_version']}" if result["model_version"] else ""
    skipped = f" ({result['skipped']} unreadable skipped)" if result.get("skipped") else ""
    print(f"{args.model}{version} on {result['runtime']}: {result['images']} images{skipped} -> {result['csv']}")
    print("predicted: " + ", ".join(f"{name} {count}" for name, count in result["counts"].items()))
    if result["accuracy"] is not None:
        print(f"accuracy: {result['accuracy']:.4f}")
    return 0


def cmd_node(args) -> int:
    from pydantic import ValidationError

    from tasks.config import ConfigError, DistributedConfig, format_validation_error
    from tasks.distributed import follow
    from tasks.preflight import check_training_processes

    try:
        settings = DistributedConfig(processes_per_node=args.nproc_per_node, nodes=args.nnodes, backend=args.backend,
                                     rdzv_endpoint=args.rdzv_endpoint, timeout_seconds=args.timeout)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, "shrinkflow node")) from None
    check_training_processes(settings, "--nproc-per-node")
    print(f"joining the distributed stages at {args.rdzv_endpoint} with {args.nproc_per_node} process(es)"
          f"{' (one job)' if args.once else '; Ctrl-C stops'}", flush=True)
    joined = follow(settings, once=args.once)
    print(f"joined {joined} job(s)")
    return 0


def _amount(value: float) -> str:
    """3,300,838 MACs or bytes; 2.41 ms."""
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _print_search(result: dict) -> None:
    plan, trials = result["plan"], result["trials"]
    completed = [t for t in trials if t["state"] == "COMPLETE"]
    pruned = sum(t["state"] == "PRUNED" for t in trials)
    budgets = ", ".join(f"{plan['metric']} <= {_amount(t['limit'])}"
                        + (f" ({t['label']})" if len(plan["targets"]) > 1 else "") for t in plan["targets"])
    print(f"\nMLflow run {result['run_id']} ({result['tracking_uri']})")
    print(f"budget: {budgets} (teacher {_amount(plan['teacher'][plan['metric']])}); "
          f"{len(completed)} trials completed, {pruned} pruned, {len(trials) - len(completed) - pruned} failed; "
          f"{len(result['finalists'])} trained again at full epochs")
    print("\n" + result["markdown"] + "\n")
    from compression.search import RECIPE  # torch is loaded by now: the search ran in this process

    for recipe in (t for t in trials if t.get("enqueued") == RECIPE and t["state"] == "COMPLETE"):
        print(f"the config's own settings (recipe): {recipe.get('name', recipe['number'])}, val accuracy "
              f"{recipe['accuracy']:.4f} at the trials' epochs")
    registered = result.get("registered")
    for reg in (registered or {}).get("registrations", [registered] if registered else []):
        print(f"registered {reg['candidate']} as {reg['uri']} (version {reg['version']}, test accuracy "
              f"{reg['accuracy']:.4f})")
    if not registered:
        reasons = ("registration is disabled (register.enabled: false)" if not result.get("register_enabled", True)
                   else "no trial completed" if not completed else "no finalist completed its full-epoch training")
        print(f"nothing registered: {reasons}")


def _runs(tracking_uri: str | None, experiment: str, filter_string: str):
    from tasks.mlflow_store import make_client
    from tasks.tracking_uri import check_tracking, default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    check_tracking(uri)
    client = make_client(uri)
    found = client.get_experiment_by_name(experiment)
    if found is None:
        raise NotFoundError(f"experiment {experiment!r} not found at {uri}")
    runs = client.search_runs([found.experiment_id], filter_string, order_by=["attributes.start_time DESC"],
                              max_results=10000)
    return _runs_frame(runs)


def _runs_frame(runs):
    """The columns `mlflow.search_runs` would give, from MlflowClient runs (no process-global state)."""
    import pandas as pd

    rows = [{"run_id": r.info.run_id, "status": r.info.status,
             **{f"tags.{k}": v for k, v in r.data.tags.items()},
             **{f"params.{k}": v for k, v in r.data.params.items()},
             **{f"metrics.{k}": v for k, v in r.data.metrics.items()}} for r in runs]
    frame = pd.DataFrame(rows)
    for column in ("tags.mlflow.runName", "tags.shrinkflow.config_hash", "params.seed", "tags.shrinkflow.trial",
                   "tags.shrinkflow.study", "tags.error", "tags.search.enqueued", "tags.search.state",
                   "tags.search.target"):
        if column not in frame:
            frame[column] = None
    return frame


def _pipelines_table(runs):
    from compression.comparison import SUMMARY_FIGURES

    # Each candidate's accuracy and fidelity figures, sorted: a candidate's columns stand together.
    metric_cols = sorted(c for c in runs.columns if c.startswith("metrics.") and (
        c.endswith(".accuracy") or c == "metrics.kd_gain" or any(c.endswith(f".{f}") for f in SUMMARY_FIGURES)))
    return runs[["run_id", "tags.mlflow.runName", "status", "tags.shrinkflow.config_hash", "params.seed"] + metric_cols]


def _trials_table(runs):
    """A search's trials: target, number, status, the settings that varied, what they measured, the error if any."""
    settings = sorted(c for c in runs.columns if c.startswith("params.") and c not in (
        "params.trial", "params.full_fidelity", "params.seed"))
    measured = [c for c in ("metrics.accuracy", "metrics.macs", "metrics.params", "metrics.size_bytes")
                if c in runs.columns]
    # The number from the run's tags: a run cut off by a kill can lack its params, never its tags.
    # status KILLED with search.state PRUNED: the pruner stopped the trial (MLflow has no pruned status).
    table = runs[["tags.search.target", "tags.shrinkflow.trial", "tags.mlflow.runName", "status", "tags.search.state",
                  "tags.search.enqueued", *settings, *measured, "tags.error", "run_id"]].rename(
        columns={"tags.search.target": "target", "tags.shrinkflow.trial": "trial", "tags.search.state": "search_state",
                 "tags.search.enqueued": "enqueued"})
    table = table.iloc[::-1]  # oldest first within a trial (runs come newest first)
    # by target (trials logged before searches had targets have none), then by number within it
    table = table.assign(target=table["target"].fillna(""), order=table["trial"].astype(int))
    return table.sort_values(["target", "order"], kind="stable").drop(columns="order")


def _search_trials(args):
    """The trials of the search run's study: after a search was stopped and run again, the trials the first
    run finished belong to the search as much as those of the run that completed it."""
    import re

    found = re.fullmatch(r"[0-9a-f]{32}", args.search)  # an MLflow run id; anything else would break the filter
    search = _runs(args.tracking_uri, args.experiment, f"attributes.run_id = '{args.search}'") if found else None
    if search is None or search.empty:
        raise NotFoundError(f"search run {args.search} not found in experiment {args.experiment!r}")
    study = search["tags.shrinkflow.study"].iloc[0]
    which = f"tags.`shrinkflow.study` = '{study}'" if isinstance(study, str) else \
        f"tags.`mlflow.parentRunId` = '{args.search}'"  # a search logged before runs were tagged with their study
    return _runs(args.tracking_uri, args.experiment, f"{which} and tags.`shrinkflow.kind` = 'trial'")


def cmd_compare(args) -> int:
    if args.search:
        runs = _search_trials(args)
        what, table = "trials of search run " + args.search, _trials_table if not runs.empty else None
    else:
        runs = _runs(args.tracking_uri, args.experiment, "tags.`shrinkflow.kind` = 'pipeline'")
        what, table = f"pipeline runs in experiment {args.experiment!r}", _pipelines_table
    if runs.empty:
        print(f"no {what}")
        return 0
    table = table(runs).rename(
        columns=lambda c: c.removeprefix("metrics.").removeprefix("tags.").removeprefix("params."))
    table = table.rename(columns={"mlflow.runName": "run_name", "shrinkflow.config_hash": "config_hash"})
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {len(table)} runs to {args.csv}")
    else:
        import pandas as pd

        with pd.option_context("display.max_columns", None, "display.width", 200,
                               "display.float_format", "{:.4f}".format):
            print(table.to_string(index=False))
    return 0


def cmd_reproduce(args) -> int:
    import yaml
    from mlflow.exceptions import MlflowException

    from tasks.config import config_from_dict
    from tasks.mlflow_store import make_client
    from tasks.tracking_uri import check_tracking, default_tracking_uri

    uri = args.tracking_uri or default_tracking_uri()
    check_tracking(uri)
    client = make_client(uri)
    try:
        original = client.get_run(args.run_id)
    except MlflowException:
        raise NotFoundError(f"run {args.run_id} not found at {uri}") from None
    if original.data.tags.get("shrinkflow.kind") != "pipeline":
        raise NotFoundError(f"run {args.run_id} is not a shrinkflow pipeline run")
    with tempfile.TemporaryDirectory(prefix="shrinkflow-reproduce-") as tmp:
        try:
            config_path = Path(client.download_artifacts(args.run_id, "config.yaml", tmp))
        except MlflowException:  # a run stopped before it logged its config
            raise NotFoundError(f"run {args.run_id} has no logged config.yaml to reproduce") from None
        raw = yaml.safe_load(config_path.read_text())
        raw.setdefault("tracking", {})["uri"] = uri  # the logged URI may be redacted
        # A fresh output directory: every stage really runs again instead of coming from the cache.
        raw["output_dir"] = str(Path(args.output_dir or PROJECT_ROOT / "outputs" / "reproduce" / args.run_id).resolve())
        config_from_dict(raw, f"config of run {args.run_id}")
        config_path.write_text(yaml.safe_dump(raw))
        flow = _flow(original.data.tags.get("shrinkflow.flow", "compress"))
        result = flow(config=str(config_path))
    _print_result(result)
    old = {k: v for k, v in original.data.metrics.items() if k.endswith(".accuracy")}
    new = client.get_run(result["run_id"]).data.metrics
    print("metric                      original   reproduced")
    same = True
    for key, value in sorted(old.items()):
        print(f"{key:<28}{value:>9.4f}{new.get(key, float('nan')):>12.4f}")
        same &= abs(new.get(key, float("nan")) - value) < 1e-9
    print("identical" if same else "DIFFERENT")
    hashes = [run.data.tags.get("shrinkflow.config_hash") for run in (original, client.get_run(result["run_id"]))]
    print(f"config_hash {hashes[1]}" + (" (the original's)" if hashes[0] == hashes[1] else f", original {hashes[0]}"))
    return 0 if same else 1


def cmd_demo(args) -> int:
    started = time.perf_counter()
    print("shrinkflow demo: 1) pretrain resnet18 on Fashion-MNIST classes 0-4, register it;"
          " 2) compress it for classes 5-9 with 100 labels per class.\n", flush=True)
    from flows.compress import compress
    from flows.pretrain import pretrain

    upstream = pretrain(config="configs/pretrain.yaml")
    print(f"upstream model: {upstream['registered']['uri']} (test accuracy {upstream['registered']['accuracy']:.4f})\n")
    result = compress(config="configs/quickstart.yaml")
    _print_result(result)
    print(f"demo finished in {(time.perf_counter() - started) / 60:.1f} min")
    print(f"browse the runs: cd {PROJECT_ROOT} && .venv/bin/mlflow ui --backend-store-uri sqlite:///mlflow.db"
          "  (then open http://127.0.0.1:5000)")
    if result.get("registered"):
        print(f"serve the model: cd {PROJECT_ROOT} && PATH=\"$PWD/.venv/bin:$PATH\" "
              "MLFLOW_TRACKING_URI=sqlite:///mlflow.db "
              f"mlflow models serve -m {result['registered']['uri']} --env-manager local -h 127.0.0.1 -p 5001"
              "  (README: Serve the model)")
    return 0


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):
        """A usage error is bad input too: one line (not argparse's usage block), exit 2."""
        self.exit(2, f"shrinkflow: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="shrinkflow", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show every library's log lines and tracebacks on stderr (else only in the log file)")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="run a pipeline config")
    run.add_argument("config", help="YAML config (relative to the project root or the current directory)")
    run.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted-key override, e.g. prune.ratio=0.6")
    run.add_argument("--flow", choices=["compress", "pretrain"], default="compress")
    run.set_defaults(func=cmd_run)
    rep = sub.add_parser("reproduce", help="re-run a pipeline run from its logged config and compare metrics")
    rep.add_argument("run_id")
    rep.add_argument("--tracking-uri")
    rep.add_argument("--output-dir", help="where the re-run writes (default outputs/reproduce/<run-id>)")
    rep.set_defaults(func=cmd_reproduce)
    srch = sub.add_parser("search", help="search for the most accurate model within a budget (Optuna trials on Dask)")
    srch.add_argument("config", help="YAML config with a search: section")
    srch.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted-key override, e.g. search.trials=12")
    srch.add_argument("--dask-address", help="tcp://host:8786 of a running Dask scheduler (default: a local cluster)")
    srch.set_defaults(func=cmd_search)
    stab = sub.add_parser("stability", help="run a pipeline config with several seeds and report how much every "
                                              "figure varies (nothing is registered)")
    stab.add_argument("config", help="YAML config (relative to the project root or the current directory)")
    stab.add_argument("--seeds", type=_seed_count, default=3, metavar="N",
                      help="pipelines, with the config's seed and the N-1 after it (at least 2; default 3)")
    stab.add_argument("--set", action="append", metavar="KEY=VALUE", help="dotted-key override, e.g. prune.ratio=0.6")
    stab.set_defaults(func=cmd_stability)
    pred = sub.add_parser("predict", help="score images with a registered model; predictions CSV on an MLflow run")
    pred.add_argument("model", help="registered model, models:/name@alias or models:/name/version")
    what = pred.add_mutually_exclusive_group(required=True)
    what.add_argument("--images", help="folder of images: root/<class>/<image> (class by name or label id) or flat")
    what.add_argument("--config", help="score the test split of this config's data")
    pred.add_argument("--set", action="append", metavar="KEY=VALUE",
                      help="override in --config, e.g. data.test_per_class=100")
    pred.add_argument("--experiment", default="shrinkflow-predictions")
    pred.add_argument("--tracking-uri", help="MLflow store of the model registry (default as for run)")
    pred.add_argument("--output", help="CSV path (default outputs/predictions/<run-id>/predictions.csv)")
    pred.add_argument("--bad-images", choices=["skip", "fail"], default="skip",
                      help="an image file that cannot be read: left out and counted (skip), or exit 2 (fail); "
                           "with --config its data.bad_images decides")
    pred.set_defaults(func=cmd_predict)
    cmp_ = sub.add_parser("compare", help="table of the pipeline runs of an experiment")
    cmp_.add_argument("--experiment", default="shrinkflow")
    cmp_.add_argument("--tracking-uri")
    cmp_.add_argument("--csv", help="write the table to this CSV file instead of printing it")
    cmp_.add_argument("--search", metavar="RUN_ID", help="the trials of this search run instead")
    cmp_.set_defaults(func=cmd_compare)
    node = sub.add_parser("node", help="another machine's training processes for a pipeline's distributed stages")
    node.add_argument("--rdzv-endpoint", required=True, metavar="HOST:PORT",
                      help="the pipeline's distributed.rdzv_endpoint")
    node.add_argument("--nnodes", type=int, required=True, help="machines in all (the pipeline's distributed.nodes)")
    node.add_argument("--nproc-per-node", type=int, default=1, help="training processes on this machine")
    node.add_argument("--backend", choices=["auto", "gloo", "nccl"], default="auto")
    node.add_argument("--timeout", type=float, default=1800.0, help="seconds to wait for the other processes")
    node.add_argument("--once", action="store_true", help="join the next job only, then exit")
    node.set_defaults(func=cmd_node)
    demo = sub.add_parser("demo", help="pretrain, then compress: the quickstart")
    demo.set_defaults(func=cmd_demo)
    return parser


def _run_command(args, log_path: Path, log_stream, real_stderr) -> int:
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("shrinkflow: interrupted", file=real_stderr)
        return 130
    except Exception as exc:  # every failure ends as one line; the traceback goes to the log (logged with exc_info)
        logging.getLogger("shrinkflow.cli").debug("command failed", exc_info=True)
        log_stream.flush()
        if is_bad_input(exc):
            print(f"shrinkflow: error: {first_line(exc)}", file=real_stderr)
            return 2
        # A failed run: its MLflow runs are already marked FAILED.
        print(f"shrinkflow: run failed: {type(exc).__name__}: {first_line(exc)} (traceback in {log_path})",
              file=real_stderr)
        return 1


def _config_error(args) -> str | None:
    """A config file or --set value that cannot be used, found before torch, MLflow and Prefect are imported:
    the commonest mistake is answered in a fraction of a second instead of several."""
    from tasks.config import ConfigError, load_config, parse_set_options

    if getattr(args, "config", None) is None or not hasattr(args, "set"):
        return None
    try:
        load_config(args.config, parse_set_options(args.set or []))
    except ConfigError as exc:
        return first_line(exc)
    return None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (problem := _config_error(args)) is not None:
        print(f"shrinkflow: error: {problem}", file=sys.stderr)
        return 2
    _environment_defaults(args.verbose)
    from cli.console import new_log_file, redirected_stderr, routed_logging

    log_path = new_log_file()
    with open(log_path, "a", buffering=1) as log_stream, routed_logging(log_stream, args.verbose), \
            redirected_stderr(log_stream, args.verbose) as real_stderr:
        return _run_command(args, log_path, log_stream, real_stderr)


if __name__ == "__main__":
    sys.exit(main())

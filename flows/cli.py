"""`shrinkflow` command line: run, reproduce, compare, demo.

Bad input ends with one line on stderr and exit code 2; a failed run with exit code 1.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
import tempfile
import time
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parents[1]


def _setup_logging(verbose: bool) -> None:
    os.environ.setdefault("PREFECT_LOGGING_LEVEL", "INFO" if verbose else "WARNING")
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "90")
    os.environ.setdefault("GIT_PYTHON_REFRESH", "quiet")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    logger = logging.getLogger("shrinkflow")
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    for noisy in ("mlflow", "alembic", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _flow(name: str):
    if name == "pretrain":
        from flows.pretrain import pretrain
        return pretrain
    from flows.compress import compress
    return compress


def _print_result(result: dict) -> None:
    print(f"\nMLflow run {result['run_id']} ({result['tracking_uri']})")
    print(f"stages run: {', '.join(result['executed'])}" + (f"; cached: {', '.join(result['cached'])}" if result["cached"] else ""))
    print("\n" + result["markdown"] + "\n")
    if result.get("kd_gain") is not None:
        print(f"KD gain (student with KD - without, test accuracy): {100 * result['kd_gain']:+.2f} points")
    if result.get("registered"):
        reg = result["registered"]
        print(f"registered {reg['candidate']} as {reg['uri']} (version {reg['version']}, accuracy {reg['accuracy']:.4f})")


def cmd_run(args) -> int:
    from tasks.config import load_config, parse_set_options

    overrides = parse_set_options(args.set or [])
    load_config(args.config, overrides)  # validate before starting Prefect
    result = _flow(args.flow)(config=args.config, overrides=overrides)
    _print_result(result)
    return 0


def _pipeline_runs(tracking_uri: str | None, experiment: str):
    import mlflow

    from tasks.tracking import check_tracking, default_tracking_uri

    uri = tracking_uri or default_tracking_uri()
    check_tracking(uri)
    mlflow.set_tracking_uri(uri)
    if mlflow.get_experiment_by_name(experiment) is None:
        raise LookupError(f"experiment {experiment!r} not found at {uri}")
    return mlflow.search_runs(experiment_names=[experiment], filter_string="tags.`shrinkflow.kind` = 'pipeline'",
                              order_by=["start_time DESC"])


def cmd_compare(args) -> int:
    runs = _pipeline_runs(args.tracking_uri, args.experiment)
    if runs.empty:
        print(f"no pipeline runs in experiment {args.experiment!r}")
        return 0
    metric_cols = sorted(c for c in runs.columns if c.startswith("metrics.") and
                         (c.endswith(".accuracy") or c == "metrics.kd_gain"))
    table = runs[["run_id", "tags.mlflow.runName", "status", "tags.shrinkflow.config_hash", "params.seed"] + metric_cols]
    table = table.rename(columns=lambda c: c.removeprefix("metrics.").removeprefix("tags.").removeprefix("params."))
    table = table.rename(columns={"mlflow.runName": "run_name", "shrinkflow.config_hash": "config_hash"})
    if args.csv:
        table.to_csv(args.csv, index=False)
        print(f"wrote {len(table)} runs to {args.csv}")
    else:
        import pandas as pd

        with pd.option_context("display.max_columns", None, "display.width", 200, "display.float_format", "{:.4f}".format):
            print(table.to_string(index=False))
    return 0


def cmd_reproduce(args) -> int:
    import mlflow
    import yaml

    from tasks.config import config_from_dict
    from tasks.tracking import check_tracking, default_tracking_uri, make_client

    uri = args.tracking_uri or default_tracking_uri()
    check_tracking(uri)
    client = make_client(uri)
    try:
        original = client.get_run(args.run_id)
    except mlflow.exceptions.MlflowException:
        raise LookupError(f"run {args.run_id} not found at {uri}") from None
    if original.data.tags.get("shrinkflow.kind") != "pipeline":
        raise LookupError(f"run {args.run_id} is not a shrinkflow pipeline run")
    path = mlflow.artifacts.download_artifacts(run_id=args.run_id, artifact_path="config.yaml", tracking_uri=uri)
    raw = yaml.safe_load(Path(path).read_text())
    raw.setdefault("tracking", {})["uri"] = uri  # the logged URI may be redacted
    # A fresh output directory: every stage really runs again instead of coming from the cache.
    raw["output_dir"] = str(Path(args.output_dir or PROJECT_ROOT / "outputs" / "reproduce" / args.run_id).resolve())
    config_from_dict(raw, f"config of run {args.run_id}")
    with tempfile.TemporaryDirectory() as tmp:
        config_path = Path(tmp) / "config.yaml"
        config_path.write_text(yaml.safe_dump(raw))
        result = _flow(original.data.tags.get("shrinkflow.flow", "compress"))(config=str(config_path))
    _print_result(result)
    old = {k: v for k, v in original.data.metrics.items() if k.endswith(".accuracy")}
    new = client.get_run(result["run_id"]).data.metrics
    print("metric                      original   reproduced")
    same = True
    for key, value in sorted(old.items()):
        print(f"{key:<28}{value:>9.4f}{new.get(key, float('nan')):>12.4f}")
        same &= abs(new.get(key, float("nan")) - value) < 1e-9
    print("identical" if same else "DIFFERENT")
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
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="shrinkflow", description=__doc__.splitlines()[0])
    parser.add_argument("-v", "--verbose", action="store_true", help="show Prefect's own log lines too")
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
    cmp_ = sub.add_parser("compare", help="table of the pipeline runs of an experiment")
    cmp_.add_argument("--experiment", default="shrinkflow")
    cmp_.add_argument("--tracking-uri")
    cmp_.add_argument("--csv", help="write the table to this CSV file instead of printing it")
    cmp_.set_defaults(func=cmd_compare)
    demo = sub.add_parser("demo", help="pretrain, then compress: the quickstart")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    _setup_logging(args.verbose)
    from compression import CompressionError
    from tasks.config import ConfigError

    try:
        return args.func(args)
    except (ConfigError, CompressionError, LookupError, ConnectionError, PermissionError) as exc:
        print(f"shrinkflow: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("shrinkflow: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a failed run: the MLflow runs are already marked FAILED
        print(f"shrinkflow: run failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
              file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())

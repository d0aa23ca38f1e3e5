"""Compression results and the cache, from real runs of the flows:

1. the demo (configs/pretrain.yaml, then configs/quickstart.yaml: classes 5-9, 100 labels per class);
2. the same quickstart again, unchanged: every cached stage is skipped (wall time second / first);
3. all ten Fashion-MNIST classes on the full test set (configs/fmnist10.yaml), then structured pruning
   at two more ratios on the same teacher and students (the cache reuses them).

All runs share one Prefect home and one sqlite MLflow store under bench/.work/compression.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench.common import QUICK, QUICK_PIPELINE, Timer, fresh_store, save, say, use_prefect_env

# BENCH_QUICK=1: one further ratio (the cached teacher and students are reused all the same).
EXTRA_RATIOS = [0.4] if QUICK else [0.4, 0.75]


def main() -> None:
    work = use_prefect_env("compression")
    from mlflow.tracking import MlflowClient

    from flows.compress import compress
    from flows.pretrain import pretrain

    uri = fresh_store(work)
    store = {"tracking.uri": uri, "output_dir": str(work / "outputs")}
    results = {}

    def run(key: str, flow, config: str, note: str, **extra) -> None:
        say(f"compression: {key}: {note}")
        with Timer() as t:
            result = flow(config, {**store, **(QUICK_PIPELINE if QUICK else {}), **extra})
        client = MlflowClient(uri)
        tags = client.get_run(result["run_id"]).data.tags
        results[key] = {
            "seconds": t.seconds, "table": result["table"], "markdown": result["markdown"],
            "kd_gain": result["kd_gain"], "registered": result["registered"], "executed": result["executed"],
            "cached": result["cached"], "run_id": result["run_id"],
            "epoch_times": {stage: [m.value for m in client.get_metric_history(tags[f"stage.{stage}.run_id"],
                                                                                 "epoch_time")]
                            for stage in ("finetune", "distill") if f"stage.{stage}.run_id" in tags},
        }
        say(f"compression: {key} took {t.seconds / 60:.1f} min")

    run("pretrain", pretrain, "configs/pretrain.yaml", "demo step 1 (includes Prefect's start-up)")
    run("quickstart", compress, "configs/quickstart.yaml", "demo step 2")
    run("quickstart_cached", compress, "configs/quickstart.yaml", "the same again, unchanged")
    run("fmnist10", compress, "configs/fmnist10.yaml", "all ten classes")
    for ratio in EXTRA_RATIOS:
        run(f"fmnist10_ratio_{ratio}", compress, "configs/fmnist10.yaml", f"prune.ratio={ratio}",
            **{"prune.ratio": ratio, "prune.method": "structured", "register.enabled": False})
    save("compression", {"runs": results, "extra_ratios": EXTRA_RATIOS,
                         "command": "python bench/compression_results.py", "tracking_uri": uri})


if __name__ == "__main__":
    main()

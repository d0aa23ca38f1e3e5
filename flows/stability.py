"""The `stability` flow: the pipeline of a config run with several seeds, and how much every figure moves
between them (docs/fidelity.md, "Stability across seeds").

stability: load (first seed's data) -> compress with seed s, s+1, ..., nothing registered (each a pipeline run
of its own; stages whose cache key is unchanged, all of them for a seed run before, come from the cache)
-> stability_report (mean, sd and worst case per figure; teacher-against-teacher churn; Hooker's forgotten
images on the first seed's test split).
"""

from __future__ import annotations

from prefect import flow

from flows.compress import compress
from flows.pipeline import tracked_pipeline
from tasks.config import ConfigError, PipelineConfig, load_config
from tasks.data import load_data
from tasks.fidelity import stability_report
from tasks.tracking_uri import redact

STABILITY_KIND = "stability"


def check_seeds(seeds: int) -> None:
    if not isinstance(seeds, int) or isinstance(seeds, bool) or seeds < 2:
        raise ConfigError(f"seeds: at least 2 seeds are needed to measure stability, got {seeds!r}")


def seed_overrides(cfg: PipelineConfig, overrides: dict, seed: int) -> dict:
    """The overrides of one seed's pipeline: the seed, a run name that says it, and no registration (a
    stability run measures; it must not move the registry's aliases)."""
    return {**overrides, "seed": seed, "name": f"{cfg.name}-seed{seed}", "register.enabled": False}


def run_stability(config: str, overrides: dict, cfg: PipelineConfig, seeds: int) -> dict:
    seed_list = [cfg.seed + i for i in range(seeds)]
    with tracked_pipeline(cfg, STABILITY_KIND) as run:
        # Not a pipeline run itself: `shrinkflow compare` lists only the seeds' pipeline runs.
        run.parent.set_tags({"shrinkflow.kind": STABILITY_KIND, "shrinkflow.seeds": ",".join(map(str, seed_list))})
        data = run(load_data)
        client, runs = run.ctx.client(), []
        for seed in seed_list:
            result = compress(config, seed_overrides(cfg, overrides, seed))
            client.set_tag(result["run_id"], "shrinkflow.stability_run_id", run.ctx.parent_run_id)
            runs.append({"seed": seed, "run_id": result["run_id"], "rows": result["rows"],
                         "executed": result["executed"], "cached": result["cached"]})
        report = run(stability_report, data=data, runs=[{k: r[k] for k in ("seed", "run_id", "rows")} for r in runs])
        run.parent.log_metrics(report["metrics"])
        run.parent.log_text(report["markdown"] + "\n", "stability.md")
        return {"run_id": run.ctx.parent_run_id, "tracking_uri": redact(run.ctx.tracking_uri), "seeds": seed_list,
                "runs": [{k: r[k] for k in ("seed", "run_id", "executed", "cached")} for r in runs],
                "markdown": report["markdown"], "metrics": report["metrics"], "population": report["population"],
                "spreads": report["spreads"]}


@flow(name="stability", log_prints=True)
def stability(config: str = "configs/quickstart.yaml", overrides: dict | None = None, seeds: int = 3) -> dict:
    """Run the pipeline of `config` (with dotted-key `overrides`) with `seeds` seeds, the config's seed and
    those after it, registering nothing, and report mean, standard deviation and worst case of every figure,
    the teacher-against-teacher churn between seeds, and the images whose modal label compression changes."""
    check_seeds(seeds)
    cfg = load_config(config, overrides)
    return run_stability(config, dict(overrides or {}), cfg, seeds)


if __name__ == "__main__":
    stability()

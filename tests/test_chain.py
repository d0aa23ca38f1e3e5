"""The chain of stages (flows/chain.py) is the one place that knows it: a stage added there, and nowhere else,
is planned in its place, runs in its place on what the stages before it made, and feeds the stage after it."""

from dataclasses import replace

import pytest
import torch
from mlflow.tracking import MlflowClient

from flows import chain
from tasks.config import PROJECT_ROOT, load_config
from tasks.data import get_bundle
from tasks.stage import stage_task
from tasks.training import load, save_candidate


@stage_task("round_half")
def round_half(cfg, ctx, run, workdir, data: dict, model: dict) -> dict:
    """A stage made as every stage is: the model with its weights rounded to half precision (still float32)."""
    rounded = load(model)
    with torch.no_grad():
        for param in rounded.parameters():
            param.copy_(param.half().float())
    return save_candidate(run, rounded, workdir, "rounded_half", get_bundle(cfg, data), rounded_from=model["sha256"])


# The one entry a new stage needs: it rounds the last float model, which the stages after it then compress.
ROUND_HALF = chain.Link(round_half, lambda cfg: True, feeds=lambda m: {"data": m.data, "model": m.latest},
                        keeps=lambda m, out: replace(m, student=out), makes=lambda out, cfg: (out,), candidates=True)


def add_round_half(monkeypatch) -> None:
    """Insert ROUND_HALF into the chain's table, right after trim: the only change adding a stage needs."""
    links = list(chain.COMPRESSION)
    links.insert([link.name for link in links].index("trim") + 1, ROUND_HALF)
    monkeypatch.setattr(chain, "COMPRESSION", tuple(links))


@pytest.fixture
def chain_with_round_half(monkeypatch):
    add_round_half(monkeypatch)


def _smoke(**overrides):
    return load_config(PROJECT_ROOT / "configs" / "smoke.yaml", overrides)


def test_an_added_stage_is_planned_in_its_place():
    cfg = _smoke()
    before, refusable = chain.planned_stages(cfg), chain.refusable_stages(cfg)
    assert "round_half" not in before
    with pytest.MonkeyPatch.context() as patch:
        add_round_half(patch)
        after = chain.planned_stages(cfg)
        assert chain.link_named("round_half") is ROUND_HALF
        assert chain.refusable_stages(cfg) == refusable  # it refuses no architecture
    trim_at = before.index("trim") + 1
    assert after == before[:trim_at] + ["round_half"] + before[trim_at:]
    assert "round_half" not in chain.planned_stages(cfg)  # the table is back as it was


def test_an_added_stage_runs_in_its_place_on_the_models_before_it(prefect, chain_with_round_half, tmp_path):
    from prefect import flow

    from flows.pipeline import tracked_pipeline

    # trim -> round_half -> quantize: the cheapest real stages around the added one (no training).
    cfg = _smoke(**{"name": "chain", "output_dir": str(tmp_path / "outputs"),
                    "tracking.uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "finetune.enabled": False,
                    "distill.enabled": False, "prune.enabled": False, "quantize.modes": ["static"]})

    @flow(name="chain-test")
    def teacher_and_compression():
        with tracked_pipeline(cfg, "chain-test") as run:
            made = chain.compress_teacher(run, chain.prepare_teacher(run))
            return run.executed, list(run.candidates), made, run.ctx

    executed, candidates, made, ctx = teacher_and_compression()
    assert executed == ["load_data", "fetch_pretrained", "trim", "round_half", "quantize"]
    assert executed == [name for name in chain.planned_stages(cfg) if name in executed]
    client = MlflowClient(ctx.tracking_uri)
    children = {r.data.tags["shrinkflow.stage"]: r for r in client.search_runs(
        [ctx.experiment_id], f"tags.mlflow.parentRunId = '{ctx.parent_run_id}'")}
    assert set(children) == set(executed)
    rounded = made.student
    assert rounded["name"] == "rounded_half" and rounded["run_id"] == children["round_half"].info.run_id
    assert rounded["rounded_from"] == children["trim"].data.tags["sha256.trimmed"]  # fed the trimmed model
    assert made.int8["source_sha256"] == rounded["sha256"]  # and quantize was fed the rounded one
    assert candidates == [made.teacher["name"], "rounded_half", "quantized_static"]
    assert all(torch.equal(w, w.half().float()) for w in load(rounded).parameters())

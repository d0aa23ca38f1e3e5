"""report: the comparison table, what changed in plain words, and Pareto plots, on the pipeline run and as
Prefect artifacts."""

from __future__ import annotations

import pandas as pd
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from compression.candidate_fidelity import what_changed_paragraph
from compression.candidates import TEACHER
from compression.comparison import (
    FIDELITY_COLUMNS,
    SUMMARY_FIGURES,
    EvaluationRow,
    kd_gain,
    speed_notes,
    with_ratios,
)
from tasks import plots
from tasks.config import PipelineConfig
from tasks.outputs import Summary
from tasks.stage import stage_task
from tasks.tracking import RunContext, StageRun, log_figure

COLUMNS = ["candidate", "accuracy", "accuracy_drop", "params", "params_x", "nonzero_params", "macs", "macs_x",
           "size_bytes", "latency_p50_ms", "latency_p95_ms", "throughput_ips", "speedup", "onnx_accuracy",
           "onnx_latency_p50_ms", "onnx_throughput_ips", *FIDELITY_COLUMNS, "sha256", "path"]
PARETO_AXES = (("macs", "MACs"), ("latency_p50_ms", "latency p50 (ms)"), ("size_bytes", "file size (bytes)"))


def comparison_table(rows: list[EvaluationRow], reference: str = TEACHER) -> pd.DataFrame:
    """One row per candidate with ratios against the reference (x = how many times smaller/faster)."""
    df = pd.DataFrame(with_ratios(rows, reference)).rename(columns={v: k for k, v in FIDELITY_COLUMNS.items()})
    return df[[c for c in COLUMNS if c in df.columns]]


def _fidelity_cells(shown: pd.DataFrame) -> pd.DataFrame:
    """The fidelity columns as the table shows them: the drop's 95% interval and lost/gained in one cell each."""
    def number(v, spec):
        return "" if pd.isna(v) else format(v, spec)

    if "drop_ci_low" in shown:
        shown["drop_95ci"] = [f"[{low:.4f}, {high:.4f}]" if not pd.isna(low) else ""
                              for low, high in zip(shown.pop("drop_ci_low"), shown.pop("drop_ci_high"))]
    if "lost" in shown:
        shown["lost/gained"] = [f"{lost:.0f}/{gained:.0f}" if not pd.isna(lost) else ""
                                for lost, gained in zip(shown.pop("lost"), shown.pop("gained"))]
    for col, spec in (("agreement", ".4f"), ("parent_agreement", ".4f"), ("max_class_drop", ".4f"),
                      ("ece", ".3f"), ("ece_scaled", ".3f"), ("corruption_error_x", ".2f"), ("attribution_rho", ".2f")):
        if col in shown:
            shown[col] = shown[col].map(lambda v, spec=spec: number(v, spec))
    order = ["agreement", "drop_95ci", "lost/gained", "max_class_drop", "ece", "ece_scaled", "corruption_error_x",
             "attribution_rho", "parent_agreement"]
    return shown[[c for c in shown.columns if c not in order] + [c for c in order if c in shown]]


def markdown(df: pd.DataFrame) -> str:
    shown = _fidelity_cells(df.drop(columns=["sha256", "path"], errors="ignore"))
    for col in ("accuracy", "accuracy_drop", "onnx_accuracy"):
        if col in shown:
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.4f}")
    for col in ("params_x", "macs_x", "speedup"):
        shown[col] = shown[col].map(lambda v: f"{v:.1f}x")
    for col in ("latency_p50_ms", "latency_p95_ms", "throughput_ips", "onnx_latency_p50_ms", "onnx_throughput_ips"):
        if col in shown:
            shown[col] = shown[col].map(lambda v: "" if pd.isna(v) else f"{v:.1f}")
    shown["macs"] = shown["macs"].map(lambda v: f"{v / 1e6:.1f}M")
    return shown.to_markdown(index=False)


@stage_task("report", cache=False)
def report(cfg: PipelineConfig, ctx: RunContext, run: StageRun, workdir, rows: list[EvaluationRow]) -> Summary:
    """Logged to the report's own run and to the pipeline run, where the MLflow UI shows it first."""
    df = comparison_table(rows)
    text = markdown(df)
    notes = speed_notes(rows)
    if notes:
        text += "\n\n" + "\n".join(f"- {n}" for n in notes)
    changed = what_changed(rows)
    if changed:
        text += "\n\n" + changed
    summary = {f"{r['candidate']}.accuracy": r["accuracy"] for r in rows}
    summary.update({f"{r['candidate']}.{key}": r[key] for r in rows for key in SUMMARY_FIGURES
                    if r.get(key) is not None})
    gain = kd_gain(rows)
    if gain is not None:
        summary["kd_gain"] = gain
    parent = StageRun(run.client, ctx.parent_run_id, "pipeline")
    for target in (run, parent):
        target.log_text(df.to_csv(index=False), "comparison.csv")
        target.log_text(text + "\n", "comparison.md")
        target.log_metrics(summary)
    for x, label in PARETO_AXES:
        fig = plots.pareto(df.to_dict("records"), x, label)
        log_figure(fig, f"pareto_{x}.png", [run, parent])
        plots.close(fig)
    create_table_artifact(key=f"{cfg.name}-comparison".lower().replace("_", "-"),
                          table=[{k: _cell(v) for k, v in r.items()} for r in df.to_dict("records")],
                          description=f"shrinkflow candidates of {cfg.name}")
    if changed:
        create_markdown_artifact(key=f"{cfg.name}-what-changed".lower().replace("_", "-"), markdown=changed,
                                 description=f"what compression changed in {cfg.name}")
    create_link_artifact(key=f"{cfg.name}-mlflow-run".lower().replace("_", "-"),
                         link=mlflow_run_link(ctx), description="the pipeline's MLflow run")
    # None, not NaN, where a candidate has no ONNX export: NaN != NaN would make equal tables differ.
    records = [{k: (None if isinstance(v, float) and pd.isna(v) else v) for k, v in r.items()}
               for r in df.to_dict("records")]
    return Summary(table=records, markdown=text, kd_gain=gain)


def what_changed(rows: list[EvaluationRow]) -> str:
    """The fidelity stage's plain-words paragraph (sentences carried by the rows); "" without one."""
    sentences = [r["what_changed"] for r in rows if r.get("what_changed")]
    method = next((r["fidelity.method"] for r in rows if r.get("fidelity.method")), "")
    return what_changed_paragraph(sentences, method) if method else ""


def _cell(value):
    if isinstance(value, float):
        return None if pd.isna(value) else round(value, 4)
    return value


def mlflow_run_link(ctx: RunContext) -> str:
    base = ctx.tracking_uri if ctx.tracking_uri.startswith("http") else "http://127.0.0.1:5000"
    return f"{base.rstrip('/')}/#/experiments/{ctx.experiment_id}/runs/{ctx.parent_run_id}"

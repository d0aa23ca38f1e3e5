import math

import pytest
import torch

from compression import CompressionError
from compression.distillation import distillation_loss, kd_loss


def test_kd_loss_matches_hand_computation():
    s = torch.tensor([[2.0, 0.0, -1.0]])
    t = torch.tensor([[1.0, 1.0, 0.0]])
    y = torch.tensor([0])
    T, alpha = 2.0, 0.7
    ps = [math.exp(v / T) for v in s[0].tolist()]
    pt = [math.exp(v / T) for v in t[0].tolist()]
    ps = [p / sum(ps) for p in ps]
    pt = [p / sum(pt) for p in pt]
    kl = sum(q * math.log(q / p) for p, q in zip(ps, pt))
    ce = -math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1)))
    expected = alpha * T * T * kl + (1 - alpha) * ce
    assert kd_loss(s, t, y, T, alpha).item() == pytest.approx(expected, rel=1e-6)


def test_kl_is_averaged_over_the_batch():
    s, t, y = torch.randn(1, 5), torch.randn(1, 5), torch.tensor([1])
    one = kd_loss(s, t, y, 3.0, 1.0)
    four = kd_loss(s.repeat(4, 1), t.repeat(4, 1), y.repeat(4), 3.0, 1.0)
    assert four.item() == pytest.approx(one.item(), rel=1e-5)


def test_alpha_zero_is_plain_cross_entropy():
    s, t, y = torch.randn(8, 4), torch.randn(8, 4), torch.randint(0, 4, (8,))
    assert kd_loss(s, t, y, 4.0, 0.0).item() == pytest.approx(torch.nn.functional.cross_entropy(s, y).item())


@pytest.mark.parametrize("T, alpha, field", [(0.0, 0.5, "temperature"), (-1.0, 0.5, "temperature"),
                                             (4.0, 1.5, "alpha"), (4.0, -0.1, "alpha")])
def test_bad_settings(T, alpha, field):
    with pytest.raises(CompressionError, match=field):
        distillation_loss(torch.nn.Linear(2, 2), T, alpha)


def test_teacher_gets_no_gradients():
    teacher, student = torch.nn.Linear(4, 3), torch.nn.Linear(4, 3)
    loss, logits = distillation_loss(teacher)(student, torch.randn(5, 4), torch.randint(0, 3, (5,)))
    loss.backward()
    assert teacher.weight.grad is None and student.weight.grad is not None and logits.shape == (5, 3)
    assert not teacher.training


def test_unlabeled_samples_get_only_the_soft_term():
    s, t = torch.randn(6, 4), torch.randn(6, 4)
    y = torch.tensor([0, 1, -1, -1, 2, -1])
    T, alpha = 3.0, 0.6
    soft_only = kd_loss(s, t, y, T, 1.0)
    expected = alpha * soft_only + (1 - alpha) * torch.nn.functional.cross_entropy(s[y >= 0], y[y >= 0])
    assert kd_loss(s, t, y, T, alpha).item() == pytest.approx(expected.item(), rel=1e-6)
    all_unlabeled = torch.full((6,), -1)
    assert kd_loss(s, t, all_unlabeled, T, alpha).item() == pytest.approx(alpha * soft_only.item(), rel=1e-6)


@pytest.fixture
def distill_stage(tmp_path):
    """The distil stage's body (no Prefect engine) logging to a fresh sqlite store under a parent run."""
    from tasks.config import load_config
    from tasks.mlflow_store import make_client
    from tasks.tracking import RunContext

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = make_client(uri)
    experiment_id = client.create_experiment("distill-test", artifact_location=str(tmp_path / "artifacts"))
    parent = client.create_run(experiment_id).info.run_id

    def config(**overrides):
        return load_config("configs/smoke.yaml", {"output_dir": str(tmp_path / "outputs"), "tracking.uri": uri,
                                                  "distill.baseline": False, **overrides})

    return config, RunContext(uri, experiment_id, parent), client


def _model_ref(model, path):
    from compression.checkpoint import save_model
    from tasks.stage import model_ref

    return model_ref(path.stem, path, save_model(model, path), "no-run")


@pytest.fixture
def shrinkflow_warnings():
    """Warnings of the "shrinkflow" logger (Prefect stops it propagating to the root, where caplog listens)."""
    import logging

    records = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = records.append
    logger = logging.getLogger("shrinkflow")
    logger.addHandler(handler)
    yield records
    logger.removeHandler(handler)


@pytest.mark.slow  # three one-epoch trainings with real MLflow runs
def test_distilling_into_a_copy_of_the_teacher_warns_and_tags_the_run(distill_stage, tmp_path, shrinkflow_warnings):
    from compression.models import build_model, count_params
    from compression.trimming import trim
    from tasks.distill import distill

    config, ctx, client = distill_stage
    cfg = config()
    torch.manual_seed(0)
    teacher = build_model("resnet18", 3, 1, 28)
    teacher_ref = _model_ref(teacher, tmp_path / "teacher.pt")
    copy_run = distill.fn(cfg, ctx, data=None, teacher=teacher_ref).run_id
    warnings = [r.getMessage() for r in shrinkflow_warnings if r.getMessage().startswith("[distill]")]
    assert len(warnings) == 1 and "\n" not in warnings[0]
    assert warnings[0].startswith("[distill] the student is as large as the teacher")
    assert f"{count_params(teacher):,} params" in warnings[0] and "trimming is off" in warnings[0]
    assert client.get_run(copy_run).data.tags.get("shrinkflow.student_not_smaller") == "true"

    shrinkflow_warnings.clear()
    student_ref = _model_ref(trim(teacher, 1), tmp_path / "trimmed.pt")
    trimmed_run = distill.fn(cfg, ctx, data=None, teacher=teacher_ref, student=student_ref).run_id
    assert not [r for r in shrinkflow_warnings if "as large as the teacher" in r.getMessage()]
    run = client.get_run(trimmed_run)
    assert "shrinkflow.student_not_smaller" not in run.data.tags
    assert run.data.metrics["params_student"] < run.data.metrics["params_teacher"]

    # a fresh student of the teacher's own architecture is no smaller either
    fresh_run = distill.fn(config(**{"distill.student": "resnet18"}), ctx, data=None, teacher=teacher_ref).run_id
    assert any("distill.student is resnet18" in r.getMessage() for r in shrinkflow_warnings)
    assert client.get_run(fresh_run).data.tags.get("shrinkflow.student_not_smaller") == "true"


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

"""The figures users read: Pareto labels that never cover each other, whole-number epochs."""

import itertools

import pytest

from tasks import plots


def _row(name, accuracy, macs, size, latency):
    return {"candidate": name, "accuracy": accuracy, "macs": macs, "size_bytes": size, "latency_p50_ms": latency}


# As the pipeline makes them: the int8 models sit on their float source's MACs at nearly its accuracy.
ROWS = [_row("teacher", 0.91, 34e6, 44e6, 9.0), _row("student_kd", 0.90, 9e6, 5e6, 2.0),
        _row("student_plain", 0.885, 9e6, 5e6, 2.05), _row("trimmed", 0.6, 9e6, 5e6, 2.0),
        _row("pruned", 0.89, 2.3e6, 1.3e6, 1.0), _row("quantized_static", 0.887, 2.3e6, 0.4e6, 0.8),
        _row("quantized_dynamic", 0.89, 2.3e6, 1.29e6, 0.99)]


def _labels(fig) -> list[set[str]]:
    return [set(text.get_text().split("\n")) for text in fig.axes[0].texts]


def _assert_no_overlap(fig):
    renderer = fig.canvas.get_renderer()
    boxes = [text.get_window_extent(renderer) for text in fig.axes[0].texts]
    for a, b in itertools.combinations(boxes, 2):
        assert not a.overlaps(b), (a, b)


@pytest.fixture
def figures():
    made = []
    yield made
    for fig in made:
        plots.close(fig)


def test_candidates_at_one_point_share_one_label(figures):
    fig = plots.pareto(ROWS, "macs", "MACs")
    figures.append(fig)
    labels = _labels(fig)
    assert {"pruned", "quantized_static", "quantized_dynamic"} in labels
    assert sorted(name for label in labels for name in label) == sorted(r["candidate"] for r in ROWS)
    assert {"student_kd"} in labels and {"student_plain"} in labels  # 1.5 points apart on a 30-point axis
    _assert_no_overlap(fig)


@pytest.mark.parametrize("x", ["size_bytes", "latency_p50_ms"])
def test_other_costs_separate_what_macs_lump_together(figures, x):
    fig = plots.pareto(ROWS, x, x)
    figures.append(fig)
    labels = _labels(fig)
    assert {"quantized_static"} in labels  # int8 is 3x smaller and faster: a point of its own
    assert sorted(name for label in labels for name in label) == sorted(r["candidate"] for r in ROWS)
    _assert_no_overlap(fig)


def test_labels_of_nearby_points_are_moved_apart(figures):
    rows = [_row("candidate_one", 0.9, 1.0e6, 1, 1), _row("candidate_two", 0.9, 1.3e6, 1, 1),
            _row("candidate_three", 0.899, 1.6e6, 1, 1), _row("far", 0.5, 1e8, 1, 1)]
    fig = plots.pareto(rows, "macs", "MACs")
    figures.append(fig)
    assert len(fig.axes[0].texts) == 4  # distinct points keep their own labels
    _assert_no_overlap(fig)


def test_training_curves_count_epochs_in_whole_numbers(figures):
    history = [{"epoch": e, "train_loss": 1 / e, "train_accuracy": 0.5 + e / 10, "val_loss": 1 / e, "val_accuracy": 0.5}
               for e in (1, 2, 3)]
    fig = plots.training_curves({"teacher": history}, "fine-tune")
    figures.append(fig)
    for ax in fig.axes:
        ticks = ax.get_xticks()
        assert len(ticks) >= 3 and all(float(t).is_integer() for t in ticks)

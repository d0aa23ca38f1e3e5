"""Pure policies: which candidate is registered, how URIs are shown and which store they name."""

from compression.selection import choose
from tasks.tracking_uri import redact, store_id


def _row(name, accuracy, params, size=100):
    return {"candidate": name, "accuracy": accuracy, "params": params, "macs": params, "latency_p50_ms": 1.0,
            "size_bytes": size}


ROWS = [_row("teacher", 0.90, 100, 400), _row("student_kd", 0.895, 40, 160), _row("pruned", 0.891, 10, 40),
        _row("quantized_static", 0.892, 10, 12)]


def test_champion_is_the_cheapest_within_the_budget():
    assert choose(ROWS, 0.01, "params") == (ROWS[3], "champion")  # same params as pruned, more accurate
    assert choose(ROWS, 0.01, "size")[0]["candidate"] == "quantized_static"
    assert choose(ROWS, 0.005, "params")[0]["candidate"] == "student_kd"
    assert choose(ROWS, 0.0, "params")[0]["candidate"] == "teacher"  # only the reference is within 0 points


def test_challenger_when_nothing_compressed_is_within_the_budget():
    rows = [_row("teacher", 0.9, 100), _row("pruned", 0.7, 10), _row("student_kd", 0.8, 40)]
    assert choose(rows, 0.05, "params")[0]["candidate"] == "teacher"
    rows_without_teacher_budget = [_row("teacher", 0.9, 100), _row("pruned", 0.7, 10)]
    assert choose(rows_without_teacher_budget[1:], 0.0, "params") == (rows_without_teacher_budget[1], "champion")


def test_the_reference_defaults_to_the_first_row():
    rows = [_row("float", 0.8, 100), _row("quantized_static", 0.79, 100, 10)]
    assert choose(rows, 0.02, "size") == (rows[1], "champion")
    assert choose(rows, 0.001, "size") == (rows[0], "champion")


def test_redact_hides_only_the_password():
    assert redact("http://alice:s3cret@host:5000/x") == "http://alice:***@host:5000/x"
    assert redact("postgresql://bob:pw@db/mlflow") == "postgresql://bob:***@db/mlflow"
    assert redact("http://host:5000") == "http://host:5000"
    assert redact("sqlite:////tmp/mlflow.db") == "sqlite:////tmp/mlflow.db"


def test_store_id_names_a_store_once(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert store_id("sqlite:///mlflow.db") == f"sqlite:///{tmp_path / 'mlflow.db'}"
    assert store_id(f"sqlite:///{tmp_path}/mlflow.db") == store_id("sqlite:///./mlflow.db")
    assert store_id("http://alice:pw@host:5000/") == "http://alice:***@host:5000"

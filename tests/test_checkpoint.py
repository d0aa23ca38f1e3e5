import pytest
import torch

from compression import CompressionError
from compression.checkpoint import file_sha256, load_model, load_state, read_model_file, save_model
from compression.models import build_model


def test_round_trip_with_meta_and_sha(tmp_path):
    model = build_model("mobilenet_v3_small", 4, 1, 28).eval()
    sha = save_model(model, tmp_path / "m.pt", meta={"classes": ["a", "b", "c", "d"], "mean": [0.3]})
    assert sha == file_sha256(tmp_path / "m.pt")
    assert read_model_file(tmp_path / "m.pt")["meta"]["classes"] == ["a", "b", "c", "d"]
    x = torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(load_model(tmp_path / "m.pt", expected_sha256=sha)(x), model(x))
    assert not (tmp_path / "m.pt.tmp").exists()


def test_the_same_model_gives_the_same_file_and_leaves_nothing_else(tmp_path):
    model = build_model("resnet18", 3, 1, 28)
    first = save_model(model, tmp_path / "a" / "m.pt", meta={"candidate": "m"})
    again = save_model(model, tmp_path / "a" / "m.pt", meta={"candidate": "m"})
    elsewhere = save_model(model, tmp_path / "b" / "m.pt", meta={"candidate": "m"})
    assert first == again == elsewhere
    assert [p.name for p in (tmp_path / "a").iterdir()] == ["m.pt"]


def test_checkpoint_for_another_number_of_classes(tmp_path):
    save_model(build_model("resnet18", 5, 1, 28), tmp_path / "five.pt")
    state = read_model_file(tmp_path / "five.pt")["state_dict"]
    with pytest.raises(CompressionError, match=r"does not match the model .*fc.weight \(5, 512\) vs \(10, 512\)"):
        load_state(build_model("resnet18", 10, 1, 28), state)


def test_truncated_and_foreign_and_tampered_files(tmp_path):
    path = tmp_path / "m.pt"
    sha = save_model(build_model("resnet18", 5, 1, 28), path)
    data = path.read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CompressionError, match="cannot read model file .*cut.pt"):
        load_model(tmp_path / "cut.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CompressionError, match="not a shrinkflow model file"):
        load_model(tmp_path / "other.pt")
    path.write_bytes(data[:-100] + bytes([data[-100] ^ 0xFF]) + data[-99:])
    with pytest.raises(CompressionError, match="does not match its recorded sha256"):
        load_model(path, expected_sha256=sha)
    with pytest.raises(CompressionError, match="does not exist"):
        load_model(tmp_path / "missing.pt")


def test_pickled_modules_are_refused(tmp_path):
    torch.save({"format": "shrinkflow-model/1", "module": torch.nn.Linear(2, 2)}, tmp_path / "pickled.pt")
    with pytest.raises(CompressionError, match="cannot read model file"):
        load_model(tmp_path / "pickled.pt")

"""The report's numbers: ratios against the teacher, the KD gain, the int8 speed verdicts (pure Python)."""

import pytest

from compression.comparison import kd_gain, speed_notes, speed_word, with_ratios


def _row(name, accuracy=0.9, params=1000, macs=5000, throughput=100.0, latency=1.0, size=400, sha=None,
         source=None):
    return {"candidate": name, "accuracy": accuracy, "params": params, "macs": macs, "throughput_ips": throughput,
            "latency_p50_ms": latency, "size_bytes": size, "sha256": sha or name, "source_sha256": source}


def _int8_pair(throughput, latency, size=100):
    """A float model (500 images/s, 1 ms, 400 bytes) and an int8 model made from it."""
    return [_row("teacher", throughput=100.0, latency=9.0),
            _row("pruned", throughput=500.0, latency=1.0, size=400, sha="p"),
            _row("quantized_static", throughput=throughput, latency=latency, size=size, sha="q", source="p")]


@pytest.mark.parametrize("gain, word", [(2.0, "faster"), (1.11, "faster"), (1.1, "about as fast"),
                                        (1.0, "about as fast"), (1 / 1.1, "about as fast"), (0.9, "slower"),
                                        (0.5, "slower")])
def test_within_ten_percent_is_about_as_fast(gain, word):
    assert speed_word(gain) == word


@pytest.mark.parametrize("throughput, latency, verdict", [
    (900.0, 0.8, "faster at batch 1, faster in throughput"),
    (400.0, 1.4, "slower at batch 1, slower in throughput"),
    (900.0, 1.4, "slower at batch 1, faster in throughput"),
    (300.0, 0.5, "faster at batch 1, slower in throughput"),
    (510.0, 0.99, "about as fast at batch 1, about as fast in throughput")])
def test_int8_verdict_against_its_float_source(throughput, latency, verdict):
    [note] = speed_notes(_int8_pair(throughput, latency))
    assert note.startswith(f"quantized_static against pruned (the float model it was made from): "
                           f"{verdict} on this CPU;")
    assert f"throughput {throughput / 500:.2f}x" in note
    assert f"latency p50 {latency:.2f} vs 1.00 ms" in note
    assert note.endswith("file 4.0x smaller.")


@pytest.mark.parametrize("size, note_end", [(398, "file about the same size."), (381, "file about the same size."),
                                            (380, "file 1.1x smaller."), (100, "file 4.0x smaller.")])
def test_size_note_needs_five_percent(size, note_end):
    [note] = speed_notes(_int8_pair(505.0, 1.0, size))
    assert note.endswith(note_end)


def test_only_models_made_from_a_listed_source_get_a_note():
    rows = _int8_pair(900.0, 0.8) + [_row("quantized_dynamic", sha="d", source="not-in-the-rows")]
    notes = speed_notes(rows)
    assert len(notes) == 1 and notes[0].startswith("quantized_static against pruned")
    assert speed_notes([_row("teacher"), _row("pruned")]) == []


def test_ratios_against_the_teacher():
    rows = [_row("pruned", accuracy=0.88, params=250, macs=1000, throughput=400.0),
            _row("teacher", accuracy=0.9, params=1000, macs=5000, throughput=100.0)]
    pruned, teacher = with_ratios(rows)
    assert pruned["accuracy_drop"] == pytest.approx(0.02)
    assert (pruned["params_x"], pruned["macs_x"], pruned["speedup"]) == (4.0, 5.0, 4.0)
    assert (teacher["accuracy_drop"], teacher["params_x"], teacher["macs_x"], teacher["speedup"]) == (0, 1.0, 1.0, 1.0)
    assert "params_x" not in rows[0]  # the input rows stay as they were


def test_ratios_fall_back_to_the_first_row_without_a_teacher():
    rows = [_row("student_kd", params=500), _row("pruned", params=100)]
    assert [r["params_x"] for r in with_ratios(rows)] == [1.0, 5.0]
    assert [r["params_x"] for r in with_ratios(rows, reference="pruned")] == [0.2, 1.0]


def test_kd_gain_needs_both_students():
    rows = [_row("teacher", accuracy=0.95), _row("student_kd", accuracy=0.9), _row("student_plain", accuracy=0.875)]
    assert kd_gain(rows) == pytest.approx(0.025)
    assert kd_gain(rows[:2]) is None
    assert kd_gain([_row("student_plain")]) is None

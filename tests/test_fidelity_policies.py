"""The pure parts of the "what compression changed" report around the statistics of test_fidelity.py: the gates
and the registration choice with them (every reject branch), the search's gated pick, the report of a set of
candidates from their logits, its merge into the evaluation rows, and stability across seeds."""

import math

import pytest
import torch
from torch import nn

from compression import CompressionError, stability
from compression import candidate_fidelity as cf
from compression import corruptions as cor
from compression.comparison import FIDELITY_COLUMNS, with_fidelity
from compression.gates import GATES, check_gates, describe, gate_tags, passes
from compression.search import pick
from compression.selection import choose, gate_log, pick_within_gates
from tasks.config import CORRUPTION_NAMES, ConfigError, GatesConfig, load_config


def _row(name, accuracy, size, **figures):
    return {"candidate": name, "accuracy": accuracy, "params": size, "macs": size, "latency_p50_ms": 1.0,
            "size_bytes": size, **figures}


def _figures(drop_high=0.01, lost=5, class_drop=0.02, ece=0.03, ece_teacher=0.02, corruption=1.1, agreement=0.97):
    return {"fidelity.drop_ci_high": drop_high, "fidelity.lost": lost, "fidelity.max_class_drop": class_drop,
            "calibration.ece_scaled": ece, "calibration.ece_scaled_reference": ece_teacher,
            "robustness.relative_error": corruption, "fidelity.agreement": agreement}


# ---------------------------------------------------------------- gates

def test_every_gate_passes_within_its_limit_and_fails_past_it():
    row = _row("pruned", 0.9, 10, **_figures())
    limits = {"max_drop_ci_high": 0.01, "max_images_lost": 5, "max_class_drop": 0.02, "max_ece_increase": 0.01,
              "max_relative_corruption_error": 1.1, "min_agreement": 0.97}
    assert set(limits) == set(GATES)
    results = check_gates(row, limits)
    assert [r["gate"] for r in results] == list(GATES) and all(r["passed"] for r in results)  # ties pass
    assert results[3]["value"] == pytest.approx(0.01)  # ECE after scaling minus the teacher's
    tight = {"max_drop_ci_high": 0.005, "max_images_lost": 2, "max_class_drop": 0.01, "max_ece_increase": 0.0,
             "max_relative_corruption_error": 1.0, "min_agreement": 0.99}
    failed = check_gates(row, tight)
    assert not any(r["passed"] for r in failed)
    excess = {r["gate"]: r["excess"] for r in failed}
    assert excess == pytest.approx({"max_drop_ci_high": 0.005, "max_images_lost": 3, "max_class_drop": 0.01,
                                    "max_ece_increase": 0.01, "max_relative_corruption_error": 0.1,
                                    "min_agreement": 0.02})
    assert describe(failed[1]) == "max_images_lost failed: test images lost 5, limit 2 (over by 3)"
    assert describe(failed[5]) == ("min_agreement failed: top-1 agreement with the teacher 97.00%, limit 99.00% "
                                   "(under by 2.00%)")
    assert describe(results[0]) == ("max_drop_ci_high passed: upper end of the 95% interval of the accuracy drop "
                                    "1.00 points, limit 1.00 points")
    tags = gate_tags(failed[:2] + results[2:3])
    assert tags["gate.max_images_lost"] == "failed (5, limit 2, by 3)"
    assert tags["gate.max_class_drop"] == "passed (2.00 points, limit 2.00 points)"


def test_a_figure_that_was_not_measured_fails_its_gate_and_unknown_gates_are_refused():
    row = _row("pruned", 0.9, 10)  # no fidelity figures (e.g. the teacher made no error under corruption)
    (result,) = check_gates(row, {"max_relative_corruption_error": 1.2})
    assert not result["passed"] and result["value"] is None
    assert describe(result) == ("max_relative_corruption_error failed: corruption error relative to the teacher's "
                                "was not measured (limit 1.200x)")
    assert gate_tags([result]) == {"gate.max_relative_corruption_error": "failed (not measured, limit 1.200x)"}
    assert not passes({**row, "robustness.relative_error": math.nan}, {"max_relative_corruption_error": 1.2})
    assert passes(row, {})
    with pytest.raises(CompressionError, match="unknown gate 'max_churn'"):
        check_gates(row, {"max_churn": 0.1})


def test_gates_config_names_every_gate_and_needs_the_fidelity_report():
    assert set(GatesConfig().model_dump()) == set(GATES)
    assert GatesConfig().limits() == {}
    cfg = load_config("configs/smoke.yaml", {"register.gates.max_images_lost": 3})
    assert cfg.register.gates.limits() == {"max_images_lost": 3}
    with pytest.raises(ConfigError, match="register.gates.max_images_lost needs the fidelity report"):
        load_config("configs/smoke.yaml", {"register.gates.max_images_lost": 3, "fidelity.enabled": False})
    with pytest.raises(ConfigError, match="max_relative_corruption_error needs fidelity.corruptions"):
        load_config("configs/smoke.yaml", {"register.gates.max_relative_corruption_error": 1.1,
                                           "fidelity.corruptions": "[]"})
    assert CORRUPTION_NAMES == cor.CORRUPTIONS


@pytest.mark.parametrize("overrides, message", [
    ({"register.gates.max_class_drop": 1.5}, "register.gates.max_class_drop: Input should be less than or equal to 1"),
    ({"register.gates.max_images_lost": -1}, "register.gates.max_images_lost: Input should be greater than or equal"),
    ({"register.gates.max_churn": 0.1}, "register.gates.max_churn: unknown key"),
    ({"fidelity.bootstrap": 10}, "fidelity.bootstrap: Input should be greater than or equal to 100"),
    ({"fidelity.corruptions": "[fog]"}, "fidelity.corruptions.0: Input should be 'gaussian_noise'"),
    ({"fidelity.severities": "[1, 4]"}, "fidelity.severities.1: Input should be 1, 2 or 3"),
    ({"fidelity.severities": "[2, 2]"}, "fidelity.severities: [2, 2] has duplicates"),
    ({"fidelity.corruption_images": 0}, "fidelity.corruption_images: Input should be greater than or equal to 1"),
    ({"fidelity.attribution_images": -1}, "fidelity.attribution_images: Input should be greater than or equal to 0"),
])
def test_bad_fidelity_settings_name_the_field(overrides, message):
    with pytest.raises(ConfigError) as err:
        load_config("configs/smoke.yaml", overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- the registration choice with gates

ROWS = [_row("teacher", 0.90, 400, **_figures(0, 0, 0, 0.02, 0.02, 1.0, 1.0)),
        _row("student_kd", 0.895, 160, **_figures(lost=4)),
        _row("pruned", 0.891, 40, **_figures(lost=9)),
        _row("quantized_static", 0.892, 12, **_figures(lost=12, corruption=1.4))]


def test_without_gates_the_choice_is_the_cheapest_within_the_budget():
    assert choose(ROWS, 0.01, "size") == (ROWS[3], "champion")
    assert choose(ROWS, 0.01, "size", gates={}) == (ROWS[3], "champion")
    assert gate_log(ROWS, ROWS[3], "champion", 0.01, "size", {}) == []


def test_a_failing_gate_passes_the_alias_to_the_cheapest_candidate_that_passes():
    gates = {"max_images_lost": 10}
    assert choose(ROWS, 0.01, "size", gates=gates) == (ROWS[2], "champion")
    lines = gate_log(ROWS, ROWS[2], "champion", 0.01, "size", gates)
    assert lines == ["quantized_static is not @champion: gate max_images_lost failed: test images lost 12, limit 10 "
                     "(over by 2)",
                     "pruned registered @champion: max_images_lost passed: test images lost 9, limit 10"]
    gates = {"max_images_lost": 10, "max_relative_corruption_error": 1.2}
    assert choose(ROWS, 0.01, "size", gates=gates)[0]["candidate"] == "pruned"


def test_when_every_compressed_candidate_fails_a_gate_nothing_is_champion():
    gates = {"max_images_lost": 3}
    row, alias = choose(ROWS, 0.01, "size", gates=gates)
    assert (row["candidate"], alias) == ("quantized_static", "challenger")  # never the ungated teacher
    (line,) = gate_log(ROWS, row, alias, 0.01, "size", gates)
    assert line == ("quantized_static is not @champion: gate max_images_lost failed: test images lost 12, limit 3 "
                    "(over by 9)")
    two = {"max_images_lost": 3, "min_agreement": 0.99}
    (line,) = gate_log(ROWS, *choose(ROWS, 0.01, "size", gates=two), 0.01, "size", two)
    assert line.count("gate ") == 2 and "min_agreement failed" in line  # every failed gate in the one line


def test_gates_leave_the_reference_alone():
    # only the teacher is within a 0-point budget: it is champion, gates or not
    assert choose(ROWS, 0.0, "size", gates={"max_images_lost": 0}) == (ROWS[0], "champion")
    assert gate_log(ROWS, ROWS[0], "champion", 0.0, "size", {"max_images_lost": 0}) == [
        "teacher registered @champion (the reference the gates compare with is not gated)"]
    # a passing candidate costlier than the teacher: the teacher is the cheapest row that may be champion
    rows = [ROWS[0], _row("pruned", 0.9, 10, **_figures(lost=20)), _row("wide", 0.9, 900, **_figures(lost=0))]
    assert choose(rows, 0.01, "size", gates={"max_images_lost": 5}) == (rows[0], "champion")


def test_the_search_pick_respects_the_gates():
    trials = [{"number": 0, "state": "COMPLETE", "accuracy": 0.93, "macs": 10},
              {"number": 1, "state": "COMPLETE", "accuracy": 0.91, "macs": 10},
              {"number": 2, "state": "COMPLETE", "accuracy": 0.95, "macs": 500}]
    rows = {0: _row("trial-0", 0.93, 10, **_figures(lost=30)), 1: _row("trial-1", 0.91, 10, **_figures(lost=2)),
            2: _row("trial-2", 0.95, 500, **_figures(lost=0))}

    def budget(found):
        return pick(found, "macs", 100, 0.94, 0.05)

    assert pick_within_gates(trials, lambda t: rows[t["number"]], {}, budget) == (trials[0], "champion")
    assert pick_within_gates(trials, lambda t: rows[t["number"]], {"max_images_lost": 5}, budget) == (
        trials[1], "champion")  # the more accurate trial 0 lost too many images
    best, alias = pick_within_gates(trials, lambda t: rows[t["number"]], {"max_images_lost": 1}, budget)
    assert (best["number"], alias) == (0, "challenger")  # trial 2 passes the gate but not the budget
    assert pick_within_gates([], lambda t: {}, {"max_images_lost": 1}, budget) == (None, "none")


# ---------------------------------------------------------------- the report of a set of candidates

class Linear(nn.Module):
    def __init__(self, seed: int, k: int = 3):
        super().__init__()
        torch.manual_seed(seed)
        self.layer = nn.Linear(28 * 28, k)

    def forward(self, x):
        return self.layer(x.float().flatten(1))


def _images(n=12, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.rand(n, 1, 28, 28, generator=gen) * 255).round().to(torch.uint8)


def test_all_models_run_on_each_batch_once_and_agree_with_running_them_one_by_one():
    models = {"teacher": Linear(0), "student": Linear(1)}
    images, labels = _images(10), torch.arange(10) % 3
    batches = [(images[:4].float() / 255, labels[:4]), (images[4:].float() / 255, labels[4:])]
    logits, seen = cf.logits_of_models(models, batches)
    assert torch.equal(seen, labels)
    for name, model in models.items():
        torch.testing.assert_close(logits[name], model(images.float() / 255))
    corrupted = cf.corrupted_logits_of_models({n: (lambda px, m=m: m(px.float() / 255)) for n, m in models.items()},
                                              images, 3, ("shot_noise", "contrast"), (1, 3), batch_size=4)
    for name, model in models.items():
        alone = cor.corruption_logits(model, images, lambda px: px.float() / 255, 3, ("shot_noise", "contrast"), (1, 3))
        for corruption in alone:
            for severity in alone[corruption]:
                torch.testing.assert_close(corrupted[name][corruption][severity], alone[corruption][severity])
    with pytest.raises(CompressionError, match="the split is empty"):
        cf.logits_of_models(models, [])


def _evidence():
    gen = torch.Generator().manual_seed(1)
    labels = torch.arange(90) % 3
    teacher = torch.randn(90, 3, generator=gen)
    teacher[torch.arange(90), labels] += 3
    student = teacher + 0.5 * torch.randn(90, 3, generator=gen)
    student[:10, 0] += 6  # the first ten images all become class 0
    int8 = student.clone()
    int8[50, :] = 0.0
    int8[50, (student[50].argmax() + 1) % 3] = 9.0  # one image changes against its float parent
    test = {"teacher": teacher, "student": student, "int8": int8}
    val = {name: logits[::2] * 1.5 for name, logits in test.items()}
    index = torch.arange(0, 90, 3)
    corrupted = {name: {"contrast": {1: logits[index] * 0.8,
                                     2: logits[index] * 0.5 + 0.3 * torch.randn(30, 3, generator=gen)}}
                 for name, logits in test.items()}
    maps = {"teacher": torch.arange(2 * 8 * 8.).view(2, 8, 8), "student": torch.arange(2 * 8 * 8.).view(2, 8, 8) ** 2,
            "int8": -torch.arange(2 * 8 * 8.).view(2, 8, 8)}
    return cf.Evidence(["a", "b", "c"], labels, test, labels[::2], val, index, corrupted, torch.tensor([0, 1]), maps)


def test_reports_against_the_teacher_and_the_float_parent():
    evidence = _evidence()
    parents = cf.float_parents({"teacher": None, "student": None, "int8": "sha-s"},
                               {"teacher": "sha-t", "student": "sha-s", "int8": "sha-i"})
    assert parents == {"int8": "student"}
    reports = cf.all_reports(evidence, "teacher", parents, bootstrap=200, seed=0)
    assert reports["teacher"]["parent"] is None and reports["student"]["parent"] is None
    student, against_parent = reports["student"]["reference"], reports["int8"]["parent"]
    assert student["fidelity.lost"] > 0 and student["fidelity.drop_ci_low"] <= student["fidelity.accuracy_drop"] \
        <= student["fidelity.drop_ci_high"]
    assert against_parent["fidelity.agreement"] == pytest.approx(89 / 90)  # image 50 only
    assert reports["teacher"]["reference"]["fidelity.agreement"] == 1.0
    assert reports["teacher"]["reference"]["robustness.relative_error"] == 1.0
    assert reports["teacher"]["reference"]["attribution.spearman"] == pytest.approx(1.0)
    assert student["attribution.spearman"] == pytest.approx(1.0)  # a monotone transform ranks pixels alike
    assert reports["int8"]["reference"]["attribution.spearman"] == pytest.approx(-1.0)
    labels = evidence.test_labels[evidence.corruption_index]
    accuracy = cor.corruption_accuracy(evidence.corrupted["student"], labels)
    assert student["robustness.accuracy"] == pytest.approx((accuracy["contrast"][1] + accuracy["contrast"][2]) / 2)
    assert student["robustness.clean_accuracy"] == pytest.approx(
        (evidence.test["student"][evidence.corruption_index].argmax(1) == labels).double().mean().item())
    assert {"calibration.temperature", "calibration.ece_scaled", "calibration.ece_scaled_reference"} <= set(student)
    assert student["details"]["robustness"]["images"] == 30
    sentence = cf.candidate_sentences("int8", reports["int8"], "the teacher", "student", evidence.classes)
    assert sentence.startswith("int8 agrees with the teacher on ") and "For int8, after temperature scaling" in sentence
    assert "int8 agrees with its float parent (student) on 98.9% of test images" in sentence
    paragraph = cf.what_changed_paragraph([sentence], "Measured so.")
    assert paragraph.startswith("What changed: int8 agrees") and paragraph.endswith("\n\nMeasured so.")


def test_fidelity_figures_merge_into_the_evaluation_rows():
    evidence = _evidence()
    reports = cf.all_reports(evidence, "teacher", {"int8": "student"}, bootstrap=200)
    stored = {name: {side: None if r is None else {k: v for k, v in r.items() if k != "details"}
                     for side, r in pair.items()} for name, pair in reports.items()}
    rows = [{"candidate": "teacher", "accuracy": 0.9}, {"candidate": "int8", "accuracy": 0.8},
            {"candidate": "unmeasured", "accuracy": 0.5}]
    merged = with_fidelity(rows, stored, {"student": "s.", "int8": "i."}, "how")
    assert merged[1]["fidelity.agreement"] == reports["int8"]["reference"]["fidelity.agreement"]
    assert merged[1]["parent.fidelity.agreement"] == reports["int8"]["parent"]["fidelity.agreement"]
    assert merged[1]["what_changed"] == "i." and merged[1]["fidelity.method"] == "how"
    assert "what_changed" not in merged[0] and merged[2] == rows[2] and "fidelity.agreement" not in rows[1]
    assert set(FIDELITY_COLUMNS.values()) - {"parent.fidelity.agreement"} <= set(merged[1])


def test_table_columns_and_paragraph_of_the_report():
    from tasks.report import comparison_table, markdown, what_changed

    figures = {"fidelity.agreement": 0.98, "fidelity.drop_ci_low": 0.001, "fidelity.drop_ci_high": 0.012,
               "fidelity.lost": 12, "fidelity.gained": 7, "fidelity.max_class_drop": 0.03, "calibration.ece": 0.05,
               "calibration.ece_scaled": 0.02, "robustness.relative_error": 1.07, "attribution.spearman": 0.8}
    rows = [{"candidate": "teacher", "accuracy": 0.9, "params": 100, "nonzero_params": 100, "macs": 100,
             "size_bytes": 400, "latency_p50_ms": 2.0, "latency_p95_ms": 3.0, "throughput_ips": 100.0,
             "sha256": "a", "path": "a.pt", **figures, "fidelity.drop_ci_low": 0.0, "fidelity.drop_ci_high": 0.0,
             "fidelity.method": "Measured so."},
            {"candidate": "pruned", "accuracy": 0.89, "params": 10, "nonzero_params": 10, "macs": 10,
             "size_bytes": 40, "latency_p50_ms": 1.0, "latency_p95_ms": 1.5, "throughput_ips": 400.0,
             "sha256": "b", "path": "b.pt", **figures, "what_changed": "pruned forgot a few.",
             "fidelity.method": "Measured so."}]
    table = comparison_table(rows)
    assert {"agreement", "drop_ci_high", "lost", "ece_scaled", "corruption_error_x"} <= set(table.columns)
    text = markdown(table)
    assert "| drop_95ci" in text and "[0.0010, 0.0120]" in text and "12/7" in text and "[0.0000, 0.0000]" in text
    assert what_changed(rows) == "What changed: pruned forgot a few.\n\nMeasured so."
    assert what_changed([{k: v for k, v in r.items() if k != "fidelity.method"} for r in rows]) == ""


# ---------------------------------------------------------------- stability across seeds

def test_seed_spreads_mean_sd_and_worst_case():
    seeds = [[{"candidate": "teacher", "accuracy": 0.90}, {"candidate": "pruned", "accuracy": 0.88,
                                                           "fidelity.agreement": 0.95}],
             [{"candidate": "teacher", "accuracy": 0.92}, {"candidate": "pruned", "accuracy": 0.89,
                                                           "fidelity.agreement": 0.97}]]
    spreads = stability.seed_spreads(seeds)
    assert spreads["pruned"]["accuracy"] == {"n": 2, "mean": pytest.approx(0.885),
                                             "std": pytest.approx(0.01 / math.sqrt(2)), "worst": 0.88}
    assert spreads["pruned"]["accuracy_drop"]["worst"] == pytest.approx(0.03)  # a drop is worst when largest
    assert spreads["pruned"]["fidelity.agreement"]["worst"] == 0.95
    assert "fidelity.agreement" not in spreads["teacher"]


def test_population_churn_floor_and_hookers_forgotten_images():
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    predictions = {"teacher": torch.tensor([[0, 1, 2, 0, 1, 2], [0, 1, 2, 0, 1, 1], [0, 1, 2, 0, 1, 2]]),
                   "pruned": torch.tensor([[0, 1, 2, 1, 1, 2], [0, 1, 1, 1, 1, 1], [0, 1, 2, 1, 0, 2]])}
    report = stability.population_report(predictions, labels, ["a", "b", "c"])
    assert report["churn_floor"] == pytest.approx((1 / 6 + 0 + 1 / 6) / 3)
    pruned = report["candidates"]["pruned"]
    assert pruned["churn_per_seed"] == pytest.approx([1 / 6, 2 / 6, 2 / 6])  # against the same seed's teacher
    assert pruned["churn_vs_floor"] == pytest.approx((5 / 18) / (1 / 9))
    assert pruned["forgotten"] == 1 and pruned["forgotten_per_class"] == [1, 0, 0]  # image 3: modal 0 -> 1
    rows = stability.forgotten_population_rows(predictions, labels, ["a", "b", "c"], "pruned")
    assert rows == [{"index": 3, "label": "a", "reference_modal": "a", "reference_votes": 1.0,
                     "candidate_modal": "b", "candidate_votes": 1.0}]
    spreads = stability.seed_spreads([[{"candidate": "teacher", "accuracy": 0.9},
                                       {"candidate": "pruned", "accuracy": 0.8}]] * 2)
    text = stability.stability_markdown(spreads, report, [0, 1, 2])
    assert ("(the floor): 0.1111" in text and "| pruned | 0.8000 ± 0.0000 (worst 0.8000)" in text
            and "| 2.50x | 1 |" in text)
    metrics = stability.stability_metrics(spreads, report)
    assert metrics["pruned.stability.churn_vs_floor"] == pytest.approx(2.5)
    assert metrics["pruned.stability.forgotten"] == 1 and "teacher.stability.churn.mean" not in metrics
    with pytest.raises(CompressionError, match="no predictions of the reference"):
        stability.population_report({"pruned": predictions["pruned"]}, labels, ["a", "b", "c"])
    with pytest.raises(CompressionError, match="every population needs"):
        stability.population_report({**predictions, "x": torch.zeros(2, 6, dtype=torch.long)}, labels, ["a", "b", "c"])


def test_benchmark_section_reads_a_result():
    from bench.fidelity import SECTION, section

    row = {"accuracy": 0.9, "fidelity.agreement": 0.97, "fidelity.lost": 40, "fidelity.gained": 30,
           "fidelity.accuracy_drop": 0.002, "fidelity.drop_ci_low": -0.001, "fidelity.drop_ci_high": 0.005,
           "calibration.ece": 0.05, "calibration.ece_scaled": 0.02, "calibration.temperature": 1.4,
           "robustness.relative_error": 1.05, "robustness.accuracy": 0.7, "robustness.clean_accuracy": 0.9,
           "parent.fidelity.agreement": 0.997, "what_changed": "quantized_static agrees with the teacher."}
    population = {"reference": "teacher", "seeds": 3, "images": 5000, "churn_floor": 0.04,
                  "candidates": {"teacher": {"churn": {"mean": 0.0, "worst": 0.0}, "churn_vs_floor": 0.0,
                                             "forgotten": 0},
                                 "quantized_static": {"churn": {"mean": 0.05, "worst": 0.06}, "churn_vs_floor": 1.25,
                                                      "forgotten": 80}}}
    run = {"config": "configs/quickstart.yaml", "method": "Measured so.", "pipeline_seconds": 240.0,
           "fidelity_seconds": 24.0, "cost_share": 0.1, "registered": {"candidate": "quantized_static"},
           "rows": {"teacher": {**row, "parent.fidelity.agreement": None}, "quantized_static": row},
           "stability": {"population": population}}
    lines = section({"quick": False, "finished": "now", "tasks": {"quickstart": run, "fmnist10": {"error": "X: y"}}})
    text = "\n".join(lines)
    assert lines[0] == SECTION and "| quantized_static | 0.9000 | +0.20 | [-0.10, +0.50] |" in text
    assert "10.00% (goal <= 15%: met)" in text and "on 99.70% of test images (goal >= 99.5%: met)" in text
    assert "1.25x the floor; 80 images whose modal label changed (registered; goal <= 1.5x: met)" in text
    assert "teacher 0.050 -> 0.020" in text and "- Measured: Measured so." in text and "`X: y`" in text


def test_stability_needs_two_seeds_and_a_valid_config_before_any_work(capsys):
    from cli.main import main
    from flows.stability import check_seeds

    with pytest.raises(SystemExit) as stopped:
        main(["stability", "configs/smoke.yaml", "--seeds", "1"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "shrinkflow: error: argument --seeds: needs an integer of at least 2 (churn needs two seeds), got '1' "
        "(see shrinkflow stability --help)"]
    assert main(["stability", "configs/smoke.yaml", "--set", "fidelity.bootstrap=5"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        "shrinkflow: error: configs/smoke.yaml: fidelity.bootstrap: Input should be greater than or equal to 100"]
    for bad in (1, 0, True, "3"):
        with pytest.raises(ConfigError, match="seeds: at least 2 seeds"):
            check_seeds(bad)


def test_an_image_folder_file_broken_after_listing_leaves_out_the_figures_read_by_position(tmp_path):
    import logging

    from compression.data import load_dataset
    from compression.models import build_model
    from tasks.fidelity import gather_evidence
    from tests.test_image_folder import write_folder

    root = write_folder(tmp_path / "images", per_class=10)
    bundle = load_dataset("image-folder", data_dir=str(root), image_size=32, val_per_class=1, loader_workers=0)
    cfg = load_config("configs/smoke.yaml", {"fidelity.corruptions": "[contrast]", "fidelity.severities": "[1]"})
    torch.manual_seed(0)
    models = {"teacher": build_model("resnet18", 3, 3, 32).eval(), "student": build_model("resnet18", 3, 3, 32).eval()}
    evidence, shown = gather_evidence(cfg, bundle, models)
    assert set(evidence.corrupted) == {"teacher", "student"} and shown.shape == (2, 3, 32, 32)
    assert len(evidence.maps["student"]) == 2
    victim = bundle.manifest.path(int(bundle.test.rows[0]))
    raw = open(victim, "rb").read()
    open(victim, "wb").write(raw[:len(raw) // 2] + raw[-12:])  # pixels cut short, its header and end intact
    warnings = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("shrinkflow").addHandler(handler)
    try:
        evidence, shown = gather_evidence(cfg, bundle, models)
    finally:
        logging.getLogger("shrinkflow").removeHandler(handler)
    assert len(evidence.test_labels) == len(bundle.test) - 1
    assert evidence.corrupted == {} and evidence.maps == {} and shown.numel() == 0
    assert "[fidelity] 1 of 6 test images could not be read: no corruption, occlusion or forgotten-image figures" \
        in warnings

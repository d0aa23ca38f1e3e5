"""The pure core of the budgeted search (compression.search): budgets, the space, width by construction on a
real resnet18, and picking. Fast: one 28x28 resnet18, trimmed to one block per stage before pruning."""

import math

import pytest
import torch

from compression import CompressionError, search
from compression.checkpoint import save_model
from compression.measure import count_macs, count_nonzero_params
from compression.models import build_model, example_input
from compression.pruning import prune_structured
from compression.quantization import quantize
from compression.search import Choice, FloatRange
from compression.trimming import trim

META = {"classes": ["t-shirt", "trouser", "sneaker"], "mean": [0.286], "std": [0.353]}


@pytest.fixture(scope="module")
def teacher():
    torch.manual_seed(0)
    return build_model("resnet18", 3, in_channels=1, input_size=28).eval()


# ---------------------------------------------------------------- budgets

def test_resolve_limit_numbers_and_shares():
    assert search.resolve_limit(3e6, 34e6, "macs") == 3e6
    assert search.resolve_limit(250, 1000, "params") == 250.0
    assert search.resolve_limit("3e6", 34e6, "macs") == 3e6  # YAML leaves 3e6 as text
    assert search.resolve_limit("10%", 2e6, "size_bytes") == pytest.approx(2e5)
    assert search.resolve_limit(" 2.5 % ", 400.0, "latency_ms") == pytest.approx(10.0)
    assert search.resolve_limit("100%", 7.0, "macs") == pytest.approx(7.0)


@pytest.mark.parametrize("value, teacher_value, metric, message", [
    ("120%", 100.0, "macs", "search.budget.max: 120% is over 100% of the teacher"),
    ("0%", 100.0, "macs", "must be above 0% of the teacher"),
    ("-5%", 100.0, "macs", "must be above 0%"),
    ("ten%", 100.0, "macs", "'ten%' is not a number"),
    ("%", 100.0, "macs", "not a number"),
    ("lots", 100.0, "macs", "'lots' is not a number"),
    (0, 100.0, "macs", "must be a positive finite macs limit"),
    (-3.0, 100.0, "params", "must be a positive finite"),
    (float("inf"), 100.0, "macs", "must be a positive finite"),
    (float("nan"), 100.0, "macs", "must be a positive finite"),
    ("nan", 100.0, "macs", "must be a positive finite"),
    (True, 100.0, "macs", "is not a number"),
    (None, 100.0, "macs", "is not a number"),
    ("10%", 0.0, "macs", "needs the teacher's macs"),
    (5.0, 100.0, "flops", "unknown metric 'flops'; choose from macs, params, size_bytes, latency_ms"),
])
def test_resolve_limit_errors(value, teacher_value, metric, message):
    with pytest.raises(CompressionError, match=message.replace("(", r"\(").replace(")", r"\)")):
        search.resolve_limit(value, teacher_value, metric)


# ---------------------------------------------------------------- the space

SPACE = {
    "trim.keep_per_stage": Choice((1, 2, [1, 1, 2, 1])),
    "prune.importance": Choice(("l1", "l2")),
    "distill.temperature": FloatRange(1.0, 8.0),
    "distill.alpha": FloatRange(0.5, 1.0),
    "quantize.enabled": Choice((True, False)),
    "prune.ratio": FloatRange(0.3, 0.9),
    "distill.train.lr": FloatRange(1e-4, 1e-1, log=True),
}


@pytest.mark.parametrize("space, message", [
    ({}, "search.space is empty"),
    ({"prune.importance": Choice(())}, r"search.space.prune.importance: needs at least one choice"),
    ({"prune.ratio": FloatRange(0.9, 0.3)}, r"search.space.prune.ratio: low 0.9 must be below high 0.3"),
    ({"prune.ratio": FloatRange(0.5, 0.5)}, "must be below high"),
    ({"prune.ratio": FloatRange(0.1, float("inf"))}, "search.space.prune.ratio: range bounds must be finite"),
    ({"distill.train.lr": FloatRange(0.0, 1.0, log=True)}, "search.space.distill.train.lr: a log range needs low > 0"),
    ({"trim.keep_per_stage": Choice((1, 1.0))}, "search.space.trim.keep_per_stage: choice 1.0 duplicates"),
    ({"trim.keep_per_stage": Choice(([1, 2], (1, 2)))}, "duplicates another choice"),
    ({"prune.importance": Choice(("l1", object()))}, "a choice of type object cannot be searched"),
    ({"prune.importance": Choice("l1")}, "search.space.prune.importance: choices must be a tuple or list"),
    ({"prune.ratio": (0.3, 0.9)}, "search.space.prune.ratio: expected a Choice or a FloatRange, got tuple"),
])
def test_validate_space_errors(space, message):
    with pytest.raises(CompressionError, match=message):
        search.validate_space(space)


def test_sample_with_a_real_optuna_trial_stays_in_the_space_and_decodes_lists():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    seen_keeps = []
    for _ in range(12):
        trial = study.ask()
        settings = search.sample(trial, SPACE)
        assert set(settings) == set(SPACE)
        for key, knob in SPACE.items():
            if isinstance(knob, Choice):
                assert settings[key] in knob.values and type(settings[key]) in {type(v) for v in knob.values}
            else:
                assert knob.low <= settings[key] <= knob.high
        seen_keeps.append(settings["trim.keep_per_stage"])
        study.tell(trial, settings["distill.alpha"])
    assert [1, 1, 2, 1] in seen_keeps  # the list choice came back as a list, not as its text
    lists_only = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0)).ask()  # one space per study
    settings = search.sample(lists_only, {"trim.keep_per_stage": Choice(([1, 1, 2, 1], [2, 2, 2, 2]))})
    assert isinstance(settings["trim.keep_per_stage"], list)
    assert lists_only.params["trim.keep_per_stage"] == str(settings["trim.keep_per_stage"])  # the sampler's text


def test_grid_size_and_values():
    points = 3
    rows = search.grid(SPACE, points)
    assert len(rows) == 3 * 2 * points * points * 2 * points * points
    assert {r["distill.temperature"] for r in rows} == {1.0, 4.5, 8.0}
    assert sorted({r["distill.train.lr"] for r in rows}) == pytest.approx([1e-4, math.sqrt(1e-4 * 1e-1), 1e-1])
    assert sum(r["trim.keep_per_stage"] == [1, 1, 2, 1] for r in rows) == len(rows) // 3
    assert len({tuple(map(str, r.values())) for r in rows}) == len(rows)  # every combination once
    assert search.grid({"prune.ratio": FloatRange(0.3, 0.9)}, 4) == [
        {"prune.ratio": pytest.approx(v)} for v in (0.3, 0.5, 0.7, 0.9)]
    with pytest.raises(CompressionError, match="grid points must be an integer >= 2"):
        search.grid(SPACE, 1)


# ---------------------------------------------------------------- the recipe

def test_recipe_point_clips_ranges_takes_or_nears_choices_and_leaves_the_rest():
    recipe = {"trim.keep_per_stage": 3, "prune.importance": "taylor", "distill.temperature": 12.0,
              "distill.alpha": 0.9, "quantize.enabled": True, "prune.ratio": 0.1}  # no distill.train.lr
    point, notes = search.recipe_point(SPACE, recipe)
    assert point == {"trim.keep_per_stage": 2, "distill.temperature": 8.0, "distill.alpha": 0.9,
                     "quantize.enabled": True, "prune.ratio": 0.3}
    assert set(notes) == {"trim.keep_per_stage", "prune.importance", "distill.temperature", "prune.ratio"}
    assert "nearest, 2" in notes["trim.keep_per_stage"] and "left to the sampler" in notes["prune.importance"]
    assert "clipped to 8.0" in notes["distill.temperature"]
    # a list choice is the sampler's text; True is not the choice 1, and 1 is not the choice True
    lists = {"trim.keep_per_stage": Choice((1, [1, 1, 2, 1])), "quantize.enabled": Choice((1, 2))}
    assert search.recipe_point(lists, {"trim.keep_per_stage": [1, 1, 2, 1]})[0] == {
        "trim.keep_per_stage": "[1, 1, 2, 1]"}
    assert search.recipe_point(lists, {"quantize.enabled": True})[0] == {}
    assert search.recipe_point({"quantize.enabled": Choice((True, False))}, {"quantize.enabled": 1})[0] == {}
    assert search.recipe_point(lists, {"trim.keep_per_stage": None}) == (
        {}, {"trim.keep_per_stage": "None is not one of the choices: left to the sampler"})


def test_the_recipe_point_is_what_an_optuna_trial_enqueued_with_it_samples():
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    point, _ = search.recipe_point(SPACE, {"trim.keep_per_stage": [1, 1, 2, 1], "prune.importance": "l1",
                                           "distill.temperature": 4.0, "distill.alpha": 0.9,
                                           "quantize.enabled": False, "prune.ratio": 0.5, "distill.train.lr": 0.01})
    study = optuna.create_study(sampler=optuna.samplers.TPESampler(seed=0))
    study.enqueue_trial(point, user_attrs={"enqueued": search.RECIPE})
    trial = study.ask()
    assert search.sample(trial, SPACE) == {"trim.keep_per_stage": [1, 1, 2, 1], "prune.importance": "l1",
                                           "distill.temperature": 4.0, "distill.alpha": 0.9,
                                           "quantize.enabled": False, "prune.ratio": 0.5, "distill.train.lr": 0.01}
    assert trial.user_attrs == {"enqueued": "recipe"}


def test_the_recipe_keeps_its_own_prune_ratio_where_it_meets_the_budget():
    assert search.recipe_ratio(0.45, 0.6, 0.9) == 0.6  # within the budget: the hand-set recipe itself
    assert search.recipe_ratio(0.7, 0.6, 0.9) == 0.7  # too little pruning for the budget: the least that meets it
    assert search.recipe_ratio(0.45, 0.95, 0.9) == 0.9  # past where costs stop falling: the space's top
    assert search.recipe_ratio(0.3, None, 0.9) == 0.3  # a recipe that does not prune: the least that meets it


def test_finalists_keep_the_recipe_trial_when_it_ranks_below_top_k():
    ranked = [{"number": 3}, {"number": 0}, {"number": 2, "enqueued": search.RECIPE}, {"number": 1}]
    assert [t["number"] for t in search.finalists(ranked, 1)] == [3, 2]
    assert [t["number"] for t in search.finalists(ranked, 3)] == [3, 0, 2]  # already among them: not twice
    assert [t["number"] for t in search.finalists(ranked[:2], 1)] == [3]  # no recipe trial completed
    with pytest.raises(CompressionError, match="top_k must be at least 1"):
        search.finalists(ranked, 0)


def test_target_labels_are_registry_aliases():
    from mlflow.utils.validation import _validate_model_alias_name, _validate_model_alias_name_reserved

    labels = {value: search.target_label(metric, value) for metric, value in [
        ("macs", "10%"), ("macs", " 2.5 %"), ("macs", 3e6), ("latency_ms", 4.5), ("params", 123456),
        ("size_bytes", "0.5%")]}
    assert list(labels.values()) == ["macs-10pct", "macs-2p5pct", "macs-3000000", "latency-ms-4p5", "params-123456",
                                     "size-bytes-0p5pct"]
    for label in labels.values():
        _validate_model_alias_name(label)
        _validate_model_alias_name_reserved(label)
    with pytest.raises(CompressionError, match="unknown metric"):
        search.target_label("flops", "10%")


def test_targets_take_turns_and_stop_at_their_quota():
    started, order = {"macs-5pct": 0, "macs-10pct": 0, "macs-25pct": 2}, []
    while (label := search.next_target(started, 3)) is not None:
        order.append(label)
        started[label] += 1
    assert order == ["macs-5pct", "macs-10pct", "macs-5pct", "macs-10pct", "macs-5pct", "macs-10pct", "macs-25pct"]
    assert search.next_target({}, 3) is None


def test_a_target_picks_among_its_own_trials_and_any_within_its_budget():
    trials = [{"number": 0, "target": "a", "macs": 50, "state": "COMPLETE", "accuracy": 0.80},
              {"number": 0, "target": "b", "macs": 90, "state": "COMPLETE", "accuracy": 0.85},
              {"number": 1, "target": "b", "macs": 120, "state": "COMPLETE", "accuracy": 0.90},
              {"number": 1, "target": "a", "state": "PRUNED"}]
    tight = search.trials_for_target(trials, "a", "macs", 60)
    loose = search.trials_for_target(trials, "b", "macs", 100)
    assert tight == [trials[0], trials[3]] and loose == trials[:3]
    assert search.pick(loose, "macs", 100, 0.9, 1.0)[0] is trials[1]  # within b's budget: not b's trial 1


def test_each_target_keeps_its_own_recipe_trial():
    ranked = [{"number": 3, "target": "a"}, {"number": 0, "target": "b", "enqueued": search.RECIPE},
              {"number": 0, "target": "a", "enqueued": search.RECIPE}]
    assert search.finalists(ranked, 1, "a") == [ranked[0], ranked[2]]
    assert search.finalists(ranked, 1, "b") == [ranked[0], ranked[1]]
    assert search.finalists(ranked, 1) == [ranked[0], ranked[1]]


def test_the_trials_trained_again_per_target_each_once():
    trials = [{"name": "a0", "number": 0, "target": "a", "macs": 50, "state": "COMPLETE", "accuracy": 0.80,
               "enqueued": search.RECIPE},
              {"name": "a1", "number": 1, "target": "a", "macs": 55, "state": "COMPLETE", "accuracy": 0.88},
              {"name": "b0", "number": 0, "target": "b", "macs": 90, "state": "COMPLETE", "accuracy": 0.82,
               "enqueued": search.RECIPE},
              {"name": "b1", "number": 1, "target": "b", "macs": 95, "state": "FAIL"}]
    targets = [("a", 60), ("b", 100)]
    names = [t["name"] for t in search.to_retrain(trials, targets, "macs", 0.9, 0.5, top_k=1)]
    assert names == ["a1", "a0", "b0"]  # a1 is best for both targets, trained once; each target's recipe too
    assert [t["name"] for t in search.to_retrain(trials, targets, "macs", 0.9, 0.5, top_k=0)] == ["a1"]


def test_target_aliases():
    assert [search.target_alias("macs-10pct", False, v) for v in ("champion", "challenger")] == [
        "champion", "challenger"]
    assert [search.target_alias("macs-10pct", True, v) for v in ("champion", "challenger")] == [
        "macs-10pct", "macs-10pct-challenger"]


def test_trial_steps_follow_the_schedule_whatever_trained_before():
    # 2 distillation epochs, then 3 prune steps of 2 recovery epochs each: steps 1..8
    steps = [search.trial_step("distill", 0, e, 2, 2) for e in (1, 2)]
    steps += [search.trial_step("prune", part, e, 2, 2) for part in (1, 2, 3) for e in (1, 2)]
    assert steps == list(range(1, 9)) and search.trial_length(2, 3, 2) == 8
    assert search.trial_step("prune", 2, 1, 2, 2) == 5  # distillation from the cache: step 2's epochs stay put
    assert search.trial_step("finetune", 0, 1, 2, 2) is None and search.trial_step("distill", 1, 1, 2, 2) is None
    assert search.trial_length(3, 0, 2) == 3  # a trial that does not prune


# ---------------------------------------------------------------- width by construction

def test_smallest_ratio_within_bisects_a_monotone_cost_with_few_calls():
    calls = []

    def cost(ratio):  # channel pruning: cost falls like the square of the kept width
        calls.append(ratio)
        return 100 * (1 - ratio) ** 2

    ratio = search.smallest_ratio_within(cost, 25.0, 0.0, 0.9, tolerance=0.01)
    assert len(calls) == len(set(calls)) == 2 + math.ceil(math.log2(0.9 / 0.01))  # each ratio once
    assert cost(ratio) <= 25.0 < cost(ratio - 0.01)
    assert ratio == pytest.approx(0.5, abs=0.01)

    calls.clear()
    assert search.smallest_ratio_within(cost, 100.0, 0.2, 0.9) == 0.2 and calls == [0.2]  # low already fits
    calls.clear()
    assert search.smallest_ratio_within(cost, 0.5, 0.0, 0.9) is None and len(calls) == 2  # even high is over
    with pytest.raises(CompressionError, match="0 <= low <= high < 1"):
        search.smallest_ratio_within(cost, 1.0, 0.5, 1.0)


@pytest.fixture(scope="module")
def cost(teacher):
    """structural_cost of the teacher trimmed to one block per stage, one prune step, remembered across tests
    (each call is a trim + prune + measure)."""
    memo = {}

    def at(metric, ratio, **settings):
        settings = {"keep_per_stage": 1, "iterative_steps": 1, **settings}
        key = (metric, ratio, repr(sorted(settings.items())))
        if key not in memo:
            memo[key] = search.structural_cost(teacher, metric, ratio, **settings)
        return memo[key]

    return at


def test_smallest_ratio_for_a_macs_budget_on_resnet18(cost):
    calls = []

    def macs(ratio):
        calls.append(ratio)
        return cost("macs", ratio)

    limit = 0.3 * cost("macs", 0.0)  # ratio 0: trimmed, not pruned
    ratio = search.smallest_ratio_within(macs, limit, 0.3, 0.7, tolerance=0.1)
    assert 0.3 < ratio < 0.7 and len(calls) == len(set(calls)) == 2 + 2  # the ends, then two halvings
    assert cost("macs", ratio) <= limit < cost("macs", ratio - 0.1)


def _trained_like(model):
    """Weights as training would leave them: the same structure, other values."""
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p))
    return model


@pytest.fixture(scope="module")
def student(teacher):
    """What the trim, distill and prune stages make of the teacher: keep 1, trained, ratio 0.5, 3 steps."""
    torch.manual_seed(1)
    model = _trained_like(trim(teacher, 1))
    prune_structured(model, example_input(model), 0.5, "l2", 3, 8)
    return model.eval()


def test_structural_cost_agrees_with_trimming_and_pruning_a_trained_student(teacher, student, cost):
    """Torch-Pruning's widths depend on the ratio and the structure, not on the weights: the untrained
    teacher's cost is the trained student's."""
    x = example_input(student)
    steps3 = dict(iterative_steps=3, round_to=8)
    assert cost("macs", 0.5, **steps3) == count_macs(student, x)
    assert cost("params", 0.5, **steps3) == count_nonzero_params(student)[0]
    assert cost("params", 0.0, quantize=True) == cost("params", 0.0)  # int8 keeps its float source's params
    # the search's own knobs, as sample() returns them, map onto the same call
    assert search.cost_kwargs({"trim.keep_per_stage": [1, 1, 2, 1], "prune.importance": "l1", "distill.alpha": 0.7}) \
        == {"keep_per_stage": [1, 1, 2, 1], "importance": "l1"}
    with pytest.raises(CompressionError, match="latency_ms is measured on the trained model"):
        search.structural_cost(teacher, "latency_ms", 0.5)


def test_file_sizes_match_the_prune_and_quantize_stage_files(student, cost, tmp_path):
    steps3 = dict(iterative_steps=3, round_to=8, meta=META)
    float_size = cost("size_bytes", 0.5, **steps3)
    save_model(student, tmp_path / "pruned.pt", meta={**META, "candidate": "pruned"})  # as save_candidate does
    assert float_size == (tmp_path / "pruned.pt").stat().st_size
    int8_size = cost("size_bytes", 0.5, quantize=True, **steps3)
    calibration = [torch.rand(16, 1, 28, 28) for _ in range(2)]  # other data, other scales: same size
    save_model(quantize(student, "static", example_input(student), calibration), tmp_path / "quantized_static.pt",
               meta={**META, "candidate": "quantized_static"})
    assert int8_size == (tmp_path / "quantized_static.pt").stat().st_size
    assert int8_size < 0.4 * float_size


def test_cost_rises_above_max_monotone_ratio(teacher, cost):
    assert search.max_monotone_ratio(teacher, 8) == 0.875  # the 64-channel stem: 8 channels left at 0.875
    assert search.max_monotone_ratio(teacher, None) == 0.984
    # above it Torch-Pruning skips the stem (its target rounds to 0 channels), which stays at 64: MACs rise
    assert cost("macs", 0.95) > 2 * cost("macs", 0.875)


def test_smallest_reachable_and_an_unreachable_budget(teacher, cost):
    space = {"trim.keep_per_stage": Choice((1, [1, 1, 2, 1])), "prune.ratio": FloatRange(0.3, 0.95),
             "prune.importance": Choice(("l1", "taylor"))}
    floor = search.smallest_reachable(teacher, "macs", space, iterative_steps=1, round_to=8)
    assert floor == cost("macs", 0.875)  # the shallowest depth at max_monotone_ratio, not at 0.95
    assert floor < count_macs(teacher, example_input(teacher)) / 40
    assert search.smallest_ratio_within(lambda r: cost("macs", r), 0.9 * floor, 0.7, 0.875) is None
    with pytest.raises(CompressionError, match="latency_ms is measured"):
        search.smallest_reachable(teacher, "latency_ms", space)


# ---------------------------------------------------------------- picking and reporting

def _trial(number, accuracy, macs, state="COMPLETE"):
    return {"number": number, "accuracy": accuracy, "macs": macs, "params": macs / 3, "size_bytes": macs * 4,
            "latency_ms": macs / 1e6, "state": state, "settings": {"prune.ratio": 0.5}}


TEACHER_ACC, MAX_DROP, LIMIT = 0.92, 0.02, 3e6
TRIALS = [
    _trial(0, 0.93, 5e6),  # accurate, over budget
    _trial(1, 0.85, 2e6),  # within budget, too inaccurate
    _trial(2, 0.905, 2.5e6),  # feasible
    {"number": 3, "state": "FAIL", "settings": {}, "error": "RuntimeError: out of memory"},
    _trial(4, 0.915, 2.9e6),  # feasible, best
    _trial(5, 0.915, 2.1e6),  # feasible, as accurate and cheaper: the champion
    _trial(6, 0.99, 1e6, state="FAIL"),  # failed trials never count, whatever they report
]


@pytest.mark.parametrize("metric, settings, refused", [
    ("macs", {}, None),
    ("latency_ms", {"prune_method": "unstructured", "student": "resnet18"}, None),  # measured, not constructed
    ("macs", {"prune_method": "unstructured"}, "prune.method: unstructured: a macs budget"),
    ("params", {"prune_enabled": False}, "prune.method: structured: a params budget"),
    ("size_bytes", {"global_pruning": True}, "prune.global_pruning: true: a size_bytes budget"),
    ("macs", {"student": "resnet18"}, "distill.student: resnet18: a macs budget"),
])
def test_construction_refusal(metric, settings, refused):
    stages = {"prune_enabled": True, "prune_method": "structured", "global_pruning": False, "student": None,
              **settings}
    problem = search.construction_refusal(metric, **stages)
    assert problem == refused if refused is None else problem.startswith(refused)


def test_is_feasible():
    assert search.is_feasible(TRIALS[2], "macs", LIMIT, TEACHER_ACC, MAX_DROP)
    assert not search.is_feasible(TRIALS[0], "macs", LIMIT, TEACHER_ACC, MAX_DROP)  # over budget
    assert not search.is_feasible(TRIALS[1], "macs", LIMIT, TEACHER_ACC, MAX_DROP)  # too inaccurate
    assert not search.is_feasible(TRIALS[3], "macs", LIMIT, TEACHER_ACC, MAX_DROP)
    assert not search.is_feasible(TRIALS[6], "macs", LIMIT, TEACHER_ACC, MAX_DROP)
    assert search.is_feasible(_trial(7, 0.90, 3e6), "macs", LIMIT, TEACHER_ACC, MAX_DROP)  # both on the edge
    assert search.is_feasible(_trial(8, 0.1 + 0.7999999999999, 1e6), "macs", LIMIT, 0.92, 0.02)  # float slack
    assert not search.is_feasible({"number": 9, "accuracy": 0.95, "state": "COMPLETE"}, "latency_ms", 5, 0.9, 0.1)
    with pytest.raises(CompressionError, match="unknown metric 'flops'"):
        search.is_feasible(TRIALS[2], "flops", LIMIT, TEACHER_ACC, MAX_DROP)


def test_pick_champion_challenger_and_nothing():
    best, label = search.pick(TRIALS, "macs", LIMIT, TEACHER_ACC, MAX_DROP)
    assert (best["number"], label) == (5, "champion")
    infeasible = [TRIALS[0], TRIALS[1], _trial(2, 0.80, 1e6), TRIALS[3]]
    best, label = search.pick(infeasible, "macs", LIMIT, TEACHER_ACC, MAX_DROP)
    assert (best["number"], label) == (1, "challenger")  # within budget and the most accurate of those
    best, label = search.pick([TRIALS[0], _trial(1, 0.95, 4e6), TRIALS[3]], "macs", LIMIT, TEACHER_ACC, MAX_DROP)
    assert (best["number"], label) == (1, "challenger")  # none within budget: the closest to it
    assert search.pick([TRIALS[3], TRIALS[6]], "macs", LIMIT, TEACHER_ACC, MAX_DROP) == (None, "none")
    assert search.pick([], "macs", LIMIT, TEACHER_ACC, MAX_DROP) == (None, "none")


def test_best_so_far_follows_trial_numbers():
    shuffled = [TRIALS[i] for i in (4, 0, 6, 2, 1, 5, 3)]
    assert search.best_so_far(shuffled, "macs", LIMIT, TEACHER_ACC, MAX_DROP) == [
        None, None, 0.905, 0.905, 0.915, 0.915, 0.915]
    assert search.best_so_far([TRIALS[0], TRIALS[3]], "macs", LIMIT, TEACHER_ACC, MAX_DROP) == [None, None]
    assert search.best_so_far([], "macs", LIMIT, TEACHER_ACC, MAX_DROP) == []


def test_pareto_front():
    points = [(5.0, 0.93), (2.0, 0.85), (2.5, 0.905), (2.9, 0.915), (2.1, 0.915), (3.0, 0.90), (2.1, 0.915),
              (1.0, 0.80), (2.0, 0.80)]
    assert search.pareto_front(points) == [(1.0, 0.80), (2.0, 0.85), (2.1, 0.915), (5.0, 0.93)]
    assert search.pareto_front([]) == []


def test_previous_best_is_the_most_accurate_feasible_earlier_trial():
    earlier = [{"settings": {"a": 1}, "accuracy": 0.95, "feasible": False},
               {"settings": {"a": 2}, "accuracy": 0.90, "feasible": True},
               {"settings": {"a": 3}, "accuracy": 0.92, "feasible": True},
               {"settings": {"a": 4}, "accuracy": 0.92, "feasible": True}]
    assert search.previous_best(earlier)["settings"] == {"a": 3}  # ties: the first given
    assert search.previous_best(earlier[:1]) is None and search.previous_best([]) is None

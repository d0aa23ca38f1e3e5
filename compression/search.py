"""Pure core of the budgeted compression search (issue #13): find the most accurate compressed model whose
cost on one metric stays within a budget.

What lives here, free of any sampler, scheduler or tracker (the Optuna trial is duck-typed):
- budgets: `resolve_limit` turns "3e6" or "10%" (of the teacher) into an absolute limit; `target_label` names
  one target of a search with several ("macs-10pct"), the alias of the model registered for it;
- the search space: `Choice` / `FloatRange` keyed by dotted config keys, `sample` (one trial's settings)
  and `grid` (the dense grid a benchmark compares the search with);
- width by construction: `structural_cost` is what a trial's final model will cost on MACs, params or file
  size, computed from the teacher without training (trim and prune as the stages do, then measure), and
  `smallest_ratio_within` bisects the least pruning that meets the budget, so every trial is within it;
- the recipe: `recipe_point` places the config's own settings in the space (the search's first trial), and
  `finalists` keeps that trial among the ones trained again at full epochs;
- fidelity: `trial_step` places each epoch a trial trains on the schedule a pruner compares trials on;
- picking and reporting over trial dicts: `is_feasible`, `pick`, `best_so_far`, `pareto_front`.

Latency is measured, not structural: a latency budget is checked on the trained trial, never constructed.
"""

from __future__ import annotations

import copy
import itertools
import json
import math
import numbers
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compression import CompressionError
from compression.budget import within_drop
from compression.candidates import PRUNED, QUANTIZED_STATIC, STUDENT_KD
from compression.checkpoint import save_model
from compression.measure import count_macs, count_nonzero_params, file_size
from compression.models import example_input, head, quantization_info, require_spec
from compression.pruning import prune_structured
from compression.quantization import quantize as quantize_model
from compression.trimming import trim

METRICS = ("macs", "params", "size_bytes", "latency_ms")
# Metrics a model's structure fixes (no training or timing needed): the budget is met by construction.
STRUCTURAL_METRICS = ("macs", "params", "size_bytes")
# The prune ratio smallest_reachable assumes when the space does not search it.
DEFAULT_MAX_RATIO = 0.9
# Dotted config keys of the settings that change a trial's structure, and structural_cost's keyword for each.
COST_KEYS = {
    "trim.keep_per_stage": "keep_per_stage",
    "trim.strategy": "trim_strategy",
    "prune.importance": "importance",
    "prune.iterative_steps": "iterative_steps",
    "prune.round_to": "round_to",
    "quantize.enabled": "quantize",
}


# ---------------------------------------------------------------- budgets

def _check_metric(metric: str, structural: bool = False) -> None:
    """Refuse an unknown budget metric (or, with `structural`, one that needs a trained, timed model)."""
    if metric not in METRICS:
        raise CompressionError(f"search.budget.metric: unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if structural and metric not in STRUCTURAL_METRICS:
        raise CompressionError(f"search.budget.metric: {metric} is measured on the trained model, not computed "
                               f"from its structure; structural metrics: {', '.join(STRUCTURAL_METRICS)}")


def construction_refusal(metric: str, *, prune_enabled: bool, prune_method: str, global_pruning: bool,
                         student: str | None) -> str | None:
    """Why a `metric` budget cannot be met by construction with these stage settings, or None: only the
    (trimmed) teacher pruned structurally, layer by layer, has a size that the prune ratio sets."""
    if metric not in STRUCTURAL_METRICS:
        return None
    refused = {"prune.global_pruning: true": global_pruning,
               f"prune.method: {prune_method}": prune_method != "structured" or not prune_enabled,
               f"distill.student: {student}": student is not None}
    for setting, bad in refused.items():
        if bad:
            return (f"{setting}: a {metric} budget is met by construction only by the trimmed teacher pruned "
                    "structurally with local pruning; use a latency_ms budget or change the setting")
    return None


def _number(text: str, original: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise CompressionError(f"search.budget.max: {original!r} is not a number or a share like '10%'") from None


def resolve_limit(value: float | str, teacher_value: float, metric: str) -> float:
    """The budget as an absolute limit on `metric`: `value` itself (3e6 MACs; numeric strings such as "3e6",
    which YAML leaves as text, too) or a share of the teacher's cost ("10%", "2.5%")."""
    _check_metric(metric)
    if isinstance(value, str):
        text = value.strip()
        if text.endswith("%"):
            share = _number(text[:-1].strip(), value)
            if not (math.isfinite(share) and share > 0):
                raise CompressionError(f"search.budget.max: {text} must be above 0% of the teacher")
            if share > 100:
                raise CompressionError(f"search.budget.max: {text} is over 100% of the teacher")
            if not (isinstance(teacher_value, numbers.Real) and math.isfinite(teacher_value) and teacher_value > 0):
                raise CompressionError(f"search.budget.max: {text} needs the teacher's {metric}, got {teacher_value!r}")
            return share / 100 * float(teacher_value)
        number = _number(text, value)
    elif isinstance(value, numbers.Real) and not isinstance(value, bool):
        number = float(value)
    else:
        raise CompressionError(f"search.budget.max: {value!r} is not a number or a share like '10%'")
    if not (math.isfinite(number) and number > 0):
        raise CompressionError(f"search.budget.max: {value} must be a positive finite {metric} limit")
    return number


def target_label(metric: str, value: float | str) -> str:
    """A budget target's name, fit to be a registry alias: the metric and the budget as given, a share as
    "pct" ("10%" of the MACs: "macs-10pct"; "2.5%": "macs-2p5pct"; 3e6: "macs-3000000"; 4.5 ms: "latency-ms-4p5")."""
    _check_metric(metric)
    text = str(value).strip()
    if text.endswith("%"):
        amount, unit = _number(text[:-1].strip(), value), "pct"
    else:
        amount, unit = _number(text, value), ""
    shown = f"{amount:.6g}" if not amount.is_integer() or abs(amount) >= 1e15 else str(int(amount))
    shown = shown.replace(".", "p").replace("+", "")
    return f"{metric.replace('_', '-')}-{shown}{unit}"


# ---------------------------------------------------------------- the search space

@dataclass(frozen=True)
class Choice:
    """A categorical knob. Values may be None, bools, numbers, strings or lists/tuples (per-stage counts)."""

    values: tuple

    def __post_init__(self):
        if isinstance(self.values, list):
            object.__setattr__(self, "values", tuple(self.values))


@dataclass(frozen=True)
class FloatRange:
    """A continuous knob in [low, high], sampled on a log scale when `log` (then low must be > 0)."""

    low: float
    high: float
    log: bool = False


Space = dict[str, Choice | FloatRange]

# Optuna's suggest_categorical takes only these; other values go to it as their JSON text.
_SCALARS = (type(None), bool, int, float, str)


def _encode(value):
    if isinstance(value, _SCALARS):
        return value
    if isinstance(value, (list, tuple, dict)):
        try:
            return json.dumps(value, sort_keys=True)
        except (TypeError, ValueError):
            pass
    raise TypeError(type(value).__name__)


def _encoded(key: str, choice: Choice) -> list:
    """What the sampler sees for each value: scalars as they are, lists as JSON text ("[1, 1, 2, 1]")."""
    try:
        encoded = [_encode(v) for v in choice.values]
    except TypeError as exc:
        raise CompressionError(f"search.space.{key}: a choice of type {exc} cannot be searched; use numbers, "
                               "strings, bools or lists of them") from None
    for i, a in enumerate(encoded):
        if any(a == b for b in encoded[:i]):  # 1 == 1.0 == True: the sampler could not tell them apart
            raise CompressionError(f"search.space.{key}: choice {choice.values[i]!r} duplicates another choice")
    return encoded


def _check_range(key: str, knob: FloatRange) -> None:
    bounds = (knob.low, knob.high)
    if not all(isinstance(b, numbers.Real) and not isinstance(b, bool) and math.isfinite(b) for b in bounds):
        raise CompressionError(f"search.space.{key}: range bounds must be finite numbers, got {bounds}")
    if not knob.low < knob.high:
        raise CompressionError(f"search.space.{key}: low {knob.low} must be below high {knob.high}")
    if knob.log and knob.low <= 0:
        raise CompressionError(f"search.space.{key}: a log range needs low > 0, got {knob.low}")


def validate_space(space: Space) -> None:
    """Refuse an empty space, a key without a usable knob, an empty or ambiguous choice, a bad range."""
    if not isinstance(space, dict) or not space:
        raise CompressionError("search.space is empty: give at least one key to search")
    for key, knob in space.items():
        if not isinstance(key, str) or not key:
            raise CompressionError(f"search.space: keys are dotted config keys, got {key!r}")
        if isinstance(knob, Choice):
            if not isinstance(knob.values, tuple):
                raise CompressionError(f"search.space.{key}: choices must be a tuple or list, got {knob.values!r}")
            if not knob.values:
                raise CompressionError(f"search.space.{key}: needs at least one choice")
            _encoded(key, knob)
        elif isinstance(knob, FloatRange):
            _check_range(key, knob)
        else:
            raise CompressionError(f"search.space.{key}: expected a Choice or a FloatRange, got {type(knob).__name__}")


def sample(trial, space: Space) -> dict[str, object]:
    """One trial's settings, keyed like the space, drawn with the (Optuna) trial's suggest_* calls; list
    choices come back as the lists they were, not as the text the sampler saw."""
    validate_space(space)
    settings = {}
    for key, knob in space.items():
        if isinstance(knob, Choice):
            encoded = _encoded(key, knob)
            picked = trial.suggest_categorical(key, encoded)
            settings[key] = copy.deepcopy(knob.values[encoded.index(picked)])
        else:
            settings[key] = float(trial.suggest_float(key, knob.low, knob.high, log=knob.log))
    return settings


def _spaced(knob: FloatRange, points: int) -> list[float]:
    """`points` evenly spaced values from low to high (evenly in log when knob.log), ends exact."""
    lo, hi = (math.log(knob.low), math.log(knob.high)) if knob.log else (knob.low, knob.high)
    values = [lo + (hi - lo) * i / (points - 1) for i in range(points)]
    values = [math.exp(v) for v in values] if knob.log else values
    return [float(knob.low), *values[1:-1], float(knob.high)]


def grid(space: Space, points: int) -> list[dict]:
    """Every combination of the space's choices and `points` values per range: the exhaustive baseline
    the search is benchmarked against."""
    validate_space(space)
    if isinstance(points, bool) or not isinstance(points, int) or points < 2:
        raise CompressionError(f"grid points must be an integer >= 2, got {points!r}")
    axes = [list(k.values) if isinstance(k, Choice) else _spaced(k, points) for k in space.values()]
    return [dict(zip(space, map(copy.deepcopy, combo))) for combo in itertools.product(*axes)]


def grid_space(space: Space, points: int) -> dict[str, list]:
    """The grid as a sampler sees it: per knob, its encoded choices or `points` values of its range (what
    an exhaustive grid sampler enumerates; `grid` lists the same combinations decoded)."""
    grid(space, points)  # validates space and points
    return {key: _encoded(key, knob) if isinstance(knob, Choice) else _spaced(knob, points)
            for key, knob in space.items()}


# ---------------------------------------------------------------- the recipe: the config's own settings

# The marks of a trial the search enqueues itself (an Optuna user attr, an MLflow tag, a column): the config's
# own settings, and the best settings an earlier search found on the same teacher.
RECIPE = "recipe"
PREVIOUS_BEST = "previous-best"


def previous_best(earlier: list[dict]) -> dict | None:
    """Of earlier searches' trials (each with `settings`, `accuracy` and `feasible`: within its own budget and
    accuracy drop), the most accurate feasible one (ties: the first given), or None."""
    feasible = [t for t in earlier if t.get("feasible") and _real(t.get("accuracy"))]
    return max(feasible, key=lambda t: t["accuracy"]) if feasible else None


def _real(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _choice_index(value, values: tuple) -> int | None:
    """The choice `value` is (bools only match bools: True == 1 in Python, not in a config), else for a number
    the nearest of the choices that are numbers (ties: the earlier), else None."""
    for index, choice in enumerate(values):
        try:
            same = _encode(value) == _encode(choice)
        except TypeError:
            same = False
        if same and isinstance(value, bool) == isinstance(choice, bool):
            return index
    numeric = [i for i, v in enumerate(values) if _real(v)]
    if _real(value) and numeric:
        return min(numeric, key=lambda i: (abs(values[i] - value), i))
    return None


def recipe_ratio(width: float, own: float | None, high: float) -> float:
    """The recipe trial's prune ratio under a structural budget: the config's own (`own`; None when it does
    not prune) when that meets the budget, i.e. is at least `width`, the least pruning that does, and at
    most `high`, the space's top (costs fall monotonically up to it); else `width`, the nearest ratio that
    meets the budget. So a recipe within the budget is the hand-set recipe itself."""
    if own is None:
        return width
    return min(max(width, own), max(width, high))


def recipe_point(space: Space, recipe: dict) -> tuple[dict, dict[str, str]]:
    """The config's own settings (`recipe`, keyed like the space) as a point of the space in the form the
    sampler sees (list choices as the JSON text `sample` gives it), and a note for each knob it moved.

    A range clips the value to [low, high]; a choice list takes the value itself or, for a number, the
    nearest choice that is a number; a value no choice stands for (a list or a string that is not one) is left
    out, and so is a knob the recipe lacks: the sampler picks those. A point with nothing in it is empty."""
    point, notes = {}, {}
    for key, knob in space.items():
        if key not in recipe:
            continue
        value = recipe[key]
        if isinstance(knob, FloatRange):
            if not _real(value):
                notes[key] = f"{value!r} is not a number: left to the sampler"
                continue
            point[key] = min(max(float(value), float(knob.low)), float(knob.high))
            if point[key] != value:
                notes[key] = f"{value!r} is outside [{knob.low}, {knob.high}]: clipped to {point[key]!r}"
            continue
        index = _choice_index(value, knob.values)
        if index is None:
            notes[key] = f"{value!r} is not one of the choices: left to the sampler"
            continue
        point[key] = _encoded(key, knob)[index]
        if knob.values[index] != value or isinstance(value, bool) != isinstance(knob.values[index], bool):
            notes[key] = f"{value!r} is not one of the choices: the nearest, {knob.values[index]!r}"
    return point, notes


# ---------------------------------------------------------------- width by construction

def smallest_ratio_within(cost: Callable[[float], float], limit: float, low: float, high: float,
                          tolerance: float = 0.01) -> float | None:
    """The least pruning in [low, high] whose cost is within `limit`, found by bisection to `tolerance`.

    Assumes cost does not increase with the ratio. The answer is always a ratio whose cost was evaluated
    and is <= limit, so it meets the budget even where that assumption fails; None when cost(high) > limit.
    Torch-Pruning's cost does rise again above `max_monotone_ratio` (round_to): keep `high` at or below it.
    Each ratio is evaluated at most once (cost is a trim + prune + measure).
    """
    if not (0 <= low <= high < 1):
        raise CompressionError(f"prune ratio bounds must satisfy 0 <= low <= high < 1, got [{low}, {high}]")
    if not (math.isfinite(tolerance) and tolerance > 0):
        raise CompressionError(f"ratio tolerance must be a positive number, got {tolerance}")
    seen: dict[float, float] = {}

    def at(ratio: float) -> float:
        if ratio not in seen:
            seen[ratio] = float(cost(ratio))
        return seen[ratio]

    if at(low) <= limit:
        return low
    if at(high) > limit:
        return None
    over, within = low, high  # invariant: cost(over) > limit >= cost(within)
    while within - over > tolerance:
        middle = (over + within) / 2
        if at(middle) <= limit:
            within = middle
        else:
            over = middle
    return within


def max_monotone_ratio(model: nn.Module, round_to: int | None = 8) -> float:
    """The largest prune ratio up to which a model's cost keeps falling (to 3 decimals, rounded down).

    Above it the narrowest layer's target width rounds down to 0 channels; Torch-Pruning then skips that
    layer in its last step and it stays wider than at a smaller ratio (resnet18, round_to 8: above 0.875 the
    64-channel stem keeps 24 channels with 3 steps, all 64 with 1, and MACs rise 2.5-3x). Trimming keeps
    widths, so the teacher's layers decide it."""
    classifier = head(model)
    widths = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    widths += [m.out_features for m in model.modules() if isinstance(m, nn.Linear) and m is not classifier]
    unit = round_to or 1
    if not widths or min(widths) <= unit:
        return 0.0
    return math.floor((1 - unit / min(widths)) * 1000) / 1000


def _gradient_batches(model: nn.Module) -> list:
    """Random (images, labels) for taylor importance: it ranks channels by gradients but, pruning layer by
    layer, removes the same number of them whatever the gradients are."""
    generator = torch.Generator().manual_seed(0)
    images = torch.randn(example_input(model, batch=2).shape, generator=generator)
    labels = torch.randint(0, require_spec(model)["num_classes"], (2,), generator=generator)
    return [(images, labels)]


def _build(model: nn.Module, ratio: float, keep_per_stage, trim_strategy: str, importance: str,
           iterative_steps: int, round_to: int | None) -> nn.Module:
    """The trial's float structure: a trimmed (or copied) teacher pruned as the prune stage prunes."""
    if quantization_info(model):
        raise CompressionError("structural_cost needs the float teacher, not an int8 model")
    student = copy.deepcopy(model) if keep_per_stage is None else trim(model, keep_per_stage, trim_strategy)
    if ratio > 0:
        batches = _gradient_batches(student) if importance == "taylor" else None
        prune_structured(student, example_input(student), ratio, importance, iterative_steps, round_to,
                         False, batches)
    return student.eval()


def _candidate_name(ratio: float, keep_per_stage, quantize: bool) -> str:
    """The name the pipeline saves the trial's final model under: it names the file and the records inside
    it, and goes into its meta, so it changes the file size by some bytes."""
    if quantize:
        return QUANTIZED_STATIC
    return PRUNED if ratio > 0 else STUDENT_KD


def _file_size(model: nn.Module, name: str, meta: dict | None) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{name}.pt"
        save_model(model, path, meta={**(meta or {}), "candidate": name})
        return file_size(path)


def structural_cost(model: nn.Module, metric: str, ratio: float, *, keep_per_stage=None, trim_strategy: str = "first",
                    importance: str = "l2", iterative_steps: int = 3, round_to: int | None = 8,
                    quantize: bool = False, backend: str = "x86", meta: dict | None = None) -> float:
    """What a trial's final model will cost on `metric` (macs, params or size_bytes), without training.

    On a copy of `model` (the fine-tuned teacher): trim to `keep_per_stage` as the trim stage does, prune
    `ratio` as the prune stage does (ratio 0: no pruning); Torch-Pruning's per-layer widths depend on the
    ratio and the structure, not the weights, so they are those of the trained trial. Params and MACs are
    measured as the evaluate stage measures them (an int8 model has its float source's); size_bytes is
    the size of the model file save_model writes, after static int8 quantization when `quantize` (random
    calibration: the scales' values do not change the size). `meta` is what save_candidate stores
    (classes, mean, std): without it the estimate is a few hundred bytes short of the pipeline's file.
    """
    _check_metric(metric, structural=True)
    if not (isinstance(ratio, numbers.Real) and 0 <= ratio < 1):
        raise CompressionError(f"prune ratio must be in [0, 1), got {ratio}")
    student = _build(model, float(ratio), keep_per_stage, trim_strategy, importance, iterative_steps, round_to)
    example = example_input(student)
    if metric == "macs":
        return float(count_macs(student, example))
    if metric == "params":
        return float(count_nonzero_params(student)[0])
    if quantize:
        generator = torch.Generator().manual_seed(0)
        calibration = [torch.randn(example_input(student, batch=4).shape, generator=generator) for _ in range(2)]
        student = quantize_model(student, "static", example, calibration, backend)
    return float(_file_size(student, _candidate_name(ratio, keep_per_stage, quantize), meta))


def cost_kwargs(settings: dict) -> dict:
    """structural_cost's keywords for a trial's settings (dotted keys as `sample` returns them)."""
    return {COST_KEYS[key]: value for key, value in settings.items() if key in COST_KEYS}


def _highest_ratio(space: Space) -> float:
    knob = space.get("prune.ratio")
    if knob is None:
        return DEFAULT_MAX_RATIO
    return float(knob.high if isinstance(knob, FloatRange) else max(knob.values))


def smallest_reachable(model: nn.Module, metric: str, space: Space, **prune_settings) -> float:
    """The lowest cost the space can reach: every structural choice (depths, and int8 where it changes the
    metric) at the space's highest prune ratio, and at max_monotone_ratio when that is lower (where the
    cost may be lower still). `prune_settings` are structural_cost's keywords for what the space fixes."""
    validate_space(space)
    _check_metric(metric, structural=True)
    highest = _highest_ratio(space)
    ratios = sorted({highest, min(highest, max_monotone_ratio(model, prune_settings.get("round_to", 8)))})
    axes = {COST_KEYS[k]: list(v.values) for k, v in space.items()
            if k in COST_KEYS and k != "prune.importance" and isinstance(v, Choice)}
    if metric != "size_bytes":  # an int8 model has its float source's params and MACs
        axes.pop("quantize", None)
        prune_settings = {**prune_settings, "quantize": False}
    costs = []
    for combo in itertools.product(*axes.values()):
        settings = {**prune_settings, **dict(zip(axes, combo))}
        settings["quantize"] = bool(settings.get("quantize"))
        costs += [structural_cost(model, metric, ratio, **settings) for ratio in ratios]
    return min(costs)


# ---------------------------------------------------------------- picking and reporting

def _completed(trial: dict) -> bool:
    accuracy = trial.get("accuracy")
    return trial.get("state") == "COMPLETE" and isinstance(accuracy, numbers.Real) and math.isfinite(accuracy)


def _cost(trial: dict, metric: str) -> float:
    value = trial.get(metric)
    return float(value) if isinstance(value, numbers.Real) and not math.isnan(value) else math.inf


def is_feasible(trial: dict, metric: str, limit: float, teacher_accuracy: float, max_drop: float) -> bool:
    """A completed trial within the budget on `metric` and within `max_drop` of the teacher's accuracy."""
    _check_metric(metric)
    return (_completed(trial) and _cost(trial, metric) <= limit
            and within_drop(trial["accuracy"], teacher_accuracy, max_drop))


def pick(trials: list[dict], metric: str, limit: float, teacher_accuracy: float,
         max_drop: float) -> tuple[dict | None, str]:
    """(trial, "champion"): the most accurate feasible trial (ties: the cheaper, then the earlier). Else
    (trial, "challenger"): the completed trial closest to feasible: the most accurate within the budget,
    or, when none is, the cheapest. (None, "none") when no trial completed."""
    feasible = [t for t in trials if is_feasible(t, metric, limit, teacher_accuracy, max_drop)]
    if feasible:
        return max(feasible, key=lambda t: (t["accuracy"], -_cost(t, metric), -t.get("number", 0))), "champion"
    done = [t for t in trials if _completed(t)]
    if not done:
        return None, "none"
    within = [t for t in done if _cost(t, metric) <= limit]
    if within:
        return max(within, key=lambda t: (t["accuracy"], -_cost(t, metric), -t.get("number", 0))), "challenger"
    return min(done, key=lambda t: (_cost(t, metric), -t["accuracy"], t.get("number", 0))), "challenger"


def best_so_far(trials: list[dict], metric: str, limit: float, teacher_accuracy: float,
                max_drop: float) -> list[float | None]:
    """For each trial in number order, the best feasible accuracy among it and the trials before it
    (None before the first feasible one): the search's progress curve."""
    curve, best = [], None
    for trial in sorted(trials, key=lambda t: t["number"]):
        if is_feasible(trial, metric, limit, teacher_accuracy, max_drop) and (best is None or trial["accuracy"] > best):
            best = float(trial["accuracy"])
        curve.append(best)
    return curve


def rank_for_retraining(trials: list[dict], metric: str, limit: float, teacher_accuracy: float,
                        max_drop: float) -> list[dict]:
    """The completed trials, best first, for the search's re-training at full epochs: feasible ones first, then
    by accuracy. On latency the trials were not timed (they shared the cores): accurate enough first, then the
    fewest MACs."""
    completed = [t for t in trials if _completed(t)]
    if metric == "latency_ms":
        return sorted(completed, key=lambda t: (not within_drop(t["accuracy"], teacher_accuracy, max_drop), t["macs"]))
    return sorted(completed, key=lambda t: (not is_feasible(t, metric, limit, teacher_accuracy, max_drop),
                                            -t["accuracy"]))


def finalists(ranked: list[dict], top_k: int, target: str | None = None) -> list[dict]:
    """The trials trained again at full epochs, from rank_for_retraining's order: the first `top_k`, and the
    recipe's trial (marked RECIPE; of `target` when given, as each target of a search has its own) when it
    completed but ranked lower. The pick then meets the config's own settings at full epochs too, and
    registers a model at least as accurate on val as the recipe's unless the budget or the gates preferred
    another."""
    if top_k < 1:
        raise CompressionError(f"top_k must be at least 1 to train trials again, got {top_k}")
    recipe = [t for t in ranked[top_k:]
              if t.get("enqueued") == RECIPE and (target is None or t.get("target") == target)]
    return ranked[:top_k] + recipe[:1]


def next_target(started: dict[str, int], quota: int) -> str | None:
    """The budget target the next trial is for: the one with the fewest trials started (finished or running),
    the earlier on a tie, while it has fewer than `quota`; None when every target has its quota. Targets
    take turns, so a search stopped early has about as many trials for each."""
    open_targets = [label for label, count in started.items() if count < quota]
    return min(open_targets, key=lambda label: started[label]) if open_targets else None


def trials_for_target(trials: list[dict], target: str, metric: str, limit: float) -> list[dict]:
    """The trials a target's pick is made among: its own, and every other target's that came out within its
    budget (a model made for a tighter target may be the best for a looser one)."""
    return [t for t in trials if t.get("target") == target or _cost(t, metric) <= limit]


def to_retrain(trials: list[dict], targets: list[tuple[str, float]], metric: str, teacher_accuracy: float,
               max_drop: float, top_k: int) -> list[dict]:
    """The trials a search trains again at full epochs: per (label, limit) target, the first `top_k` of
    rank_for_retraining over its own trials and the others' within its limit, and its recipe's trial; each
    trial once (by its "name"). top_k 0: per target only its best, kept at the trials' epochs."""
    chosen: dict = {}
    for label, limit in targets:
        ranked = rank_for_retraining(trials_for_target(trials, label, metric, limit), metric, limit,
                                     teacher_accuracy, max_drop)
        for trial in finalists(ranked, top_k, label) if top_k else ranked[:1]:
            chosen.setdefault(trial.get("name", (trial.get("target"), trial["number"])), trial)
    return list(chosen.values())


def target_alias(label: str, several: bool, verdict: str) -> str:
    """The registry alias of a target's pick: champion or challenger when the search has one target; with
    several, the target's label (@macs-10pct), or label-challenger when it failed the budget or a gate."""
    if not several:
        return verdict
    return label if verdict == "champion" else f"{label}-challenger"


def trial_step(stage: str, part: int, epoch: int, distill_epochs: int, recovery_epochs: int) -> int | None:
    """Where epoch `epoch` (1-based, as fit's rows count) of training `part` of `stage` falls in a trial: its
    epochs in the order it trains them, distillation first, then the recovery after each prune step (part 1,
    2, ...): the resource a pruner compares trials at. Computed from the schedule rather than counted, so that
    a stage that came from the cache (it trains nothing) or resumed from a checkpoint leaves the later epochs
    in their place. None for a training that is not part of a trial's schedule."""
    if stage == "distill" and part == 0:
        return epoch
    if stage == "prune" and part >= 1:
        return distill_epochs + (part - 1) * recovery_epochs + epoch
    return None


def trial_length(distill_epochs: int, prune_steps: int, recovery_epochs: int) -> int:
    """A trial's epochs in all (prune_steps 0: a trial that does not prune): the last step trial_step gives."""
    return distill_epochs + prune_steps * recovery_epochs


def pareto_front(points: list[tuple[float, float]]) -> list[tuple[float, float]]:
    """The (cost, accuracy) points that no other point beats on both (cheaper or as cheap, and more
    accurate or as accurate), sorted by cost; duplicates kept once."""
    front, best = [], -math.inf
    for cost, accuracy in sorted(points, key=lambda p: (p[0], -p[1])):
        if accuracy > best:
            front.append((float(cost), float(accuracy)))
            best = accuracy
    return front

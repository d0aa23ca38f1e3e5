"""Figures logged with the runs: training curves, confusion matrices, Pareto fronts."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.ticker import MaxNLocator

from compression.search import is_feasible, pareto_front

# Points closer than this (fractions of the axes' width, height) get one label listing them all.
SHARED_POINT = (0.03, 0.04)
LABEL_OFFSET = (4, 4)  # points, up and right of the marker


def training_curves(histories: dict[str, list[dict]], title: str):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, history in histories.items():
        epochs = [row["epoch"] for row in history]
        ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o", label=f"{label} train")
        ax_acc.plot(epochs, [row["train_accuracy"] for row in history], marker="o", label=f"{label} train")
        if history and "val_accuracy" in history[0]:
            ax_loss.plot(epochs, [row["val_loss"] for row in history], marker="s", ls="--", label=f"{label} val")
            ax_acc.plot(epochs, [row["val_accuracy"] for row in history], marker="s", ls="--", label=f"{label} val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    for ax in (ax_loss, ax_acc):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def confusion_matrix(confusion: list[list[int]], classes: list[str], title: str):
    n = len(classes)
    fig, ax = plt.subplots(figsize=(1.2 + 0.55 * n, 1.0 + 0.5 * n))
    ax.imshow(confusion, cmap="Blues")
    for i in range(n):
        for j in range(n):
            ax.text(j, i, str(confusion[i][j]), ha="center", va="center", fontsize=7)
    ax.set_xticks(range(n), classes, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(n), classes, fontsize=7)
    ax.set(xlabel="predicted", ylabel="true", title=title)
    fig.tight_layout()
    return fig


def _label_groups(ax, points: list[tuple]) -> list[tuple[tuple, list[str]]]:
    """(point, names) per spot of the axes: candidates that share a point (int8 models sit on the MACs of
    their float source) get one label instead of labels drawn over each other."""
    ax.get_xlim(), ax.get_ylim()  # brings the view limits up to date with the plotted points
    to_axes = ax.transData + ax.transAxes.inverted()
    groups = []  # [axes position, point, names]
    for cost, acc, name in points:
        px, py = to_axes.transform((cost, acc))
        near = [g for g in groups if abs(g[0][0] - px) < SHARED_POINT[0] and abs(g[0][1] - py) < SHARED_POINT[1]]
        if near:
            near[0][2].append(name)
        else:
            groups.append([(px, py), (cost, acc), [name]])
    return [(point, names) for _, point, names in groups]


def _separate_labels(fig, labels: list) -> None:
    """Move each label down, below the ones placed before it, until it overlaps none of them."""
    renderer = fig.canvas.get_renderer()
    placed = []
    for label in labels:
        for _ in range(4 * len(labels)):
            box = label.get_window_extent(renderer)
            if not any(box.overlaps(other) for other in placed):
                break
            dx, dy = label.xyann
            label.xyann = (dx, dy - (box.height + 2) * 72 / fig.dpi)
        placed.append(label.get_window_extent(renderer))


def pareto(rows: list[dict], x: str, xlabel: str):
    """Accuracy against a cost; the non-dominated candidates are joined by a line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.set_xscale("log")
    points = sorted(((r[x], r["accuracy"], r["candidate"]) for r in rows), key=lambda p: (p[0], -p[1]))
    for cost, acc, _ in points:
        ax.scatter(cost, acc, s=40)
    front = pareto_front([(cost, acc) for cost, acc, _ in points])
    ax.plot(*zip(*front), color="grey", ls="--", lw=1, label="Pareto front")
    labels = [ax.annotate("\n".join(names), point, textcoords="offset points", xytext=LABEL_OFFSET, fontsize=8)
              for point, names in _label_groups(ax, points)]
    ax.set(xlabel=xlabel, ylabel="test accuracy", title=f"accuracy vs {xlabel}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    _separate_labels(fig, labels)
    return fig


def search_pareto(trials: list[dict], plan: dict, max_drop: float, picks: dict[str, dict]):
    """Val accuracy of every completed trial against the budget metric: each target's budget line and the
    accuracy floor drawn, trials within no target's budget or under the floor grey, each target's pick (at
    full epochs) marked and named."""
    metric, teacher = plan["metric"], plan["teacher"]["val_accuracy"]
    loosest = max(t["limit"] for t in plan["targets"])
    done = [t for t in trials if t["state"] == "COMPLETE" and t.get(metric) is not None]
    fig, ax = plt.subplots(figsize=(6, 4))
    feasible = [t for t in done if is_feasible(t, metric, loosest, teacher, max_drop)]
    others = [t for t in done if t not in feasible]
    if others:
        ax.scatter([t[metric] for t in others], [t["accuracy"] for t in others], s=30, color="lightgrey",
                   label="outside every budget or the accuracy floor")
    several = len(plan["targets"]) > 1
    for target in plan["targets"]:  # one colour per target (trial numbers count within a target)
        own = [t for t in feasible if not several or t.get("target") == target["label"]]
        if own:
            ax.scatter([t[metric] for t in own], [t["accuracy"] for t in own], s=40,
                       label=f"feasible, {target['label']}'s trials" if several else "feasible")
        if not several:
            break
    for t in done:  # the trial of the config's own settings says so: the point the search has to beat
        label = f"{t['number']} ({t['enqueued']})" if t.get("enqueued") else str(t["number"])
        ax.annotate(label, (t[metric], t["accuracy"]), textcoords="offset points", xytext=(3, 3), fontsize=7)
    for i, target in enumerate(plan["targets"]):
        name = target["label"] if len(plan["targets"]) > 1 else "budget"
        ax.axvline(target["limit"], color="red", ls="--", lw=1, alpha=1 - 0.5 * i / len(plan["targets"]),
                   label=f"{name} {target['limit']:,.0f}")
    for label, pick in picks.items():
        ax.scatter([pick[metric]], [pick["accuracy"]], s=140, facecolors="none", edgecolors="red")
        ax.annotate(f"pick {label}" if len(picks) > 1 else "pick", (pick[metric], pick["accuracy"]),
                    textcoords="offset points", xytext=(4, -10), fontsize=7, color="red")
    ax.axhline(teacher - max_drop, color="grey", ls=":", lw=1, label="teacher - max drop")
    ax.set(xlabel=metric, ylabel="val accuracy", title=f"search trials: accuracy vs {metric} (picks: full epochs)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def best_so_far(curves: dict[str, list[float | None]]):
    """Per budget target, the best feasible val accuracy found after each of its trials."""
    fig, ax = plt.subplots(figsize=(6, 3.2))
    for label, values in curves.items():
        points = [(i, v) for i, v in enumerate(values) if v is not None]
        if points:
            ax.step(*zip(*points), where="post", marker="o", label=label if len(curves) > 1 else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="trial", ylabel="best feasible val accuracy", title="best so far")
    if len(curves) > 1:
        ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)

"""Figures logged with the runs: training curves, confusion matrices, Pareto fronts."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def training_curves(histories: dict[str, list[dict]], title: str):
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 3.6))
    for label, history in histories.items():
        epochs = [row["epoch"] for row in history]
        ax_loss.plot(epochs, [row["train_loss"] for row in history], marker="o", label=f"{label} train")
        ax_acc.plot(epochs, [row["train_acc"] for row in history], marker="o", label=f"{label} train")
        if history and "val_acc" in history[0]:
            ax_loss.plot(epochs, [row["val_loss"] for row in history], marker="s", ls="--", label=f"{label} val")
            ax_acc.plot(epochs, [row["val_acc"] for row in history], marker="s", ls="--", label=f"{label} val")
    ax_loss.set(xlabel="epoch", ylabel="loss", title=f"{title}: loss")
    ax_acc.set(xlabel="epoch", ylabel="accuracy", title=f"{title}: accuracy")
    for ax in (ax_loss, ax_acc):
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


def pareto(rows: list[dict], x: str, xlabel: str):
    """Accuracy against a cost; the non-dominated candidates are joined by a line."""
    fig, ax = plt.subplots(figsize=(6, 4))
    points = sorted(((r[x], r["accuracy"], r["candidate"]) for r in rows), key=lambda p: (p[0], -p[1]))
    front, best = [], -1.0
    for cost, acc, name in points:
        if acc > best:
            front.append((cost, acc))
            best = acc
    for cost, acc, name in points:
        ax.scatter(cost, acc, s=40)
        ax.annotate(name, (cost, acc), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.plot(*zip(*front), color="grey", ls="--", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.set(xlabel=xlabel, ylabel="test accuracy", title=f"accuracy vs {xlabel}")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)

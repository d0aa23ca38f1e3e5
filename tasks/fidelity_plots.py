"""Figures of the "what compression changed" report: reliability diagrams, the images a candidate forgot, and
where two models look (occlusion maps). Each function returns a matplotlib Figure; `close` it once logged."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from compression.fidelity import calibration_errors


def _show_image(ax, image: torch.Tensor) -> None:
    """A uint8 [C, H, W] image (grey or RGB) without axes."""
    if image.shape[0] == 1:
        ax.imshow(image[0].numpy(), cmap="gray", vmin=0, vmax=255)
    else:
        ax.imshow(image.permute(1, 2, 0).numpy())
    ax.set_xticks([])
    ax.set_yticks([])


def reliability_diagram(bins_by_model: dict[str, list[dict]], title: str = "reliability", columns: int = 4):
    """One panel per model (e.g. the teacher first, then every candidate beside it; `columns` panels a row) from
    `reliability_bins`: accuracy per confidence bin against the diagonal of perfect calibration, the gap
    shaded, ECE and MCE in the title."""
    columns = min(columns, len(bins_by_model))
    rows = -(-len(bins_by_model) // columns)
    fig, axes = plt.subplots(rows, columns, figsize=(3.6 * columns, 3.6 * rows), squeeze=False)
    for ax in list(axes.flat)[len(bins_by_model):]:
        ax.remove()
    for ax, (name, bins) in zip(axes.flat, bins_by_model.items()):
        full = [b for b in bins if b["count"]]
        width = bins[0]["upper"] - bins[0]["lower"]
        centres = [(b["lower"] + b["upper"]) / 2 for b in full]
        ax.bar(centres, [b["accuracy"] for b in full], width=width, edgecolor="black", lw=0.5, label="accuracy")
        ax.bar(centres, [b["confidence"] - b["accuracy"] for b in full], bottom=[b["accuracy"] for b in full],
               width=width, color="red", alpha=0.3, label="gap to confidence")
        ax.plot([0, 1], [0, 1], color="grey", ls="--", lw=1)
        ece, mce = calibration_errors(bins)
        ax.set(xlim=(0, 1), ylim=(0, 1), xlabel="confidence", ylabel="accuracy",
               title=f"{name}\nECE {ece:.3f}, MCE {mce:.3f}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="upper left")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def forgotten_grid(images: torch.Tensor, rows: list[dict], reference_name: str, candidate_name: str,
                   columns: int = 6):
    """The forgotten images (uint8 [M, C, H, W], in the order of `rows` from `forgotten_rows` with class
    names) with the true label and both models' predictions and confidences."""
    count = min(len(rows), images.shape[0])
    nrows = max(1, -(-count // columns))
    fig, axes = plt.subplots(nrows, columns, figsize=(2.4 * columns, 3.2 * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, image, row in zip(axes.flat, images[:count], rows[:count]):
        ax.axis("on")
        _show_image(ax, image)
        ax.set_title(f"#{row['index']} true: {row['label']}\n"
                     f"{reference_name}: {row['reference_prediction']} ({row['reference_confidence']:.2f})\n"
                     f"{candidate_name}: {row['candidate_prediction']} ({row['candidate_confidence']:.2f})",
                     fontsize=7)
    fig.suptitle(f"images {candidate_name} forgot (prediction changed), {reference_name} surest first")
    fig.tight_layout()
    return fig


def attribution_grid(images: torch.Tensor, maps_a: torch.Tensor, maps_b: torch.Tensor, name_a: str, name_b: str,
                     count: int = 4):
    """A few images (uint8 [N, C, H, W]) beside both models' occlusion maps ([N, H, W]); each pair of maps
    shares one colour scale centred on 0, so the two are read against each other."""
    return attribution_panels(images, {name_a: maps_a, name_b: maps_b}, count)


def attribution_panels(images: torch.Tensor, maps_by_model: dict[str, torch.Tensor], count: int = 4):
    """A few images (uint8 [N, C, H, W]) beside every model's occlusion maps ([N, H, W] each, the reference
    first); the maps of one image share one colour scale centred on 0, so they are read against each other."""
    count = min(count, images.shape[0])
    width = 1 + len(maps_by_model)
    fig, axes = plt.subplots(count, width, figsize=(2.4 * width, 2.4 * count), squeeze=False)
    for i in range(count):
        limit = max(float(maps[i].abs().max()) for maps in maps_by_model.values()) or 1.0
        _show_image(axes[i][0], images[i])
        for ax, (name, maps) in zip(axes[i][1:], maps_by_model.items()):
            shown = ax.imshow(maps[i].numpy(), cmap="RdBu_r", vmin=-limit, vmax=limit)
            ax.set_xticks([])
            ax.set_yticks([])
            ax.set_title(name, fontsize=8)
        fig.colorbar(shown, ax=axes[i][-1], fraction=0.046)
    axes[0][0].set_title("image", fontsize=8)
    fig.suptitle("occlusion: how much covering a patch lowers the target logit")
    fig.tight_layout()
    return fig


def close(fig) -> None:
    plt.close(fig)

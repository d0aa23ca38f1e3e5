"""The one accuracy: top-1, the share of labelled images whose highest-scoring class is their label.

Every accuracy shrinkflow reports is computed here and reported under one key, `accuracy`, with the split in
front where it is not the test split (`val_accuracy`, `train_accuracy`, a stage's `best_val_accuracy`). It is
the exact ratio of two counts: a float32 mean would round it differently from a count-and-divide over batches
or processes, and the same model would get two accuracies.
"""

from __future__ import annotations

import numpy as np
import torch

KEY = "accuracy"


def top1_hits(logits: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Which images the logits classify as their label (an unlabelled image, label -1, never matches)."""
    logits, labels = torch.as_tensor(logits), torch.as_tensor(labels)
    return logits.argmax(1) == labels.to(logits.device)


def hits_count(logits, labels) -> int:
    return int(top1_hits(logits, labels).sum())


def ratio(hits: int, total: int) -> float:
    """hits / total as an accuracy; 0.0 for no images (an empty shard of a distributed evaluation)."""
    return hits / total if total else 0.0


def top1_accuracy(logits, labels) -> float:
    return ratio(hits_count(logits, labels), len(labels))


def matching_share(predicted, labels) -> float:
    """Accuracy of predicted class indices (not logits): a modal label, a served model's answers."""
    predicted, labels = torch.as_tensor(predicted), torch.as_tensor(labels)
    return ratio(int((predicted == labels).sum()), len(labels))


def agreement(reference_logits, candidate_logits) -> float:
    """The share of images two models give the same top-1 class: accuracy against the other's answers."""
    return top1_accuracy(candidate_logits, torch.as_tensor(reference_logits).argmax(1))

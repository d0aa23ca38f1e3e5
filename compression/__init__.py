"""Pure PyTorch core of shrinkflow: data, models, training, distillation, trimming, pruning, measurement.

Nothing in this package imports prefect or mlflow; the orchestration and tracking layers live in
`tasks/` and `flows/`.
"""


class CompressionError(ValueError):
    """A bad input or an impossible request, reported to the user as one line."""

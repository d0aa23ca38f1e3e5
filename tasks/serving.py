"""The registered model: an MLflow pyfunc around a shrinkflow model file.

The file holds tensors and an architecture spec and loads with torch.load(weights_only=True), so a
registered model never needs unpickling of arbitrary modules. Input: float32 images [N, C, H, W] scaled to
[0, 1] (the model normalises them itself; grey images are repeated over a colour model's channels); output:
the predicted class index per image.
"""

from __future__ import annotations

import mlflow.pyfunc
import numpy as np
import torch

from compression.checkpoint import load_model, read_model_file
from compression.data import to_model_input
from compression.models import input_channels


class ShrinkflowClassifier(mlflow.pyfunc.PythonModel):
    def __getstate__(self):
        # MLflow pickles this object after validating the input example, when the model is already
        # loaded; the model belongs in the artifacts (weights_only file), never in the pickle.
        return {}

    def load_context(self, context):
        path = context.artifacts["checkpoint"]
        meta = read_model_file(path)["meta"]
        self.model = load_model(path)
        self.classes = meta.get("classes", [])
        self.mean, self.std = meta["mean"], meta["std"]

    def logits(self, images: np.ndarray) -> torch.Tensor:
        x = torch.as_tensor(np.asarray(images, dtype=np.float32))
        with torch.no_grad():
            return self.model(to_model_input(x, self.mean, self.std, input_channels(self.model)))

    def predict(self, context, model_input, params=None):
        return self.logits(model_input).argmax(1).numpy()

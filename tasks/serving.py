"""The registered model: an MLflow pyfunc around compression.inference.Predictor.

Logged as code (MLflow's models-from-code: this file is the model's code, nothing is pickled). Artifacts:
the shrinkflow model file (tensors + architecture spec, loaded with torch.load(weights_only=True)) and,
where the model has one, its ONNX file; the model config names the runtime ("onnxruntime" or "torch") and
the dataset's labels and names of the classes.

Request: images [N, C, H, W] (or [N, H, W] grey) as uint8/integer 0-255 or float 0-1. Response: one row per
image with `label` (the dataset's own class id), `name`, `probability` and `probabilities` (by class name).
Images that do not fit the model get HTTP 400 with one line saying why.
"""

from __future__ import annotations

from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd
from mlflow.exceptions import MlflowException
from mlflow.models import set_model
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from compression.inference import BadImages, Predictor


class BadRequest(MlflowException):
    """HTTP 400 whose message stays one line: MLflow's scoring server rewrites an exception's `message` to
    start with the whole input array; this keeps the client's answer to what is wrong with it."""

    def __init__(self, line: str) -> None:
        self._line = line
        super().__init__(line, error_code=INVALID_PARAMETER_VALUE)

    @property
    def message(self) -> str:
        return self._line

    @message.setter
    def message(self, _value: str) -> None:
        pass


class ShrinkflowClassifier(mlflow.pyfunc.PythonModel):
    def load_context(self, context) -> None:
        config = context.model_config or {}
        self.predictor = Predictor(context.artifacts["checkpoint"], labels=config.get("labels"),
                                   onnx=context.artifacts.get("onnx"), runtime=config.get("runtime", "torch"),
                                   threads=int(config.get("threads", 1)))

    def predict(self, context, model_input: np.ndarray, params: dict[str, Any] | None = None) -> pd.DataFrame:
        try:
            return pd.DataFrame(self.predictor.predict(model_input))
        except BadImages as exc:
            raise BadRequest(str(exc)) from None


set_model(ShrinkflowClassifier())

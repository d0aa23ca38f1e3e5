"""Prefect flows: wiring only. Which tasks run, in what order, with which config."""

import os

# Training progress comes from the "shrinkflow" logger; let Prefect ship it to the flow-run logs.
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "shrinkflow")

"""Serve every shrinkflow deployment from this one process, with no work pool (for development).

    PREFECT_API_URL=http://127.0.0.1:4200/api .venv/bin/python deployments/serve.py
then, from another shell: prefect deployment run 'compress/on-demand' --param config=configs/smoke.yaml
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)

from prefect import serve  # noqa: E402

from flows.compress import compress  # noqa: E402
from flows.pretrain import pretrain  # noqa: E402


def deployments():
    return [
        compress.to_deployment(name="nightly", cron="0 2 * * *", parameters={"config": "configs/quickstart.yaml"}),
        compress.to_deployment(name="on-demand", parameters={"config": "configs/quickstart.yaml", "overrides": {}}),
        pretrain.to_deployment(name="on-demand", parameters={"config": "configs/pretrain.yaml", "overrides": {}}),
    ]


if __name__ == "__main__":
    serve(*deployments())

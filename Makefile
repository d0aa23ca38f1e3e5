# Every target creates and fills .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test test-slow lint data clean server server-stop worker deploy serve bench bench-report architectures

$(STAMP): pyproject.toml requirements.lock
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c requirements.lock -e '.[test]'
	touch $(STAMP)

# Fashion-MNIST from Debian's package (root, or sudo); torchvision downloads it instead where there is internet.
data:
	@test -f $(FASHION_MNIST) || test -f data/train-images-idx3-ubyte.gz || \
	  { if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	      (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) >/dev/null || echo "apt-get could not install dataset-fashion-mnist; shrinkflow will try a download"; \
	    elif command -v sudo >/dev/null; then sudo apt-get install -y -qq dataset-fashion-mnist || true; \
	    else echo "Fashion-MNIST not installed; shrinkflow will try a torchvision download into ./data"; fi; }

demo: $(STAMP) data
	$(BIN)/shrinkflow demo

# Unit and integration tests (the smoke pipeline through every stage, its registered model served), then the
# slow end-to-end checks; CI runs both (.ci/run). Two pytest-xdist workers (a third on two cores measured no
# faster: the waits it would fill cost as much in contention); the tests of one xdist_group (the smoke
# pipeline's; the service stack's) stay on one worker.
PYTEST := $(BIN)/python -m pytest -n 2 --dist loadgroup --durations=25

test: lint data
	$(PYTEST) -m "not slow"

# ruff (its rule set and reasons in pyproject.toml) and the layer contracts (compression/ imports nothing of
# ours and never Prefect or MLflow; tasks/ never flows/ or cli/; flows/ never cli/).
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/lint-imports

test-slow: $(STAMP) data
	$(PYTEST) -m slow

# The service stack on 127.0.0.1 (SQLite; PostgreSQL with DATABASE_URL=postgresql://user:pass@host:port).
server: $(STAMP)
	deployments/stack.sh start

server-stop:
	deployments/stack.sh stop

# A process worker in the foreground, for the pool the deployments use (created if missing).
worker: $(STAMP)
	eval "$$(deployments/stack.sh env)" && deployments/stack.sh pool && \
	  $(BIN)/prefect worker start --pool shrinkflow-process

# The work pool (created if missing) and the process-pool deployments of deployments/prefect.yaml.
deploy: $(STAMP)
	eval "$$(deployments/stack.sh env)" && deployments/stack.sh pool && SHRINKFLOW_HOME=$(CURDIR) $(BIN)/prefect \
	  --no-prompt deploy --prefect-file deployments/prefect.yaml --name compress/nightly --name compress/on-demand \
	  --name pretrain/on-demand --name search/on-demand --name stability/on-demand \
	  --name predict/on-demand --name predict/nightly

# Every deployment served from one process, no work pool (development).
serve: $(STAMP)
	eval "$$(deployments/stack.sh env)" && $(BIN)/python deployments/serve.py

# Every benchmark (about three hours on 2 cores), then docs/benchmarks.md. BENCH_QUICK=1 checks every
# script on tiny workloads (about 16 minutes on 2 cores), writing only under bench/.work/quick/ (the published
# results and a full run's caches stay as they are).
bench: $(STAMP) data
	$(BIN)/python bench/overhead.py
	$(BIN)/python bench/datapath.py
	$(BIN)/python bench/precision.py
	$(BIN)/python bench/logging_cost.py
	$(BIN)/python bench/startup.py
	$(BIN)/python bench/compression_results.py
	$(BIN)/python bench/search.py
	$(BIN)/python bench/families.py
	$(BIN)/python bench/serving.py
	$(BIN)/python bench/images.py
	$(BIN)/python bench/fidelity.py
	$(BIN)/python bench/suite.py
	$(MAKE) architectures
	$(BIN)/python bench/report.py

# docs/architectures.md: every torchvision classifier through every stage (about half an hour on 2 cores);
# with BENCH_QUICK=1 three small ones, written under bench/.work/quick/ instead.
QUICK_ARCHITECTURES := --arch resnet18 mobilenet_v3_small squeezenet1_1 --out bench/.work/quick/architectures.md \
  --json bench/.work/quick/architectures.json --workdir bench/.work/quick/architectures
architectures: $(STAMP) data
	$(BIN)/python bench/architectures.py --jobs 2 \
	  $(if $(filter 1,$(BENCH_QUICK)),$(QUICK_ARCHITECTURES),--json bench/.work/architectures.json)

# docs/benchmarks.md again from the results already in bench/results/.
bench-report: $(STAMP)
	$(BIN)/python bench/report.py

clean:
	rm -rf outputs mlflow.db mlflow.db.lock mlruns .prefect .pytest_cache bench/.work

# Every target creates and fills .venv on first use.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FASHION_MNIST := /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz

.PHONY: demo test test-fast data clean

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

test: $(STAMP) data
	$(BIN)/python -m pytest

test-fast: $(STAMP) data
	$(BIN)/python -m pytest -m "not slow"

clean:
	rm -rf outputs mlflow.db mlruns .prefect .pytest_cache

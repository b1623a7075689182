# The two commands of the README: `make demo` and `make test`. Both install what they need.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
# The dev/CI install pins torch; the package itself accepts torch >= 2.4.
TORCH_PINS := torch==2.14.1 torchvision==0.29.1

.PHONY: install demo test lint clean

$(BIN)/condseg: pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q $(TORCH_PINS)
	$(BIN)/pip install -q -e ".[dev,onnx,nnunet]" $(TORCH_PINS)
	touch $(BIN)/condseg

install: $(BIN)/condseg

# Each demo writes a new folder, so that no earlier demo's output is overwritten.
demo: install
	$(BIN)/condseg demo --out demo-runs/$(shell date +%Y%m%d-%H%M%S)

test: install
	$(BIN)/ruff check src tests
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check src tests

clean:
	rm -rf $(VENV) .pytest_cache

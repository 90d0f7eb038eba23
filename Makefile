# Two entry points: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv on first use and installs what it needs (torch pinned to
# 2.13.0: an unpinned torch pulls a CUDA build of several GB).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

# Until `growbatch run` exists, the demo plans the paper's CIFAR-10 schedules side by side.
demo: $(STAMP)
	$(BIN)/growbatch plan --compare cifar10-wrn-decay cifar10-wrn-hybrid cifar10-wrn-increase \
		cifar10-wrn-increase-lr cifar10-wrn-increase-momentum

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

clean:
	rm -rf $(VENV) runs .pytest_cache build src/*.egg-info

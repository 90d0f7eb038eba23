# Two entry points: `make demo` runs the main job, `make test` runs the tests.
# Each creates .venv on first use and installs what it needs (torch pinned to
# 2.13.0: an unpinned torch pulls a CUDA build of several GB).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test test-fast bench clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "torch==2.13.0"
	# the test tools and every optional extra (TensorBoard; the Lightning, Keras 3 and Hugging Face
	# integrations) in one resolve; constraints.txt keeps torch at the 2.13.0 CPU build
	$(BIN)/pip install --quiet -c constraints.txt -e ".[test,tensorboard,lightning,keras,huggingface]"
	touch $(STAMP)

# The paper's §5.1 comparison on the embedded digits data set (about a minute on 2 cores);
# run again, it keeps the finished runs and rebuilds the report.
demo: $(STAMP)
	$(BIN)/growbatch run compare --out runs/demo --resume

test: $(STAMP)
	$(BIN)/python -m pytest -q

test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

# growbatch side by side with seed 003's loop, bs-scheduler, Lightning and a fixed batch
# (bench/bench_peers.py, --quick: under 3 minutes); the bench extra adds bs-scheduler
bench: $(STAMP)
	$(BIN)/pip install --quiet -c constraints.txt -e ".[bench]"
	$(BIN)/python bench/bench_peers.py --quick

clean:
	rm -rf $(VENV) runs .pytest_cache build src/*.egg-info

# flmk: two commands on a fresh machine — `make train` and `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: install train test test-all sweep report bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e ".[test,export]"
	touch $(STAMP)

install: $(STAMP)

# Train + evaluate on the embedded synthetic dataset (generated on first use), print the table.
train: $(STAMP)
	$(BIN)/python -m flmk.train experiment=quickstart

# Fast suite (slow tests deselected); `make test-all` runs everything.
test: $(STAMP)
	$(BIN)/python -m pytest -m "not slow" -q

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# One ablation table as a Hydra multirun, e.g. `make sweep TABLE=odn/table4 ARGS="data=synthetic trainer=gpu"`.
sweep: $(STAMP)
	$(BIN)/python -m flmk.train -m experiment=$(TABLE) $(ARGS)

# Table beside the paper's numbers from a multirun folder: `make report RUN=multirun/2026-11-22/10-00-00`.
report: $(STAMP)
	$(BIN)/python -m flmk.report $(RUN)

bench: $(STAMP)
	$(BIN)/python -m flmk.bench $(ARGS)

clean:
	rm -rf $(VENV) outputs multirun .pytest_cache

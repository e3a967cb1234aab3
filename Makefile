# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo-output

.PHONY: demo test install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned to the local CPU build, so nothing else pulls CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/fedneurogen simulate --out $(DEMO_DIR)/data --sites 3 --modality fmri --seed 0
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/fedneurogen validate $(DEMO_DIR)/data/site-01
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/fedneurogen validate $(DEMO_DIR)/data/site-02
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/fedneurogen validate $(DEMO_DIR)/data/site-03

test: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python -m pytest

bench: $(STAMP)
	PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python benchmarks/data_cache.py --out benchmarks/results/data_cache.json

clean:
	rm -rf $(VENV) $(DEMO_DIR)

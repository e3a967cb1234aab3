# Two entry points for a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed
DEMO_DIR ?= demo-output

.PHONY: demo test test-all lint format install bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	# torch first, pinned to the local CPU build, so nothing else pulls CUDA wheels.
	$(BIN)/pip install --quiet torch==2.13.0
	$(BIN)/pip install --quiet -e ".[test]"
	touch $(STAMP)

install: $(STAMP)

# The main job: simulate 3 sites, train one model across them with Flower, then score the global
# model on a site's held-out subjects and rebalance a site's classifier with generated data.
FNG := PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/fedneurogen
demo: $(STAMP)
	$(FNG) simulate --out $(DEMO_DIR)/data --sites 3 --subjects-per-site 4 --modality fmri --seed 0 --eeg-only-sessions B:3
	$(FNG) validate $(DEMO_DIR)/data/site-02
	rm -rf $(DEMO_DIR)/federated $(DEMO_DIR)/federated-site-state
	$(FNG) federate --run-dir $(DEMO_DIR)/federated --data-root $(DEMO_DIR)/data --sites 3 --rounds 3 --preset tiny
	$(FNG) evaluate --checkpoint $(DEMO_DIR)/federated/checkpoint --data $(DEMO_DIR)/data/site-01 --out $(DEMO_DIR)/report-site-01 --n-samples 2 --max-windows 48 --baseline-epochs 2 \
	  --also-trained-on $(DEMO_DIR)/data/site-02 --also-trained-on $(DEMO_DIR)/data/site-03
	$(FNG) augment --checkpoint $(DEMO_DIR)/federated/checkpoint --data $(DEMO_DIR)/data/site-02 --out $(DEMO_DIR)/fairness-site-02 --sensitive-attribute group --folds 3 --steps 10 --eeg-only --features target
	@echo
	@echo "Federated run:   $(DEMO_DIR)/federated (history.json, metrics.png, checkpoint/)"
	@echo "Generation:      $(DEMO_DIR)/report-site-01 (report.json, surface maps, time courses)"
	@echo "Fairness:        $(DEMO_DIR)/fairness-site-02 (report.json, report.md, per-class and per-group F1 plots)"

# The demo's federated run with differential privacy on (subject-level epsilon 8, delta 1e-5; the
# private ridge path adapting the public prior): federate prints the privacy planner's prediction
# at round 0, evaluate compares the DP point prediction with the ridge-HRF baseline on site-01
# (--allow-seen: DP sites withhold which subjects they trained on). A few minutes on CPU (the
# planner's reference is simulated on the first run, then cached).
.PHONY: demo-dp
demo-dp: $(STAMP)
	$(FNG) simulate --out $(DEMO_DIR)/data-dp --sites 3 --subjects-per-site 4 --modality fmri --seed 0
	rm -rf $(DEMO_DIR)/federated-dp $(DEMO_DIR)/federated-dp-site-state
	$(FNG) federate --run-dir $(DEMO_DIR)/federated-dp --data-root $(DEMO_DIR)/data-dp --sites 3 --rounds 2 --preset tiny \
	  --set dp-enabled=true --set dp-target-epsilon=8.0 --set dp-delta=1e-5
	$(FNG) evaluate --checkpoint $(DEMO_DIR)/federated-dp/checkpoint --data $(DEMO_DIR)/data-dp/site-01 --out $(DEMO_DIR)/report-dp-site-01 --n-samples 2 --max-windows 48 --baseline-epochs 2 \
	  $$(ls $(DEMO_DIR)/federated-dp-site-state/*/split-*.json | sed 's/^/--site-record /') \
	  --also-trained-on $(DEMO_DIR)/data-dp/site-02 --also-trained-on $(DEMO_DIR)/data-dp/site-03
	@echo
	@echo "Federated run with DP: $(DEMO_DIR)/federated-dp (history.json: epsilon per subject, the private path's choice)"
	@echo "Evaluation:            $(DEMO_DIR)/report-dp-site-01 (report.json: point prediction vs ridge-HRF)"

# The BIDS validator that tests/test_bids_validator.py runs on simulated sites is the schema-based
# one from PyPI (bids-validator-deno, pinned in the test extra, Deno included): no Node.js or npm.
BIDS_VALIDATOR := $(BIN)/bids-validator-deno

# `make test` skips the tests marked slow (real multi-process Flower federations, ~6 min of the
# suite); `make test-all` (or `make test TEST_ALL=1`, as CI runs it) runs every test.
PYTEST_SELECT = $(if $(TEST_ALL),,-m "not slow")
# The tests run on TEST_WORKERS pytest-xdist processes (TEST_WORKERS=1: one process, as before),
# a whole test file to a worker (`--dist loadfile`: a file's module fixtures, a consortium or a
# federation, are made once). Much of the suite waits on Flower processes, so on 2 cores two
# workers took it from about 22 to 16 minutes; each worker's numerical libraries take one thread,
# so the two share the cores instead of oversubscribing them.
TEST_WORKERS ?= 2
PYTEST_WORKERS = $(if $(filter 1,$(TEST_WORKERS)),,-n $(TEST_WORKERS) --dist loadfile)
ONE_THREAD = $(if $(filter 1,$(TEST_WORKERS)),,OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1)
test: $(STAMP) lint
	$(ONE_THREAD) PATH="$(CURDIR)/$(BIN):$$PATH" BIDS_VALIDATOR="$(CURDIR)/$(BIDS_VALIDATOR)" \
		$(BIN)/python -m pytest $(PYTEST_SELECT) $(PYTEST_WORKERS)

test-all:
	$(MAKE) test TEST_ALL=1

# pyflakes-level checks (pyproject.toml [tool.ruff.lint]) and the formatting; part of `make test`
# (`make format` rewrites the code as the check wants it)
lint: $(STAMP)
	$(BIN)/ruff check --no-cache .
	$(BIN)/ruff format --check --no-cache .

format: $(STAMP)
	$(BIN)/ruff format --no-cache .

# Performance benchmarks, in order, each writing benchmarks/results/<name>.json, then the summary
# (benchmarks/results/summary.json). About 30 minutes on an idle 2-core CPU, scale (32 sites) and
# robustness the longest; see benchmarks/README.md. A subset: make bench BENCH="data_cache scale".
# A script that fails (or is missing) fails the target, after the others have run.
BENCH ?= data_cache synthesis_latency training_efficiency dp_overhead accountants scanner_artifacts federation_overhead scale robustness
BENCH_RESULTS ?= benchmarks/results
BENCH_PY := PATH="$(CURDIR)/$(BIN):$$PATH" $(BIN)/python
bench: $(STAMP)
	@failed=""; for name in $(BENCH); do \
	  echo "== benchmarks/$$name.py"; start=$$(date +%s); \
	  $(BENCH_PY) benchmarks/$$name.py --out $(BENCH_RESULTS)/$$name.json || failed="$$failed $$name"; \
	  echo "== $$name: $$(( $$(date +%s) - start )) s"; \
	done; \
	$(BENCH_PY) benchmarks/summarize.py --results $(BENCH_RESULTS) --expect "$(BENCH)" || failed="$$failed summarize"; \
	if [ -n "$$failed" ]; then echo "benchmarks failed:$$failed"; exit 1; fi

clean:
	rm -rf $(VENV) $(DEMO_DIR)

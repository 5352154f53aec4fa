# zrl: `make run` sets everything up and runs the default experiment; `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zrl-installed
EXPERIMENT ?= experiments/treepo_math.py
ARGS ?=

.PHONY: setup run test lint bench bench-streams bench-controller bench-paramdb bench-tree bench-sync bench-overlap bench-control bench-learning bench-packing clean

setup: $(STAMP)

$(STAMP): pyproject.toml scripts/setup-env.sh
	bash scripts/setup-env.sh $(VENV)
	touch $(STAMP)

run: $(STAMP)
	$(PY) -m zrl.controller $(EXPERIMENT) $(ARGS)

test: $(STAMP)
	bash scripts/install-test-services.sh
	$(PY) -m pytest $(ARGS)

lint: $(STAMP)
	$(PY) -m ruff check zrl tests benchmarks experiments

bench: bench-streams bench-controller bench-paramdb bench-tree bench-sync bench-overlap bench-control bench-packing

bench-streams: $(STAMP)
	$(PY) benchmarks/streams.py $(ARGS)

bench-controller: $(STAMP)
	$(PY) benchmarks/controller.py

bench-paramdb: $(STAMP)
	$(PY) benchmarks/paramdb.py

bench-tree: $(STAMP)
	$(PY) benchmarks/tree_sampling.py

bench-packing: $(STAMP)
	$(PY) benchmarks/tree_training.py $(ARGS)

bench-sync: $(STAMP)
	$(PY) benchmarks/weight_sync.py $(ARGS)

bench-overlap: $(STAMP)
	$(PY) benchmarks/overlap.py $(ARGS)

bench-control: $(STAMP)
	$(PY) benchmarks/control_hmac.py $(ARGS)

# About twice the length of `make run`: zrl's run, then TRL's GRPOTrainer (in its own venv) for as long.
bench-learning: $(STAMP)
	bash scripts/setup-peer-env.sh .venv-peer
	$(PY) benchmarks/learning.py $(ARGS)

clean:
	rm -rf $(VENV) .venv-peer .pytest_cache .hypothesis

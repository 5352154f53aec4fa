# zrl: `make run` sets everything up and runs the default experiment; `make test` sets up and runs the tests.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.zrl-installed
EXPERIMENT ?= experiments/treepo_math.py
ARGS ?=

.PHONY: setup run test lint bench bench-streams bench-controller bench-paramdb bench-tree bench-sync bench-overlap bench-control bench-learning bench-learning-sweep bench-packing bench-sampling bench-sampling-sweep clean

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

# Launch and stop: light workers against bare processes; the TreePO experiment on local, on Slurm (when a cluster
# answers: scripts/slurm-dev-cluster.sh up, export SLURM_CONF) and on a local Ray cluster it starts; about 5 min.
bench-controller: $(STAMP)
	$(PY) benchmarks/controller.py

bench-paramdb: $(STAMP)
	$(PY) benchmarks/paramdb.py

# Tree vs independent sampling on the long task: hf with and without prefix reuse, and vLLM; about 6 min.
bench-tree: $(STAMP)
	$(PY) benchmarks/tree_sampling.py $(ARGS)

bench-packing: $(STAMP)
	$(PY) benchmarks/tree_training.py $(ARGS)

bench-sync: $(STAMP)
	$(PY) benchmarks/weight_sync.py $(ARGS)

bench-overlap: $(STAMP)
	$(PY) benchmarks/overlap.py $(ARGS)

bench-control: $(STAMP)
	$(PY) benchmarks/control_hmac.py $(ARGS)

# Choose each side's learning rate on the validation split: 3 rates x (zrl's run + 10 min of TRL), about 65 min.
bench-learning-sweep: $(STAMP)
	bash scripts/setup-peer-env.sh .venv-peer
	$(PY) benchmarks/learning.py sweep $(ARGS)

# zrl against TRL's GRPOTrainer (in its own venv) on the test split, 3 seeds each at the chosen rates, about 10 min
# of training a side (zrl: `make run`, 2000 steps), about 60 min.
bench-learning: $(STAMP)
	bash scripts/setup-peer-env.sh .venv-peer
	$(PY) benchmarks/learning.py report $(ARGS)

# Trees or independent samples on the long task: every arm once on the validation split, about 45 min.
bench-sampling-sweep: $(STAMP)
	$(PY) benchmarks/sampling_ab.py sweep $(ARGS)

# The best tree arm and the best independent arm of that sweep, 3 seeds each on the test split, about 45 min.
bench-sampling: $(STAMP)
	$(PY) benchmarks/sampling_ab.py report $(ARGS)

clean:
	rm -rf $(VENV) .venv-peer .pytest_cache .hypothesis

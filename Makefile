# The README's two commands: `make quickstart` (the main job) and `make test`.
# Both create .venv/ if missing and install the project into it first.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
STUDY  ?= studies/quickstart-$(shell date +%Y%m%d-%H%M%S)

.PHONY: install quickstart test test-fast lint format bench bench-search clean

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[test]'
	@touch $(STAMP)

install: $(STAMP)

# A small real study on the embedded digits data: teacher + cost matrix (cached),
# 16 searched WKL trials (ASHA + TPE) and the KD / WKD-L / GKL baselines x 2 seeds.
quickstart: $(STAMP)
	$(PY) study/run.py --space search_spaces/quickstart.yaml --storage $(STUDY) --teachers-dir studies/teachers

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/mypy

format: $(STAMP)
	$(VENV)/bin/ruff format .
	$(VENV)/bin/ruff check --fix .

bench: $(STAMP)
	$(PY) benchmarks/bench_losses.py
	$(PY) benchmarks/bench_data.py
	$(PY) benchmarks/bench_ray_overhead.py

# ~25 min on 2 cores: ASHA + TPE vs a full grid on CIFAR-10 JPEGs (digits without ../shared)
bench-search: $(STAMP)
	$(PY) benchmarks/bench_search.py

clean:
	rm -rf studies .pytest_cache .ruff_cache

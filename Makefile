# reinforge: two commands do all the set-up: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: install demo test test-fast bench lint clean

# Idempotent: re-runs pip only when pyproject.toml changed since the last install.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: on CPU machines this takes the local CPU wheel instead of
	# pulling several GB of CUDA packages as a dependency of something else.
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/reinforge demo

# The whole suite, slow learning tests included (that is what CI runs).
test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider --durations=25

# Everything but the learning tests, for a quick local loop.
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: $(STAMP)
	$(VENV)/bin/reinforge bench all

lint: $(STAMP)
	$(VENV)/bin/ruff check .

clean:
	rm -rf $(VENV) runs bench-results .pytest_cache

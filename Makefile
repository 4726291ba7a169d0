# Two entry points (see README): `make demo` and `make test`. Both create .venv on first use.
# `make test` is the fast default run; `make test-slow` the multi-process and end-to-end tests it leaves out
# (marked slow); `make lint` checks the code with ruff (rules in pyproject.toml). .ci/run runs all three.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_ARGS ?=
# tests against the official fixtures, rerun by `make parity` under other MKL code paths
PARITY_TESTS ?= $(sort tests/test_frontend.py $(wildcard tests/test_official_*.py tests/test_*parity*.py))
PARITY_ISAS ?= SSE4_2 AVX2

.PHONY: demo test test-slow lint parity parity-tests setup clean

$(BIN)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	# torch first, pinned: the CPU build 2.13.0 (the package itself only asks for a range)
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e ".[test,plot]"
	touch $@

setup: $(BIN)/.installed

demo: $(BIN)/.installed
	$(BIN)/python -m benchmark demo $(DEMO_ARGS)

test: $(BIN)/.installed
	$(BIN)/python -m pytest -q

# the tests marked slow (torchrun / DDP, signals, subprocess runs, the demo end to end, the installed scripts)
test-slow: $(BIN)/.installed
	$(BIN)/python -m pytest -q -m "slow and not gpu"

lint: $(BIN)/.installed
	$(BIN)/ruff check .

# The FFT (MKL) takes other code paths on other CPUs and log-mel values move by up to 3.7e-4; capping the
# instruction set makes this machine take the paths other machines take (a no-op where MKL does not dispatch).
parity: $(BIN)/.installed
	@set -e; for isa in $(PARITY_ISAS); do \
		echo "parity tests with MKL_ENABLE_INSTRUCTIONS=$$isa"; \
		MKL_ENABLE_INSTRUCTIONS=$$isa $(MAKE) --no-print-directory parity-tests; \
	done

# the parity tests once, under the caller's environment (.ci/run sets MKL_ENABLE_INSTRUCTIONS itself)
parity-tests: $(BIN)/.installed
	$(BIN)/python -m pytest -q $(PARITY_TESTS)

clean:
	rm -rf $(VENV) *.egg-info

# Two commands do all the set-up on a fresh machine:
#   make bench   the microbenchmark (fused vs eager vs torch.compile) on the best device present
#   make test    the whole test suite (what CI runs, through .ci/run)
# Both create .venv if absent, install requirements.txt (torch 2.14.1) and build gct_fused._C.

PYTHON_BOOT ?= python3
VENV        ?= .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.requirements-installed
# Arguments for the benchmark, e.g. make bench BENCH_ARGS="--quick --json out.json"
BENCH_ARGS  ?=
# Arguments for pytest, e.g. make test PYTEST_ARGS="-k gct -x"
PYTEST_ARGS ?=

.PHONY: bench test build clean

$(PY):
	$(PYTHON_BOOT) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip

$(STAMP): requirements.txt | $(PY)
	$(PY) -m pip install -r requirements.txt
	touch $@

# Builds the extension in place (incremental: ninja rebuilds only what changed) and
# installs the package in editable mode once.
build: $(STAMP)
	$(PY) setup.py build_ext --inplace
	@$(PY) -c "import gct_fused" 2>/dev/null || $(PY) -m pip install --no-build-isolation --no-deps -e .

bench: build
	$(PY) -m gct_fused.bench $(BENCH_ARGS)

test: build
	$(PY) -m pytest tests $(PYTEST_ARGS)

clean:
	rm -rf build *.egg-info gct_fused/_C*.so

# Two-command set-up: `make demo` and `make test` each create .venv and install what they need.
# torch==2.13.0 is installed first: on these machines it is a CPU build on local disk; a bare `torch`
# would pull a multi-GB CUDA build.
PY := .venv/bin/python
STAMP := .venv/.installed
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184
export MALLOC_TOP_PAD_ ?= 1073741824

.PHONY: install demo test test-slow bench lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev,notebooks]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	.venv/bin/vlminterp demo

test: $(STAMP)
	$(PY) -m pytest -n 2 -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

bench: $(STAMP)
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

lint: $(STAMP)
	.venv/bin/ruff check vlminterp tests benchmarks analyses figures

clean:
	rm -rf .venv results/demo .pytest_cache

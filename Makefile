# The README's two set-up commands: `make demo` (install + main job) and `make test` (install + tests).
PYTHON ?= python3
VENV ?= .venv
BIN = $(VENV)/bin
# Pinned data packages (Debian): the fonts of the `glyphs` set (unleash_ood.data.glyphs.FONT_PACKAGES) and the
# pictures of the `scenes` set (unleash_ood.data.scenes.SCENE_PACKAGES); the code checks for their files.
FONT_PACKAGES = fonts-liberation fonts-freefont-ttf
SCENE_PACKAGES = lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds
DATA_PACKAGES = dataset-fashion-mnist $(FONT_PACKAGES) $(SCENE_PACKAGES)
SUDO = $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: demo test data

demo: $(BIN)/unleash-ood data
	$(BIN)/unleash-ood demo --out runs/demo

test: $(BIN)/pytest data
	$(BIN)/python -m pytest

# Fashion-MNIST offline from Debian's package where apt exists (elsewhere torchvision downloads it), with the
# pinned fonts (`glyphs`, beside matplotlib's own) and pictures (`scenes`, about 74 MB) of the built-in OOD sets.
data:
	@if command -v apt-get >/dev/null && ! dpkg -s $(DATA_PACKAGES) >/dev/null 2>&1; then \
		$(SUDO) apt-get update -qq && $(SUDO) apt-get install -y -qq $(DATA_PACKAGES); fi

$(BIN)/unleash-ood: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e .
	touch $@

$(BIN)/pytest: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -e '.[test]'
	touch $@

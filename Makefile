# Two commands do all the setup on a fresh machine (see README):
#   make demo   -- create .venv, install, train the embedded default (digits), write results + plots
#   make test   -- create .venv, install, run the test suite
#   make lint   -- ruff and mypy
#   make docs   -- also install the docs extra, run the gallery (examples/*.py, figures into
#                  docs/gallery/) and build the site with `mkdocs build --strict` into site/
#                  (`make docs GALLERY_FLAGS=--fast`: the gallery's small sizes, as in CI)
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DOCS_STAMP := $(VENV)/.installed-docs
GALLERY := $(wildcard examples/[a-z]*.py)
GALLERY_FLAGS ?=

.PHONY: demo test lint bench install docs

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "torch==2.13.0"
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/pdenets train --out runs/digits

test: $(STAMP)
	$(BIN)/python -m pytest -q

# ruff, then the type checker (mypy, configured in pyproject.toml: src/pdenets)
lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/mypy

bench: $(STAMP)
	$(BIN)/python -m benchmarks --quick

$(DOCS_STAMP): $(STAMP) pyproject.toml
	$(BIN)/python -m pip install --quiet -e ".[dev,docs]"
	touch $(DOCS_STAMP)

# the gallery's figures and reports are generated into docs/gallery/ (git-ignored); MODEL.md is
# taken from ../shared/MODEL.md when present (docs/hooks.py), never copied into the repository
docs: $(DOCS_STAMP)
	@mkdir -p docs/gallery
	@for f in $(GALLERY); do \
	  n=$$(basename $$f .py); echo "gallery: $$f"; \
	  $(BIN)/python $$f --out docs/gallery $(GALLERY_FLAGS) > docs/gallery/$$n.txt.tmp || exit 1; \
	  mv docs/gallery/$$n.txt.tmp docs/gallery/$$n.txt; \
	done
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict --site-dir site

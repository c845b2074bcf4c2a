# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := data/demo

.PHONY: setup demo test lint clean

setup: $(STAMP)

# Reinstall when the dependency list changes. torch/torchvision are pinned in pyproject.toml
# and come from this machine's disk; an unpinned torch would download GBs.
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 2>/dev/null || true
	$(BIN)/pip install --quiet -e '.[dev,bench]'
	touch $(STAMP)

demo: setup
	$(BIN)/affcli synth laso $(DEMO)/LASO_dataset --force
	$(BIN)/affcli prepare laso --root $(DEMO)/LASO_dataset --out data/laso_seen.h5 --force

# Lint first (ruff clean is part of passing). pytest exits 5 when it collects no test;
# that is a failure of the suite, so say so plainly.
test: setup
	$(BIN)/ruff check affcli tests
	@$(BIN)/python -m pytest -q -ra; rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/ruff check affcli tests

clean:
	rm -rf $(DEMO) data/*.h5 runs .pytest_cache

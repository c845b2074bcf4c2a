# Two commands do everything on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
DEMO   := data/demo
# The demo's set and recipe (tests/engine/test_demo.py reads these lines, trains the same and
# checks the answers on the shapes rendered below): three classes of the synthetic LASO set,
# the affordances that the renders ask about, and the training recipe in examples/demo.yaml.
DEMO_CLASSES ?= Mug,Knife,Chair
DEMO_AFFORDANCES ?= grasp,cut,sit
DEMO_SHAPES ?= 50
DEMO_TRAIN ?= --config examples/demo.yaml --workers 0

.PHONY: setup demo test test-demo lint gpu-check clean

setup: $(STAMP)

# Reinstall when the dependency list changes. torch/torchvision are pinned in pyproject.toml
# and come from this machine's disk; an unpinned torch would download GBs. pip byte-compiles
# file by file on one core (half of the install's 110 s); compileall does it on every core.
# The byte code must be there: where PYTHONDONTWRITEBYTECODE is set, nothing is cached at
# import and every process would compile torch again. (compileall exits 1 for the one file
# torch ships for a newer Python, which pip skips silently too.)
$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip 2>/dev/null || true
	$(BIN)/pip install --quiet --no-compile -e '.[dev,bench,export,track]'
	$(BIN)/python -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $(STAMP)

# The main job on the embedded synthetic dataset: synth LASO (three classes) -> prepare ->
# train PointRefer on the CPU -> evaluate on the test split beside a constant-prediction
# baseline -> ask questions about loose synthetic shape files (stand-ins for your own scans:
# instances no split holds, in their own size and place) and render the answers.
# (train skips its own test plots: eval draws them.)
demo: setup
	$(BIN)/affcli synth laso $(DEMO)/LASO_dataset -k $(DEMO_SHAPES) --classes $(DEMO_CLASSES) \
		--affordances $(DEMO_AFFORDANCES) --force --quiet
	$(BIN)/affcli prepare laso --root $(DEMO)/LASO_dataset --out data/laso_demo.h5 --force
	rm -rf runs/demo
	$(BIN)/affcli train pointrefer --data data/laso_demo.h5 --out runs/demo/pointrefer \
		$(DEMO_TRAIN) --no-plots
	$(BIN)/affcli eval runs/demo/pointrefer --split test
	$(BIN)/affcli synth shapes $(DEMO)/shapes -k 1 --classes $(DEMO_CLASSES) --force --quiet
	$(BIN)/affcli predict $(DEMO)/shapes/mug_0.ply --question "Where would you grasp this mug?" \
		--model runs/demo/pointrefer --render --out runs/demo/predict/grasp --quiet
	$(BIN)/affcli predict $(DEMO)/shapes/knife_0.ply --question "Where would you grasp this knife?" \
		--model runs/demo/pointrefer --render --out runs/demo/predict/grasp --quiet
	$(BIN)/affcli predict $(DEMO)/shapes/knife_0.ply --question "Where would you cut with this knife?" \
		--model runs/demo/pointrefer --render --out runs/demo/predict/cut --quiet
	$(BIN)/affcli predict $(DEMO)/shapes/chair_0.ply --question "Where would you sit on this chair?" \
		--model runs/demo/pointrefer --render --out runs/demo/predict/sit --quiet
	@cd runs/demo && ls pointrefer/results.png pointrefer/plots/test/per_affordance.png \
		pointrefer/plots/test/gallery predict/grasp/mug_0.png > /dev/null
	@echo "The demo's pictures (any image viewer opens them):"
	@echo "  runs/demo/predict/grasp/mug_0.png, knife_0.png  \"Where would you grasp this ...?\""
	@echo "  runs/demo/predict/cut/knife_0.png               \"Where would you cut with this knife?\""
	@echo "  runs/demo/predict/sit/chair_0.png               \"Where would you sit on this chair?\""
	@echo "  runs/demo/pointrefer/results.png                   training curves"
	@echo "  runs/demo/pointrefer/plots/test/per_object.png     aIoU per object class"
	@echo "  runs/demo/pointrefer/plots/test/per_affordance.png aIoU per affordance"
	@echo "  runs/demo/pointrefer/plots/test/iou_thresholds.png IoU at each threshold"
	@echo "  runs/demo/pointrefer/plots/test/gallery/*.png      best, median, worst per affordance"
	@echo "Redraw them with: $(BIN)/affcli plot runs/demo/pointrefer"

# The demo's recipe trained and its answers checked (a few minutes; not part of `make test`,
# whose CI budget it would overrun): tests/engine/test_demo.py.
test-demo: setup
	AFFCLI_DEMO_TEST=1 $(BIN)/python -m pytest -q -rs tests/engine/test_demo.py

# Lint first (ruff clean is part of passing); the 15 slowest tests are listed so CI logs
# show where the time goes. Two pytest-xdist workers of one thread each (tests/conftest.py)
# keep both cores busy through the exporters' and subprocesses' single-threaded stretches;
# the tests marked slow are collected first and handed out one by one (`--dist load`), so
# the two workers share them; the synthetic sets and the trained run the tests share are
# built once for both workers (`build_once` in tests/conftest.py).
# pytest exits 5 when it collects no test; that is a failure of the suite, so say so plainly.
TEST_WORKERS ?= 2
test: setup
	$(BIN)/ruff check affcli tests
	@$(BIN)/python -m pytest -q -ra --durations=15 -n $(TEST_WORKERS) --dist load; \
	rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "error: pytest collected no tests"; exit 1; fi; exit $$rc

lint: setup
	$(BIN)/ruff check affcli tests

# On a GPU machine: one unattended run (a few minutes) that checks every Triton kernel, the
# encoder, AMP training, NCCL, predict and eval against the CPU and times the ops; it writes
# gpu-report.json and exits 1 if any check failed (docs/engine.md, "The GPU check").
gpu-check: setup
	$(BIN)/affcli doctor --gpu --out gpu-report.json

clean:
	rm -rf $(DEMO) data/*.h5 runs .pytest_cache

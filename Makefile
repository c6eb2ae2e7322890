# Everything runs inside .venv, created on first use (pins and order: ../shared/reference/DEPENDENCIES.md):
# torch==2.13.0 first (the CPU wheel; any other spec pulls CUDA builds), then the project, then RecBole
# with --no-deps (its ray<=2.6.3 pin conflicts with flwr's ray==2.55.1).
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: venv demo test lint clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e ".[dev]"
	$(BIN)/pip install -q --no-deps recbole==1.2.1
	# byzfl: a test-only oracle for the robust aggregators; its declared requirements would replace
	# torch and add torchvision, and its aggregators need only torch, numpy and scipy
	$(BIN)/pip install -q --no-deps byzfl==0.0.11
	$(BIN)/python -c "import torch; assert torch.__version__.startswith('2.13.0'), torch.__version__"
	touch $(STAMP)

venv: $(STAMP)

demo: venv  ## ~75 s: most-popular, then federated FISM learning on ML-100K, then the camouflage demo's verdict
	$(BIN)/fedrec train --dataset ml100k --mode centralized --model pop --out runs/demo
	$(BIN)/fedrec train --config configs/demo.yaml --out runs/demo
	$(BIN)/fedrec demo camouflage

test: venv  ## the whole test suite (real-data tests need FEDREC_DATA_DIR; they skip without it)
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff check fedrec tests benchmarks experiments notebooks
	$(BIN)/ruff format --check fedrec tests benchmarks experiments notebooks

clean:  ## the venv and caches; never runs/ (recorded experiments take hours: delete them by hand)
	rm -rf $(VENV) .pytest_cache .ruff_cache

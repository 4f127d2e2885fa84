# medprune — see README.md. Every target works from a fresh clone.
SHELL := /bin/bash
VENV ?= .venv
PY := $(VENV)/bin/python
MEDPRUNE := $(VENV)/bin/medprune
STAMP := $(VENV)/.installed
export MEDPRUNE_DATA ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),)
export PYTHONUNBUFFERED := 1

MODEL ?= vgg19
TARGET ?= cpu
DATA ?= pneumoniamnist
CRITERION ?= lrp
SAMPLING ?= clustering
RATIO ?= auto
GRANULARITY ?= neuron
PRECISION ?= default
OUT ?= dist
SIGN_KEY ?=

.PHONY: install test lint deploy protocol-grid recovery recovery-schedule recovery-selection split-shift criteria-agreement bench baselines importance removal export-bench tensorrt-check paper studies clean

install: $(STAMP)
$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,dicom]'
	touch $(STAMP)

test: install
	$(PY) -m pytest

lint: install
	$(VENV)/bin/ruff check toolchain export benchmarks devices tests

deploy: install
	$(MEDPRUNE) deploy --model $(MODEL) --target $(TARGET) --data $(DATA) --criterion $(CRITERION) \
	  --sampling $(SAMPLING) --ratio $(RATIO) --granularity $(GRANULARITY) --precision $(PRECISION) --out $(OUT) \
	  $(if $(SIGN_KEY),--sign-key $(SIGN_KEY)) $(if $(SPEEDUP),--speedup $(SPEEDUP)) \
	  $(if $(VAL_FROM_TRAIN),--val-from-train $(VAL_FROM_TRAIN)) $(if $(VAL_FRACTION),--val-fraction $(VAL_FRACTION))

# replays the runs recorded in benchmarks/results/protocol_grid.json and their merge (cached cells are read)
protocol-grid: install
	$(MEDPRUNE) study protocol_grid_repro

recovery: install
	$(MEDPRUNE) study recovery

recovery-schedule: install
	$(MEDPRUNE) study recovery_schedule

# the pre-registered selection-split design (benchmarks/results/selection_split_preregistration.md): trains its
# dense models, computes its cells, writes recovery_selection.* and the headline keys of the complete pairs
recovery-selection: install
	$(MEDPRUNE) study recovery_selection --update-headline
	$(MEDPRUNE) study recovery_selection --arm long --update-headline
	$(PY) -m benchmarks.headline
	$(MEDPRUNE) study recovery_targets  # issue 15's targets vs headline.json → recovery_targets.md

# the selection-split design's dense models on val vs test (a report: benchmarks/results/split_shift.md)
split-shift: install
	$(MEDPRUNE) study split_shift

# issue 15's read-point fix re-measured: how the criteria rank the same units (benchmarks/results/criteria_agreement.md)
criteria-agreement: install
	MEDPRUNE_THREADS=1 OMP_NUM_THREADS=1 $(MEDPRUNE) study criteria_agreement

bench: install
	$(MEDPRUNE) study harness_report
	$(MEDPRUNE) study jetson_prediction

baselines: install
	$(MEDPRUNE) study baselines_cpu  # full-length recipes: medprune study baselines

importance: install
	$(MEDPRUNE) study importance_grid

removal: install
	$(MEDPRUNE) study removal_parity

export-bench: install
	$(MEDPRUNE) study export_quality

# needs an NVIDIA GPU and `pip install tensorrt` (one shot: FP16 + INT8 engines, run_trt.py as shipped)
tensorrt-check: install
	$(MEDPRUNE) study tensorrt_check

paper: install
	$(MEDPRUNE) study paper_grid --datasets pneumoniamnist,breastmnist,chest_xray_224

studies: install
	$(MEDPRUNE) study --help

clean:
	rm -rf $(VENV) .cache runs dist build *.egg-info .pytest_cache .ruff_cache
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

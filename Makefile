# unidet2 — every target installs what it needs first (`make install` is idempotent and fast when done).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
.DEFAULT_GOAL := help

PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.unidet2-installed
# keep pip's cache inside the repo: nothing outside the repo and .venv is written
export PIP_CACHE_DIR := $(CURDIR)/.cache/pip
export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONUNBUFFERED := 1

# DETECTRON2_SOURCE (git URL or local checkout) selects a full detectron2 build; a change of it reinstalls.
DETECTRON2_SOURCE ?=
D2_SOURCE_RECORD := .cache/detectron2-source
$(shell mkdir -p .cache && (echo "$(DETECTRON2_SOURCE)" | cmp -s - $(D2_SOURCE_RECORD) || echo "$(DETECTRON2_SOURCE)" > $(D2_SOURCE_RECORD)))
INSTALL_INPUTS := requirements.txt pyproject.toml $(D2_SOURCE_RECORD) $(wildcard tools/d2_build/*.py)

PYTEST_ARGS ?=
# test processes (pytest-xdist workers, one compute thread each: tests/conftest.py); 0 runs the suite in this process
TEST_WORKERS ?= 2
OUTPUT ?= output

.PHONY: help install env test lint demo demo-full bench clean-venv

help:
	@echo "make demo     install, then run the main job on generated synthetic data (minutes)"
	@echo "make demo-full  the long main job (more data, 1000 iterations, full + 10-shot fine-tuning)"
	@echo "make test     install, then run the test suite"
	@echo "make install  create .venv with the pinned requirements and detectron2"
	@echo "make env      environment report (python -m unidet2.env)"
	@echo "make lint     ruff"
	@echo "make bench    benchmarks (JSON + markdown tables under benchmarks/results/)"
	@echo "make gpu-check  every GPU path measured in <= 8 min on one GPU (GPU_CHECK_ARGS=--cpu-smoke: CPU smoke)"
	@echo "make eval-coco|eval-lvis|eval-odinw CONFIG=<cfg.py> CKPT=<model.pth>  evaluate a checkpoint"
	@echo "make eval-odinw-finetune CONFIG=.. CKPT=.. [ODINW_SETTINGS='full 1 3 5 10']  ODinW fine-tuning protocols"
	@echo "make train-stage1|train-stage2|train-stage3|train-longtail [LAUNCHER=local|slurm] [LONGTAIL_BASE=detr|rcnn] [LONGTAIL_DATA=synthetic|lvis_v1|lvis_v05]  step-wise long-tail stages"

install: $(STAMP)

$(STAMP): $(INSTALL_INPUTS)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q -r requirements.txt
	@# lvis 0.5.3 requires the GUI opencv-python, which clashes with opencv-python-headless; cityscapesscripts
	@# pulls in the obsolete `typing` backport; only their Python APIs are used, so neither brings its deps
	$(PY) -m pip install -q --no-deps lvis==0.5.3 cityscapesscripts==2.3.0
	DETECTRON2_SOURCE="$(DETECTRON2_SOURCE)" $(PY) tools/d2_build/install_detectron2.py
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	@touch $(STAMP)

env: install
	$(PY) -m unidet2.env

test: install
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .

# the main job: ScaleDet on generated synthetic datasets (data, embeddings, training, evaluation, fine-tuning,
# reports); `demo` is the quick run (minutes), `demo-full` the long one. DEMO_ARGS passes options / key=value.
demo: install
	$(PY) -m unidet2.env
	$(PY) tools/scaledet_demo.py --output $(OUTPUT)/scaledet_quickstart $(DEMO_ARGS)

demo-full: install
	$(PY) -m unidet2.env
	$(PY) tools/scaledet_demo.py --full --output $(OUTPUT)/scaledet_demo $(DEMO_ARGS)

bench: install
	@mkdir -p benchmarks/results
	@for script in benchmarks/*.py; do echo "== $$script"; $(PY) $$script; done

# Evaluation of a checkpoint: make eval-coco CONFIG=projects/<Method>/configs/<cfg>.py CKPT=model_final.pth
# (EVAL_ARGS passes more tools/evaluate.py options, e.g. EVAL_ARGS="--num-gpus 2 --backend reference").
.PHONY: eval-coco eval-lvis eval-odinw eval-odinw-finetune
EVAL_ARGS ?=
EVAL_USAGE = { echo "usage: make $@ CONFIG=<LazyConfig .py> CKPT=<checkpoint .pth> [EVAL_ARGS=...]"; exit 2; }

eval-coco: install
	@test -n "$(CONFIG)" -a -n "$(CKPT)" || $(EVAL_USAGE)
	$(PY) tools/evaluate.py --config-file $(CONFIG) --checkpoint $(CKPT) --datasets coco_2017_val --output $(OUTPUT)/eval/coco $(EVAL_ARGS)

eval-lvis: install
	@test -n "$(CONFIG)" -a -n "$(CKPT)" || $(EVAL_USAGE)
	$(PY) tools/evaluate.py --config-file $(CONFIG) --checkpoint $(CKPT) --datasets lvis_v1_val --output $(OUTPUT)/eval/lvis $(EVAL_ARGS)

eval-odinw: install
	@test -n "$(CONFIG)" -a -n "$(CKPT)" || $(EVAL_USAGE)
	$(PY) tools/evaluate.py --config-file $(CONFIG) --checkpoint $(CKPT) --odinw --output $(OUTPUT)/eval/odinw $(EVAL_ARGS)

# GLIP's fine-tuning protocols from CKPT: ODINW_SETTINGS="full" (full-shot) and/or shots per class, 3 seeds each.
ODINW_SETTINGS ?= full 1 3 5 10
eval-odinw-finetune: install
	@test -n "$(CONFIG)" -a -n "$(CKPT)" || $(EVAL_USAGE)
	$(PY) tools/evaluate.py --config-file $(CONFIG) --checkpoint $(CKPT) --odinw-finetune $(ODINW_SETTINGS) \
		--output $(OUTPUT)/eval/odinw $(EVAL_ARGS)

clean-venv:
	rm -rf $(VENV)

# Step-wise long-tail learning (projects/LongTail/README.md): stage 1 pre-trains, stage 2 mines exemplars and trains
# the head expert, stage 3 the unified model; each reads the previous stage's outputs under
# $(OUTPUT)/pipelines/$(LONGTAIL_PIPELINE)/<stage> and refuses to start without them. LAUNCHER=local runs here,
# LAUNCHER=slurm submits through launch/ with afterok chaining (SLURM options in LONGTAIL_ARGS, e.g.
# LONGTAIL_ARGS="--partition gpu --gpus-per-node 8 --time 48:00"). LONGTAIL_BASE selects the base detector
# (detr: Deformable-DETR, the paper's; rcnn: ScaleDet's R-CNN), LONGTAIL_DATA the data (synthetic: the tiny CPU
# preset; lvis_v1; lvis_v05); together they name the pipeline longtail_<base>_<data>.
.PHONY: train-stage1 train-stage2 train-stage3 train-longtail
LAUNCHER ?= local
LONGTAIL_BASE ?= detr
LONGTAIL_DATA ?= synthetic
LONGTAIL_PIPELINE ?= longtail_$(LONGTAIL_BASE)_$(LONGTAIL_DATA)
LONGTAIL_ARGS ?=
LONGTAIL_STAGES = $(PY) -m projects.LongTail.longtail.stages --pipeline $(LONGTAIL_PIPELINE) --launcher $(LAUNCHER) \
	--output-root $(OUTPUT)/pipelines $(LONGTAIL_ARGS)

train-stage1: install
	$(LONGTAIL_STAGES) stage1

train-stage2: install
	$(LONGTAIL_STAGES) stage2

train-stage3: install
	$(LONGTAIL_STAGES) stage3

train-longtail: install
	$(LONGTAIL_STAGES) all

# Data check before a long run (DATASETS.md): every dataset CONFIG trains or tests on, its files, annotations,
# label space, embeddings and sampling; CHECK_ARGS="--decode --workers 8" also decodes every image and PNG.
.PHONY: check-data
CHECK_ARGS ?=
check-data: install
	@test -n "$(CONFIG)" || { echo "usage: make check-data CONFIG=<LazyConfig .py> [CHECK_ARGS='--decode --workers 8']"; exit 2; }
	$(PY) -m unidet2.data.check --config-file $(CONFIG) $(CHECK_ARGS)

# One prepared GPU check (benchmarks/README.md, "GPU check"): results in benchmarks/results/gpu_check.{json,md}.
# Without CUDA it says so and exits 0; GPU_CHECK_ARGS="--cpu-smoke" runs the tiny CPU version instead.
.PHONY: gpu-check
GPU_CHECK_ARGS ?=
gpu-check: install
	@mkdir -p benchmarks/results
	$(PY) benchmarks/gpu_check.py $(GPU_CHECK_ARGS)

# Visual Word Embeddings: the course's commands. `make help` lists them.
#   make test [TEST_WORKERS=2]       set up .venv if needed, run every test (notebooks included)
#   make run-all [PROFILE=cpu] [DATASET=auto]   execute the notebooks into runs/<profile>/
#   make lab                         the student notebooks (make student: student/), then JupyterLab
#   make paper [PROFILE=paper] [DATASET=...] [EPOCHS=N] [MINUTES=M] [N_TRAIN=N] [N_TEST=N] [OUT_DIR=...] [NPROC=N]
#                                    the paper's Table 1 into runs/<profile>[-<N>ep]/results.*
#   make pretrain [PROFILE=cpu] [DATASET=...] [NPROC=N] [MINUTES=M] [ARGS="--model patch ..."]   one pretraining run
#   make gpu-reproduce PARTS=DIR|GLOB [MD5=...] [MINUTES=8] [OUT_DIR=runs/gpu-reproduce/out]
#                                    one CUDA GPU: data, step timings, the time-boxed runs and their probes
#   NPROC=N: train data-parallel over N processes on this node (one per GPU) with torchrun
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
# Data (CIFAR-100 archive and cache) lives in one place, whatever directory a notebook runs from.
export VWE_DATA_DIR ?= $(CURDIR)/data
DATASET_FLAG = $(if $(DATASET),--dataset $(DATASET))
# MINUTES=M: a time box, train until M minutes have passed, checkpoint and stop (rerun to resume)
MINUTES_FLAG = $(if $(MINUTES),--minutes $(MINUTES))
# The CPU table pretrains 30 epochs, not the cpu profile's 4 (the course's): at 4 epochs the methods'
# differences on Shapes sit inside the seeds' spread; at 30 the losses have flattened (docs/results.md).
PAPER_EPOCHS = $(or $(EPOCHS),$(if $(filter cpu,$(PROFILE)),30))
# `make test` on TEST_WORKERS pytest-xdist processes (2: CI's cores; 0 runs in this process). Each module,
# and tests/e2e, stays on one worker and the longest start first (tests/conftest.py).
TEST_WORKERS ?= 2
PYTEST_PARALLEL = $(if $(filter-out 0,$(TEST_WORKERS)),-n $(TEST_WORKERS) --dist loadfile --no-loadscope-reorder)
# `python -m vwe`, or N processes of it started by torchrun (docs/running.md, More than one GPU)
VWE = $(if $(NPROC),$(VENV)/bin/torchrun --standalone --nproc-per-node $(NPROC),$(PY)) -m vwe

.PHONY: help setup test lint sync run-all student lab paper pretrain gpu-reproduce bench e2e mutants clean

help:  ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | sed 's/:.*## /\t/'

setup: $(VENV)/.installed  ## create .venv with pip (torch, the package, notebook and dev tools)

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet --no-compile -e '.[notebooks,dev]'
	@# pip byte-compiles on one core, compileall on every core. Its exit status is
	@# 1 because some files are for newer Pythons (torch's py312_intrinsics.py), which pip skips too.
	$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null || true
	touch $@

test: setup  ## the whole test suite: unit tests, notebooks (papermill + nbval), browser tests if Chromium
	@# bytecode cached even where the environment says not to: otherwise each of the suite's processes (its
	@# notebook kernels, CLI and torchrun runs) compiles the vwe package again
	PYTHONDONTWRITEBYTECODE= $(PY) -m pytest tests $(PYTEST_PARALLEL) --durations=25

lint: setup  ## ruff
	$(PY) -m ruff check .

sync: setup  ## re-pair notebooks/NN_*.py and .ipynb (the newer file wins)
	$(PY) -m jupytext --sync notebooks/[0-9][0-9]_*.ipynb

run-all: setup  ## execute every notebook with papermill into runs/<PROFILE>/ (default PROFILE=cpu)
	$(PY) -m vwe.course --profile $(or $(PROFILE),cpu) $(DATASET_FLAG)

# A student notebook that exists holds the student's work: it is kept (`python -m vwe.student --force` rewrites)
student: setup  ## the student notebooks in student/: the course's, each solution replaced by a stub
	$(PY) -m vwe.student

lab: setup student  ## the student notebooks, then JupyterLab on 127.0.0.1 with a fresh random token
	$(PY) -m jupyterlab --ServerApp.ip=127.0.0.1 \
		--IdentityProvider.token=$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(24))') \
		--ServerApp.root_dir=$(CURDIR) $(if $(filter 0,$(shell id -u)),--allow-root)

paper: setup  ## the paper's Table 1, every row (default PROFILE=paper: CIFAR-100 on a GPU; NPROC=N GPUs)
	$(VWE) table --profile $(or $(PROFILE),paper) $(DATASET_FLAG) $(if $(PAPER_EPOCHS),--epochs $(PAPER_EPOCHS)) $(MINUTES_FLAG) \
		$(if $(N_TRAIN),--n-train $(N_TRAIN)) $(if $(N_TEST),--n-test $(N_TEST)) $(if $(OUT_DIR),--out-dir $(OUT_DIR))

pretrain: setup  ## one pretraining run (default PROFILE=cpu; ARGS="--model patch ..."; NPROC=N GPUs)
	$(VWE) pretrain --profile $(or $(PROFILE),cpu) $(DATASET_FLAG) $(MINUTES_FLAG) $(ARGS)

gpu-reproduce: setup  ## on one CUDA GPU: CIFAR-100 (PARTS=its split archive), step timings, time-boxed runs, probes
	$(PY) scripts/gpu_reproduce.py $(if $(PARTS),--parts '$(PARTS)') $(if $(MD5),--md5 $(MD5)) \
		$(if $(MINUTES),--minutes $(MINUTES)) $(if $(OUT_DIR),--out $(OUT_DIR))

bench: setup  ## training-step / feature / probe throughput, then each convolution's forms (DEVICE=cpu|cuda)
	$(PY) benchmarks/throughput.py --device $(or $(DEVICE),cpu) --json runs/bench-$(or $(DEVICE),cpu).json
	$(PY) benchmarks/conv_forms.py --device $(or $(DEVICE),cpu) --json runs/conv-forms-$(or $(DEVICE),cpu).json

e2e: setup  ## install Debian's Chromium if missing, then the JupyterLab browser tests
	bash scripts/install-chromium.sh
	$(PY) -m pytest tests/e2e

# The core that `make mutants` mutates: the grid, the augmentation, the models' encoder, decoder and loss
# (not their constructors), the evaluation's maths (not its wiring to configs and files)
MUTANTS = 'vwe.patches.*' 'vwe.augment.x_*' \
	'vwe.models.xǁ*ǁforward_*' 'vwe.models.xǁ*ǁdecode_*' 'vwe.models.xǁ*ǁencode_*' \
	'vwe.models.xǁ*ǁforward_loss_*' 'vwe.models.xǁ*ǁimage_embedding_*' 'vwe.models.xǁ*ǁtower_*' \
	'vwe.evaluate.x_extract_features_*' 'vwe.evaluate.x_pixel_features_*' 'vwe.evaluate.x_standardize_*' \
	'vwe.evaluate.x__accuracy_*' 'vwe.evaluate.x_linear_probe_*' 'vwe.evaluate.x_linear_eval_*' \
	'vwe.evaluate.x_knn_*'
MUTANT_WORKERS ?= 2

mutants: setup  ## mutation score of the core against its fast unit tests (opt-in; installs mutmut)
	$(PY) -m pip install --quiet 'mutmut>=3'
	rm -rf mutants
	start=$$(date +%s); \
		OMP_NUM_THREADS=1 $(VENV)/bin/mutmut run --max-children $(MUTANT_WORKERS) $(MUTANTS) && \
		$(VENV)/bin/mutmut export-cicd-stats && \
		$(PY) scripts/mutation_score.py --seconds $$(( $$(date +%s) - start )) --workers $(MUTANT_WORKERS)
	$(VENV)/bin/mutmut results | grep -v 'not checked'

clean:  ## remove run outputs and caches (keeps data/ and .venv/)
	rm -rf runs/ .pytest_cache .ruff_cache test-output

# servegate: the commands README and CI call. `make setup` is idempotent.
SHELL := /bin/bash
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.servegate-setup
PIP := $(BIN)/pip install --quiet --disable-pip-version-check -c constraints.txt
PYTEST_ARGS ?=

.PHONY: setup setup-gpu deploy test test-unit test-integration bench bench-gate bench-gpu lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt Makefile
	@command -v java >/dev/null || { echo "installing Java (openjdk-17-jdk-headless: the JVM TorchServe runs on, and javac for the allowed_urls test)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq openjdk-17-jdk-headless; }
	@# the serving image's test: a container engine (podman's Docker API, runc: crun fails on hybrid
	@# cgroups) and debootstrap for a Debian base made here (no registry can be reached)
	@command -v podman >/dev/null && command -v runc >/dev/null && command -v debootstrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    echo "installing podman, runc and debootstrap (the serving image's tests)"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends podman runc debootstrap >/dev/null; \
	  else echo "podman, runc or debootstrap absent and not installable here (apt-get as root): the serving image's test will skip"; fi; }
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"Python 3.11 needed, got {sys.version}"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	@# setuptools warns on every editable install of a package-dir mapping (handlers/, loadtests/)
	PYTHONWARNINGS="ignore:Editable installation" $(PIP) -e ".[torch,tf,dev]"
	$(PIP) --no-deps tensorflow-serving-api==2.21.0  # it requires full tensorflow; tensorflow-cpu provides it
	@$(BIN)/python -c 'import torch, sys, os; v = torch.__version__; gpu = os.path.exists("$(GPU_MARK)"); sys.exit(0 if v.startswith("2.13.0") and (gpu or "cu" not in v) else f"torch {v} is not the 2.13.0 CPU build")'
	@$(BIN)/python -c 'import yaml, ts, model_archiver'  # TorchServe's wheel forgets PyYAML
	@TF_CPP_MIN_LOG_LEVEL=3 $(BIN)/python -c 'import tensorflow_serving.apis.model_service_pb2_grpc, keras'
	@touch $(STAMP)

# A CUDA host (never used by CI): the CUDA build of the same torch, then the CPU setup above (which
# keeps it: constraints pin torch==2.13.0, which the +cuXXX build satisfies), then the GPU extra
# (torch-tensorrt, onnxruntime-gpu in place of onnxruntime: both provide the `onnxruntime` module).
CUDA ?= cu130
TORCH_INDEX ?= https://download.pytorch.org/whl/$(CUDA)
GPU_MARK := $(VENV)/.servegate-gpu

setup-gpu:
	@command -v nvidia-smi >/dev/null || { echo "setup-gpu needs an NVIDIA driver (nvidia-smi); use make setup"; exit 2; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/pip install --quiet --disable-pip-version-check torch==2.13.0 --index-url $(TORCH_INDEX)
	@touch $(GPU_MARK)
	@$(MAKE) --no-print-directory setup
	$(BIN)/pip uninstall --quiet -y onnxruntime
	$(PIP) -e ".[gpu]"
	@$(BIN)/python -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "CUDA torch installed but no CUDA device is visible")'
	@$(BIN)/python -c 'import onnxruntime as o; print("onnxruntime providers:", o.get_available_providers())'

# The main job: the MLflow Project on the built-in model, from this checkout's environment.
# A local TorchServe keeps serving the champion afterwards (`$(BIN)/servegate serve stop` ends it).
export MLFLOW_TRACKING_URI ?= sqlite:///$(CURDIR)/mlflow.db
export SERVEGATE_HOME ?= $(CURDIR)/.servegate
DEPLOY_ARGS ?=
EXPERIMENT ?= servegate-deploy
REPORT_DIR ?=
ifneq ($(REPORT_DIR),)
export SERVEGATE_REPORT_DIR := $(abspath $(REPORT_DIR))
endif

# VERBOSE=1: library logs and warnings on the terminal too (they always go to the run log).
VERBOSE ?=

deploy: setup
	env -u MLFLOW_EXPERIMENT_ID PATH="$(CURDIR)/$(BIN):$$PATH" SERVEGATE_CALLER_DIR="$(CURDIR)" \
	  $(BIN)/mlflow run pipelines/deploy --env-manager local --experiment-name $(EXPERIMENT) \
	  $(if $(VERBOSE),-P verbose=true) $(DEPLOY_ARGS)

# Unit tests run on up to 4 cores (pytest-xdist: each test has its own tmp dirs and ports);
# integration tests two modules at a time (--dist loadfile: a module's servers stay in one
# process; the longest modules start first, tests/integration/conftest.py). Their load gates
# compare champion and challenger in alternating rounds, so a busy neighbour slows both alike
# (measured: every gate held with two modules at once on a loaded 2-core box). UNIT_WORKERS=0 /
# INTEGRATION_WORKERS=0: one process. Both halves run; the exit status is the first failure's; the
# slowest tests are listed for whoever makes it faster.
UNIT_WORKERS ?= auto
INTEGRATION_WORKERS ?= 2
XDIST = $(if $(filter 0,$(UNIT_WORKERS)),-p no:xdist,-n $(UNIT_WORKERS) --maxprocesses=4)
XDIST_INTEGRATION = $(if $(filter 0,$(INTEGRATION_WORKERS)),-p no:xdist,-n $(INTEGRATION_WORKERS) --dist loadfile --no-loadscope-reorder)

test: setup
	@unit=0; integration=0; \
	  $(BIN)/python -m pytest tests/unit $(XDIST) --durations=10 $(PYTEST_ARGS) || unit=$$?; \
	  $(BIN)/python -m pytest tests/integration $(XDIST_INTEGRATION) --durations=10 $(PYTEST_ARGS) || integration=$$?; \
	  [ $$unit -eq 0 ] || exit $$unit; exit $$integration

test-unit: setup
	$(BIN)/python -m pytest tests/unit $(XDIST) $(PYTEST_ARGS)

test-integration: setup
	$(BIN)/python -m pytest tests/integration $(XDIST_INTEGRATION) $(PYTEST_ARGS)

bench: setup
	$(BIN)/python -m benchmarks.run

# The load gate's decisions against the champion, repeated (issue 22): the same model (should pass
# every time) and a copy 1.5x slower (should be rejected), at max_regression_pct 50 and 20.
bench-gate: setup
	$(BIN)/python -m benchmarks.gate_reliability --out bench-results/gate.json

# The GPU check (issue 14): every CUDA backend on digits and a MiniLM-shaped encoder, handlers run
# in process with a gpu_id, parity, the candidate table and auto's choice. Needs only torch and numpy
# (the encoder wants tokenizers, ONNX candidates onnxruntime; each is skipped with the reason when
# absent), no Java, no MLflow: `python benchmarks/gpu.py` on a bare CUDA host; ends by --deadline.
bench-gpu:
	$(BIN)/python benchmarks/gpu.py

lint: setup
	$(BIN)/ruff check src handlers tests benchmarks loadtests pipelines
	$(BIN)/mypy src

# Stops the local servers first: removing a running server's directory would orphan it.
clean:
	@if [ -x $(BIN)/servegate ]; then $(BIN)/servegate serve stop || true; fi
	rm -rf .servegate mlruns mlflow.db

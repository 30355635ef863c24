# Entry points: `make run` (the service on localhost), `make test`, `make bench`, `make package`, `make deploy`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
# Reinstalled only when a requirements file changes.
INSTALLED := $(VENV)/.installed
STAGE ?= dev
# The committed models `make bench` measures: the default (most accurate) one and the fast one.
BENCH_MODELS ?= models/default models/fast
# The committed models' ONNX graphs (gitignored: tens of MB each), built from their weights and checked
# against PyTorch, so the local endpoint starts without exporting.
GRAPHS := $(addsuffix /model.onnx,$(BENCH_MODELS))

.PHONY: setup browser run test test-container test-all lint bench bench-batch bench-startup bench-train \
	bench-overload bench-memory bench-cold-import bench-gpu bench-all bench-docs evaluate int8 package deploy clean

setup: $(INSTALLED) $(GRAPHS)

models/%/model.onnx: models/%/config.json models/%/weights.pt $(INSTALLED)
	$(BIN)/python -m training.export --model-dir models/$*

# The int8 graphs and their figures on the valid split (minutes per model): see training/quantize.py.
int8: setup
	for model in $(BENCH_MODELS); do nice $(BIN)/python -m training.quantize --model-dir $$model || exit 1; done

$(INSTALLED): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $@

# The web page's tests drive Debian's chromium through chromedriver. Installed here when missing and root (as
# CI runs); otherwise those tests fail and say how to install them.
browser:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
		if [ "$$(id -u)" = 0 ]; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver; \
		else \
			echo "the browser tests need chromium and chromium-driver: sudo apt-get install chromium chromium-driver" >&2; \
		fi; \
	fi

# Ports and model move with settings: make run ENDPOINT_PORT=9080 API_PORT=9000 FILES_PORT=9081 MODEL_DIR=models/fast
run: setup
	scripts/run_local.sh

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

test: lint browser
	$(BIN)/pytest -m "not slow and not container"

# The repacked model.tar.gz served through SageMaker's inference toolkit in an emulation of its PyTorch image
# (tests/sagemaker_container.py): its own virtual environment, built once per set of requirements and reused.
test-container: setup
	$(BIN)/pytest -m container

# Everything, including full-data training and benchmark-sized tests.
test-all: lint browser
	$(BIN)/pytest

# Every bench writes its figures and what they hold for (commit, model digests, CPU, load) to
# bench/results/NAME.json (bench/results.py), or under RESULTS_DIR; `make bench-docs` renders
# docs/benchmarks.md from them, and docs/models.md's tables from the records in the model folders
# (training/model_report.py).
RESULTS_DIR ?= bench/results
RESULTS = --results-dir $(RESULTS_DIR)
bench: setup
	for model in $(BENCH_MODELS); do $(BIN)/python -m bench.endpoint_speed --model-dir $$model $(RESULTS) || exit 1; done

# Process start to the first /ping 200 of a fresh local endpoint, with and without the graph.
bench-startup: setup
	$(BIN)/python -m bench.startup $(RESULTS) $(BENCH_MODELS)

# The 2,061 valid images through `python -m clients.batch` and the local endpoint, for each committed model.
bench-batch: setup
	$(BIN)/python -m bench.batch_speed $(RESULTS) --model-dir $(BENCH_MODELS)

bench-train: setup
	$(BIN)/python -m bench.train $(RESULTS)

# 64 clients for 30 s on each model's endpoint, with and without shedding.
bench-overload: setup
	for model in $(BENCH_MODELS); do $(BIN)/python -m bench.overload --model-dir $$model $(RESULTS) || exit 1; done

# Peak memory of preparing the worst pictures: in the Lambda (every format) and on the endpoint (every shape).
bench-memory: setup
	$(BIN)/python -m bench.decode_memory $(RESULTS)
	$(BIN)/python -m bench.image_memory --model-dir models/default $(RESULTS)

# What observability adds to the API's cold start.
bench-cold-import: setup
	$(BIN)/python -m bench.cold_import $(RESULTS)

# On a machine with a CUDA build of torch (see bench/gpu_check.py): the handlers on the GPU against the CPU.
bench-gpu: setup
	for model in $(BENCH_MODELS); do $(BIN)/python -m bench.gpu_check --model-dir $$model || exit 1; done

bench-docs:
	$(BIN)/python -m bench.render
	$(BIN)/python -m training.model_report --docs docs/models.md $(BENCH_MODELS)

# Every CPU bench at its full settings, one after another, twice (the second run into bench/results/repeat,
# which the docs show beside the first where they differ), then the docs' tables: on an idle machine.
BENCH_ALL = bench bench-startup bench-batch bench-train bench-overload bench-memory bench-cold-import
bench-all:
	$(MAKE) $(BENCH_ALL) RESULTS_DIR=bench/results
	$(MAKE) $(BENCH_ALL) RESULTS_DIR=bench/results/repeat
	$(MAKE) bench-docs

# The committed models on the valid split, into runs/evaluation/<model>/; EVALUATE_FLAGS=--write-model-dir
# also rewrites the model folders' evaluation-valid.json and charts (what tests/test_calibration.py reads).
EVALUATE_FLAGS ?=
evaluate: setup
	for model in $(BENCH_MODELS); do $(BIN)/python -m training.evaluate --model-dir $$model \
		--data ../shared/data/dogs/valid $(EVALUATE_FLAGS) || exit 1; done

# The stage's template plus gateway responses, throttling, API keys and alarms (scripts/merge_template.py).
package: setup
	$(BIN)/python -m scripts.merge_template --stage $(STAGE) --output build/merge-$(STAGE).json
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(BIN)/chalice package --stage $(STAGE) \
		--merge-template build/merge-$(STAGE).json build/package-$(STAGE)

# `chalice deploy`, then what the packaged template would add: throttling, gateway responses, prod's usage plan
# and key, the alarms (scripts/protect_stage.py; idempotent).
deploy: setup
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(BIN)/chalice deploy --stage $(STAGE)
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(BIN)/python -m scripts.protect_stage --stage $(STAGE)

clean:
	rm -rf build .pytest_cache .ruff_cache

# Entry points: `make run` (the service on localhost), `make test`, `make bench`, `make package`.
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

.PHONY: setup browser run test test-all lint bench bench-batch bench-startup bench-train int8 package clean

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
	$(BIN)/pytest -m "not slow"

# Everything, including full-data training and benchmark-sized tests.
test-all: lint browser
	$(BIN)/pytest

bench: setup
	for model in $(BENCH_MODELS); do $(BIN)/python -m bench.endpoint_speed --model-dir $$model || exit 1; done

# Process start to the first /ping 200 of a fresh local endpoint, with and without the graph.
bench-startup: setup
	$(BIN)/python -m bench.startup $(BENCH_MODELS)

# The 2,061 valid images through `python -m clients.batch` and the local endpoint, for each committed model.
bench-batch: setup
	$(BIN)/python -m bench.batch_speed --model-dir $(BENCH_MODELS)

bench-train: setup
	$(BIN)/python -m bench.train

# The stage's template plus gateway responses, throttling, API keys and alarms (scripts/merge_template.py).
package: setup
	$(BIN)/python -m scripts.merge_template --stage $(STAGE) --output build/merge-$(STAGE).json
	AWS_DEFAULT_REGION=$${AWS_DEFAULT_REGION:-us-east-1} $(BIN)/chalice package --stage $(STAGE) \
		--merge-template build/merge-$(STAGE).json build/package-$(STAGE)

clean:
	rm -rf build .pytest_cache .ruff_cache

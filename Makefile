# make generate   the main job: a small synthetic facial-expression dataset in outputs/demo (CPU, offline)
# make test       the test suite, offline, on 2 pytest-xdist workers (PYTEST_WORKERS=0: in one process)
# make install    .venv with the CPU torch of constraints.txt and this package (editable, [dev] extras)
# make demo       the Gradio demo on http://127.0.0.1:7860, offline on the embedded default (DEMO_ARGS="--model PATH")
# make bench      the benchmark suite: FaceWorld tables + speed ratios -> benchmarks/RESULTS.md (BENCH_ARGS=--quick: minutes)

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH_VERSION ?= 2.13.0
OUTPUT_DIR ?= outputs/demo
GENERATE_ARGS ?=
PYTEST_ARGS ?=
# pytest-xdist workers of `make test` (each torch at 1 thread, each test file on one worker); 0: this process alone.
PYTEST_WORKERS ?= 2
BENCH_ARGS ?=
DEMO_ARGS ?=
OFFLINE := HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1

.PHONY: install generate test demo bench clean

install: $(VENV)/.installed

# torch first: a bare `torch` requirement with no torch installed would pull a multi-GB CUDA build.
$(VENV)/.installed: pyproject.toml setup.cfg constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install "torch==$(TORCH_VERSION)"
	$(BIN)/pip install -c constraints.txt -e ".[dev]"
	touch $@

generate: install
	$(OFFLINE) $(BIN)/synfer generate --output-dir $(OUTPUT_DIR) $(GENERATE_ARGS)

test: install
	$(OFFLINE) $(BIN)/python -m pytest -q --durations=25 -n $(PYTEST_WORKERS) --dist loadfile --no-loadscope-reorder $(PYTEST_ARGS)

demo: install
	$(OFFLINE) GRADIO_ANALYTICS_ENABLED=False $(BIN)/python demo/app.py $(DEMO_ARGS)

bench: install
	$(OFFLINE) $(BIN)/python benchmarks/run_benchmarks.py $(BENCH_ARGS)

clean:
	rm -rf build dist src/*.egg-info .pytest_cache $(OUTPUT_DIR)

# Every target bootstraps .venv on first use and reinstalls only when pyproject.toml changes.
PY ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# Real datasets: ../shared/data when present, else the user cache (DataModules download there when online).
ZOO_DATA_DIR ?= $(if $(wildcard ../shared/data),$(abspath ../shared/data),$(HOME)/.cache/zoo/data)
export ZOO_DATA_DIR

.PHONY: demo test test-all bench lint

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python -m zoo.cli.demo

test: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

test-all: $(STAMP)
	$(BIN)/python -m pytest -q

# Every benchmark runs even when one fails (a guard below its bound, a crash); the target fails at the end if any did.
BENCHMARKS := train_path.py "cifar_throughput.py --steps 10 --models lenet5 resnet20 resnet56 vgg11_bn" "densenet_concat.py --bf16" loader_throughput.py crf.py \
	lm_throughput.py seq2seq_decoding.py compile_speed.py wandb_overhead.py
bench: $(STAMP)
	@failed=""; for b in $(BENCHMARKS); do \
	  echo "\$$ python benchmarks/$$b"; $(BIN)/python benchmarks/$$b || failed="$$failed $$b"; echo; \
	done; if [ -n "$$failed" ]; then echo "failed:$$failed"; exit 1; fi

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/lint-imports

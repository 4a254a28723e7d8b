# One command each: `make run` trains and evaluates MMM4Rec on the bundled data; `make test` runs
# the test suite. Both create the virtual environment first (CPU torch by default).
PYTHON ?= python3
VENV ?= .venv
# GPU users: make TORCH="torch==2.14.1" (a CUDA build), then `$(VENV)/bin/pip install -e '.[cuda]'`.
TORCH ?= torch==2.13.0
BIN := $(VENV)/bin

.PHONY: install run test test-all clean

install: $(VENV)/.installed

$(VENV)/.installed: setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH)"
	$(BIN)/pip install --quiet -e ".[test,tune]"
	touch $@

# Any RecBole flag after ARGS=, e.g. make run ARGS="--epochs=3 --show_progress=False"
run: install
	$(BIN)/python run_recbole.py --model=MMM4Rec --dataset=scientific_mm --config_files=properties/quick_cpu.yaml $(ARGS)

test: install
	$(BIN)/python -m pytest -m "not slow and not gpu" -q tests

test-all: install
	$(BIN)/python -m pytest -q tests

clean:
	rm -rf $(VENV) saved log log_tensorboard *.egg-info

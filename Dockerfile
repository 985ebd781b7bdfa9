# The Prefect worker image: the project and its training stack baked in, nothing
# pip-installed at container start. CUDA-capable torch wheels, so the worker uses an
# NVIDIA GPU when the host offers one (see the `gpus` reservation in docker-compose.yml).
FROM python:3.11.11-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install --no-install-recommends -y git tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY pyproject.toml README.md ./
COPY dae_core ./dae_core
COPY tasks ./tasks
COPY flows ./flows
COPY dae_cli ./dae_cli
# Artifacts go through the MLflow server, so the worker needs neither boto3 nor S3 keys.
RUN pip install .
COPY prefect.yaml ./

ARG GIT_COMMIT=unknown
ENV DAE_GIT_COMMIT=${GIT_COMMIT} \
    DAE_DATA_DIR=/data \
    DAE_WORK_DIR=/work

RUN useradd --create-home --uid 1000 dae && mkdir -p /data /work && chown dae /data /work
USER dae
ENTRYPOINT ["tini", "--"]
CMD ["prefect", "worker", "start", "--pool", "dae-pool", "--type", "process"]

# The Prefect worker image: the project and its training stack baked in, nothing
# pip-installed at container start. CUDA-capable torch wheels, so the worker uses an
# NVIDIA GPU when the host offers one (see the `gpus` reservation in docker-compose.yml).
# The base image is a setting: an air-gapped team builds from its own mirror with
# `--build-arg PYTHON_IMAGE=registry.example/python:3.11-slim-bookworm` (compose: PYTHON_IMAGE in .env).
ARG PYTHON_IMAGE=python:3.11.11-slim-bookworm

# The dependencies of pyproject.toml as a requirements file: its own layer below changes only
# when they change, so a release that changes code (or the version) rebuilds in seconds
# rather than the minutes torch takes to install (CHANGELOG.md, "Upgrading").
FROM ${PYTHON_IMAGE} AS requirements
COPY pyproject.toml /
RUN python -c "import tomllib; print(*tomllib.load(open('/pyproject.toml', 'rb'))['project']['dependencies'], sep='\n')" \
    > /requirements.txt

FROM ${PYTHON_IMAGE}

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN apt-get update \
    && apt-get install --no-install-recommends -y git tini \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /app
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN pip install -r /tmp/requirements.txt
COPY pyproject.toml README.md ./
COPY dae_core ./dae_core
COPY adapters ./adapters
COPY tasks ./tasks
COPY flows ./flows
COPY dae_cli ./dae_cli
# No extras: what pyproject.toml's dependencies bring is what every deployed flow, `dae`
# subcommand and the model server import (the compose test checks it in this image).
# Artifacts go through the MLflow server, so the worker needs neither boto3 nor S3 keys.
RUN pip install --no-deps .
COPY prefect.yaml ./

ARG GIT_COMMIT=unknown
ENV DAE_GIT_COMMIT=${GIT_COMMIT} \
    DAE_DATA_DIR=/data \
    DAE_WORK_DIR=/work

RUN useradd --create-home --uid 1000 dae && mkdir -p /data /work && chown dae /data /work
USER dae
ENTRYPOINT ["tini", "--"]
CMD ["prefect", "worker", "start", "--pool", "dae-pool", "--type", "process"]

# TEST FIXTURE, never what a user gets: a stand-in for prefecthq/prefect:3.9.1-python3.11.
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
RUN pip install --no-cache-dir "prefect==3.9.1" asyncpg

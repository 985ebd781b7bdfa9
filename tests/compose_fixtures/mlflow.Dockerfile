# TEST FIXTURE, never what a user gets: a stand-in for ghcr.io/mlflow/mlflow:v3.17.2-full
# (the server with its login, PostgreSQL drivers -- SQLAlchemy 2.1 picks psycopg 3 for
# postgresql:// -- and the S3 client).
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
RUN pip install --no-cache-dir "mlflow[auth]==3.17.2" "psycopg[binary]" psycopg2-binary boto3

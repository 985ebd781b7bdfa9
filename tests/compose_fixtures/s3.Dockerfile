# TEST FIXTURE, never what a user gets: moto's S3 server standing in for RustFS (no RustFS
# build can be had where the compose test runs). It keeps objects in memory only: a
# `docker compose down` loses the artifacts that RustFS would keep on its volume.
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
RUN pip install --no-cache-dir "moto[server]>=5"
COPY s3_server.py /opt/s3_server.py
CMD ["python", "/opt/s3_server.py"]

# TEST FIXTURE, never what a user gets: a stand-in for python:3.11-slim-bookworm made from
# Debian's packages (no registry is reachable where the compose test runs). Python in a venv
# at /usr/local/python so `python` and `pip` are on PATH as in the official image; it trusts
# the test machine's extra CA certificates so pip can reach PyPI through its proxy.
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
COPY certs/ /usr/local/share/ca-certificates/
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install --no-install-recommends -y python3 python3-venv ca-certificates curl \
    && update-ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /usr/local/python \
    && /usr/local/python/bin/pip install --no-cache-dir --upgrade pip
ENV PATH=/usr/local/python/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
    PIP_CERT=/etc/ssl/certs/ca-certificates.crt \
    REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt \
    LANG=C.UTF-8

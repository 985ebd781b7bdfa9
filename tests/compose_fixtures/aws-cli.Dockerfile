# TEST FIXTURE, never what a user gets: a stand-in for amazon/aws-cli (the `aws` command).
ARG PYTHON_IMAGE
FROM ${PYTHON_IMAGE}
RUN pip install --no-cache-dir awscli
ENTRYPOINT ["aws"]

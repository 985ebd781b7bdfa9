# TEST FIXTURE, never what a user gets: a stand-in for the official postgres image, made from
# Debian's PostgreSQL 15 with the part of its entry point the stack uses (POSTGRES_USER /
# POSTGRES_PASSWORD, /docker-entrypoint-initdb.d on an empty volume, PGDATA).
ARG BASE_IMAGE
FROM ${BASE_IMAGE}
RUN apt-get update \
    && DEBIAN_FRONTEND=noninteractive apt-get install --no-install-recommends -y postgresql-15 postgresql-contrib \
    && rm -rf /var/lib/apt/lists/* \
    && mkdir -p /docker-entrypoint-initdb.d
COPY postgres-entrypoint.sh /usr/local/bin/postgres-entrypoint.sh
ENV PGDATA=/var/lib/postgresql/data
STOPSIGNAL SIGINT
ENTRYPOINT ["/bin/sh", "/usr/local/bin/postgres-entrypoint.sh"]

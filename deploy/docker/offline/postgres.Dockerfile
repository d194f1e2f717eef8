# PostgreSQL from Debian's packages, a stand-in for the official postgres image where no registry
# answers: the same POSTGRES_USER / POSTGRES_PASSWORD / POSTGRES_DB, data in
# /var/lib/postgresql/data, pg_isready on PATH, listening on every address with password auth.
ARG BASE_IMAGE=stratus-offline/base:latest
FROM ${BASE_IMAGE}
RUN apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        postgresql-15 \
    && rm -rf /var/lib/apt/lists/* /var/lib/postgresql/15 /etc/postgresql/15
ENV PATH=/usr/lib/postgresql/15/bin:$PATH \
    PGDATA=/var/lib/postgresql/data
COPY postgres-entrypoint.sh /usr/local/bin/stratus-entrypoint
ENTRYPOINT ["/usr/local/bin/stratus-entrypoint"]
CMD ["postgres"]
STOPSIGNAL SIGINT
EXPOSE 5432

# syntax=docker/dockerfile:1
# One image for every OCC service: docker-compose.yml runs it as `occ db migrate`, `occ devices import`,
# `occ ingest`, and later `occ alerts` and `occ web`. Runtime dependencies only, as an unprivileged user: not the
# `dev` extra, and not the `local` extra (embedded PostgreSQL and broker wheels for `occ up`), since compose
# provides the database and the broker.
# Deployment notes: docs/deploy.md.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: a virtualenv under /opt/occ with the project and its runtime dependencies -------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_NO_CACHE_DIR=1
RUN python -m venv /opt/occ
WORKDIR /src
# Dependencies first, read from pyproject.toml (`project.dependencies` only, no extras), so that editing the
# sources does not reinstall them.
COPY pyproject.toml ./
RUN python -c "import tomllib; print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['dependencies']))" \
        > /tmp/requirements.txt \
    && /opt/occ/bin/pip install -r /tmp/requirements.txt
# Then the project itself (what .dockerignore lets through), non-editable.
COPY . .
RUN /opt/occ/bin/pip install --no-deps . \
    && /opt/occ/bin/occ --help > /dev/null

# --- runtime ---------------------------------------------------------------------------------------------
FROM ${PYTHON_IMAGE}
ENV PATH=/opt/occ/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    OCC_CONFIG_DIR=/app/config \
    OCC_VAR_DIR=/app/var
RUN groupadd --system --gid 10001 occ \
    && useradd --system --uid 10001 --gid occ --home-dir /app --no-create-home --shell /usr/sbin/nologin occ
COPY --from=build /opt/occ /opt/occ
WORKDIR /app
# The metric catalog and other data files under config/ (read-only for the service user).
COPY config/ /app/config/
RUN mkdir -p /app/var && chown occ:occ /app/var
# Numeric, so that orchestrators can verify "not root" without reading /etc/passwd.
USER 10001:10001
# ingest's health and metrics endpoint (ingest.http_port).
EXPOSE 9101
CMD ["occ", "--help"]

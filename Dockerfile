# DLM in a small image: the wheel built in one stage, installed in a slim runtime, run as a non-root user.
# It listens on all interfaces, so it needs authentication (docs/security.md): an admin token from
# your secret store, and/or an identity provider (DLM_AUTH_JWKS_URL, DLM_AUTH_ISSUER, DLM_AUTH_AUDIENCE).
#   docker build -t dlm .
#   echo "dlm_$(openssl rand -hex 32)" > admin.token                                # keep it secret
#   docker run -p 8000:8000 -e DLM_ADMIN_TOKEN="$(cat admin.token)" dlm             # embedded PostgreSQL in /data
#   docker run -p 8000:8000 -e DLM_ADMIN_TOKEN="$(cat admin.token)" \
#       -e DLM_DATABASE_URL=postgresql://dlm:…@db/dlm -e DLM_ALLOWED_HOSTS=dlm.example.org dlm  # your PostgreSQL
#   dlm whoami --token "$(cat admin.token)"                                          # from anywhere that reaches it
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md alembic.ini ./
COPY dlm ./dlm
COPY migrations ./migrations
RUN pip wheel --no-cache-dir --wheel-dir /wheels .

FROM python:3.11-slim
RUN useradd --create-home --uid 10001 dlm \
    && mkdir -p /data/storage \
    && chown -R dlm /data
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir /wheels/*.whl && rm -rf /wheels
USER dlm
ENV DLM_HOST=0.0.0.0 \
    DLM_PORT=8000 \
    DLM_DATA_DIR=/data
VOLUME /data
EXPOSE 8000
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8000/health/live', timeout=2)"]
ENTRYPOINT ["dlm"]
CMD ["serve"]

# DLM in a small image: the wheel built in one stage, installed in a slim runtime, run as a non-root user.
#   docker build -t dlm .
#   docker run -p 8000:8000 -e DLM_DATABASE_URL=postgresql://dlm:…@db/dlm dlm      # your PostgreSQL
#   docker run -p 8000:8000 dlm                                                     # embedded PostgreSQL in /data
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

# Slim runtime image: onnxruntime + the plugin + its default model bundle + the postgres extra (psycopg 3,
# binary wheel with libpq: the shared history store of several workers); no torch, no training extra.
# Build:  docker build -t bal-broker:0.1.0 .
# Run:    docker run --rm -v $PWD/deploy/compose/config.yaml:/etc/bal-broker/config.yaml bal-broker:0.1.0
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY broker_plugin ./broker_plugin
COPY training ./training
COPY schemas ./schemas
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[postgres]"

FROM python:3.11-slim
LABEL org.opencontainers.image.title="bal-broker" \
      org.opencontainers.image.description="BAL quasar candidate finder for ZTF and Rubin alert streams"
ENV PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "bal-broker[postgres]" && rm -rf /wheels \
    && useradd --system --uid 10001 --no-create-home bal
USER 10001
EXPOSE 9108
# Healthy = /healthz answers 200: the processing loop's heartbeat is recent and no fatal stall holds
# (unacknowledged outputs, cluster id changed); urlopen raises on 503 (broker_plugin/stream/stall.py).
HEALTHCHECK --interval=30s --timeout=5s --start-period=30s --retries=3 \
    CMD python -c "import urllib.request,sys; urllib.request.urlopen('http://127.0.0.1:9108/healthz', timeout=4)" || exit 1
ENTRYPOINT ["bal-broker"]
CMD ["run", "--config", "/etc/bal-broker/config.yaml"]

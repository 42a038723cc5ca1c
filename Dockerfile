# The spinner-jobs image of the worker and the HTTP API (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY enqueuer enqueuer
COPY workflows workflows
COPY activities activities
COPY spinner_jobs spinner_jobs
# With the tracing extra, so SPINNER_OTLP_ENDPOINT works in the image.
RUN pip install --no-cache-dir '.[tracing]'
USER nobody
ENTRYPOINT []
CMD ["spinner-jobs", "worker"]

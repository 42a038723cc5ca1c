# The spinner-jobs worker image (used by docker-compose.yml).
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md ./
COPY enqueuer enqueuer
COPY workflows workflows
COPY activities activities
COPY connectors connectors
COPY store store
COPY worker worker
RUN pip install --no-cache-dir .
USER nobody
ENTRYPOINT []
CMD ["spinner-jobs", "worker"]

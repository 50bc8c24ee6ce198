# The fleet image: orchestrator and worker pools run from it with different commands.
FROM python:3.11-slim
WORKDIR /app
COPY pyproject.toml README.md topics.yaml market.yaml ./
COPY schemas ./schemas
COPY fleet ./fleet
COPY orchestrator ./orchestrator
COPY workers ./workers
COPY fleetctl ./fleetctl
RUN pip install --no-cache-dir . && useradd --system fleet
USER fleet
ENV FLEET_LOG_FORMAT=json
ENTRYPOINT []
CMD ["fleet", "--help"]

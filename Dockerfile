# The webhook service image: `webhook-service serve` with settings from WEBHOOKS_* variables.
FROM python:3.11-slim

WORKDIR /app
COPY pyproject.toml README.md ./
COPY service ./service
COPY kafka ./kafka
COPY generated ./generated
RUN pip install --no-cache-dir . && useradd --system --uid 10001 webhooks
USER webhooks

ENV WEBHOOKS_GRPC_ADDRESS=0.0.0.0:50051
EXPOSE 50051
HEALTHCHECK --interval=10s --timeout=5s --retries=5 CMD ["webhook-service", "healthcheck"]
ENTRYPOINT ["webhook-service"]
CMD ["serve"]

"""Webhook delivery service: gRPC API, Kafka ingest, signed HTTP delivery."""

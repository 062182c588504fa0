"""Kafka adapters: topic names, codecs, consumers and producers."""

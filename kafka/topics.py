"""Names of the Kafka topics the service reads and writes."""

# Domain events come in here unless WEBHOOKS_KAFKA_TOPICS names others.
DEFAULT_INGEST_TOPIC = "domain-events"
# One webhooks.v1.DeliveryAttempt record per attempt, key = subscription id.
DELIVERY_ATTEMPTS_TOPIC = "webhooks.delivery-attempts"
# Messages that could not be ingested, with the reason and origin in headers.
DEAD_LETTER_TOPIC = "webhooks.dead-letter"
# The consumer group of every service instance, unless WEBHOOKS_KAFKA_GROUP_ID names another.
CONSUMER_GROUP = "webhook-service"

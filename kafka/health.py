"""Whether Kafka answers: the `webhooks.kafka` health status and the webhooks_kafka_up gauge."""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from kafka.producer import Producer
from service.metrics import Metrics

PROBE_SECONDS = 2.0


class KafkaProbe:
    def __init__(
        self, producer: Producer, report: Callable[[bool], Awaitable[None]], metrics: Metrics
    ) -> None:
        self._producer = producer
        self._report = report
        self._metrics = metrics

    async def probe(self) -> None:
        """Asks a broker for metadata, waiting at most PROBE_SECONDS, and reports the answer."""
        up = False
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(PROBE_SECONDS):
                up = await self._producer.reachable()
        self._metrics.kafka_up.set(1 if up else 0)
        await self._report(up)

"""The ledger of jobs sent ahead of their ingest transaction: which transaction each waits
for, and which of them it did not store (nothing may be written of those)."""

import asyncio
from collections import OrderedDict
from collections.abc import Iterable, Sequence

from service.domain.pipeline import Ingested, Job

# Ids of jobs sent ahead but not stored, remembered until their attempt ends; the oldest go
# first (such jobs are rare, and a job dropped unsent never comes back).
NOT_STORED_REMEMBERED = 100_000


class AheadLedger:
    def __init__(self) -> None:
        self._storing: dict[asyncio.Future[Ingested], list[str]] = {}
        self._not_stored: OrderedDict[str, None] = OrderedDict()

    def track(self, stored: "asyncio.Future[Ingested]", jobs: Sequence[Job]) -> None:
        """The jobs were sent ahead of the transaction that `stored` ends with."""
        if jobs:
            self._storing[stored] = [job.delivery_id for job in jobs]
            stored.add_done_callback(self._ended)

    def _ended(self, stored: "asyncio.Future[Ingested]") -> None:
        ids = self._storing.pop(stored, None)
        if ids is None:
            return
        missing: Sequence[str] = ids  # a failed transaction stored none of them
        if not stored.cancelled() and stored.exception() is None:
            missing = list(stored.result().not_stored)
        for delivery_id in missing:
            self._not_stored[delivery_id] = None
        while len(self._not_stored) > NOT_STORED_REMEMBERED:
            self._not_stored.popitem(last=False)

    async def unstored(self, delivery_ids: Iterable[str]) -> set[str]:
        """Those of the deliveries whose jobs were sent ahead of a transaction that did not
        store them (forgotten here from now on), once every transaction that jobs were sent
        ahead of has ended."""
        if self._storing:
            ending = list(self._storing)
            await asyncio.wait(ending)
            for stored in ending:
                self._ended(stored)
        if not self._not_stored:
            return set()
        missing = {i for i in delivery_ids if i in self._not_stored}
        for delivery_id in missing:
            del self._not_stored[delivery_id]
        return missing

"""The ledger of jobs sent ahead of their ingest transaction: which transaction each waits
for, which of them it did not store (nothing may be written of those), and which waited for
a transaction that failed (the database went away): their records are read again and
stored under the same delivery ids, so their attempts wait for that."""

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
        self._failed: OrderedDict[str, None] = OrderedDict()

    def track(self, stored: "asyncio.Future[Ingested]", jobs: Sequence[Job]) -> None:
        """The jobs were sent ahead of the transaction that `stored` ends with."""
        if jobs:
            self._storing[stored] = [job.delivery_id for job in jobs]
            stored.add_done_callback(self._ended)

    def _ended(self, stored: "asyncio.Future[Ingested]") -> None:
        ids = self._storing.pop(stored, None)
        if ids is None:
            return
        if stored.cancelled() or stored.exception() is not None:
            remembered, missing = self._failed, ids  # stored none of them, yet
        else:
            remembered, missing = self._not_stored, list(stored.result().not_stored)
        for delivery_id in missing:
            remembered[delivery_id] = None
        while len(remembered) > NOT_STORED_REMEMBERED:
            remembered.popitem(last=False)

    async def unstored(self, delivery_ids: Iterable[str]) -> set[str]:
        """Those of the deliveries whose jobs were sent ahead of a transaction that did not
        store them (forgotten here from now on), once every transaction that jobs were sent
        ahead of has ended."""
        if self._storing:
            ending = list(self._storing)
            await asyncio.wait(ending)
            for stored in ending:
                self._ended(stored)
        return _take(self._not_stored, delivery_ids)

    def take_failed(self, delivery_ids: Iterable[str]) -> set[str]:
        """Those of the deliveries whose jobs were sent ahead of a transaction that failed
        (forgotten here from now on); ask after `unstored`."""
        return _take(self._failed, delivery_ids)


def _take(remembered: "OrderedDict[str, None]", delivery_ids: Iterable[str]) -> set[str]:
    if not remembered:
        return set()
    found = {i for i in delivery_ids if i in remembered}
    for delivery_id in found:
        del remembered[delivery_id]
    return found

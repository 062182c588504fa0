"""Subscription marks (service.domain.subscription_marks) on their way to the store: those
that change a subscription's state go with their batch of attempts, the rest wait, the
latest per subscription, until COALESCE_SECONDS after its last write."""

from collections.abc import Sequence
from datetime import datetime

from service.domain.pipeline import RecordedAttempt
from service.domain.subscription_marks import COALESCE_SECONDS, Mark, marks_of, write_now

# Subscriptions whose last write is remembered; beyond, those written longest ago go.
REMEMBERED = 100_000


class CoalescedMarks:
    def __init__(self) -> None:
        # Per subscription: when it was last written (monotonic) and whether that cleared it.
        self._written: dict[str, tuple[float, bool]] = {}
        self._waiting: dict[str, Mark] = {}

    @property
    def waiting(self) -> bool:
        return bool(self._waiting)

    def take(self, items: Sequence[RecordedAttempt], now: datetime, clock: float) -> list[Mark]:
        """The marks of a batch to write with it; the others wait."""
        out = []
        for mark in marks_of(items, now):
            key = mark.subscription_id
            if write_now(mark, self._written.get(key), clock):
                out.append(mark)
                self._waiting.pop(key, None)  # superseded
                self._written[key] = (clock, mark.cleared)
            else:
                self._waiting[key] = mark
        if len(self._written) > REMEMBERED:
            self._written = {
                key: last
                for key, last in self._written.items()
                if clock - last[0] < COALESCE_SECONDS or key in self._waiting
            }
        return out

    def due(self, clock: float, everything: bool = False) -> list[Mark]:
        """The waiting marks whose subscription was written COALESCE_SECONDS ago or more (or
        all of them); they count as written now."""
        out = []
        for key, mark in list(self._waiting.items()):
            last = self._written.get(key)
            if everything or last is None or clock - last[0] >= COALESCE_SECONDS:
                out.append(mark)
                del self._waiting[key]
                self._written[key] = (clock, mark.cleared)
        return out

    def put_back(self, marks: Sequence[Mark]) -> None:
        """Marks whose write failed wait again (unless a later one came meanwhile)."""
        for mark in marks:
            self._waiting.setdefault(mark.subscription_id, mark)

"""Subscriptions as the dispatcher sends to them, cached for a moment."""

import time

from service.domain.pipeline import Target
from service.store.attempts import AttemptStore
from service.store.runner import StoreRunner

# How long a cached target is trusted before it is read again; this instance's own changes
# clear it at once.
TARGET_TTL_SECONDS = 2.0


class TargetCache:
    def __init__(self, runner: StoreRunner, store: AttemptStore) -> None:
        self._runner = runner
        self._store = store
        self._targets: dict[str, tuple[float, Target | None]] = {}

    async def load(self, ids: set[str]) -> dict[str, Target | None]:
        """The targets of the subscriptions; None for one deleted."""
        now = time.monotonic()
        stale = {i for i in ids if now - self._targets.get(i, (-1e9, None))[0] > TARGET_TTL_SECONDS}
        if stale:
            loaded = await self._runner.call(self._store.targets, stale)
            for subscription_id in stale:
                self._targets[subscription_id] = (now, loaded.get(subscription_id))
        return {i: self._targets[i][1] for i in ids}

    def invalidate(self, subscription_id: str) -> None:
        """Forgets a target after its subscription changed or was deleted."""
        self._targets.pop(subscription_id, None)

"""Subscriptions as the dispatcher sends to them, cached until they change.

A target is forgotten when its subscription changes: at once for this instance's own
changes (the API and disabling), within about a second for another instance's (the change
log, service.store.changes, read by the ChangeWatcher), and when one of its signing secrets
expires. Its `failing_since` follows this instance's attempts by the store's rule, so the
disable decision does not need a reload after every attempt."""

import dataclasses
from datetime import datetime

from service.domain.clock import utcnow
from service.domain.pipeline import Target
from service.store.attempts import AttemptStore
from service.store.runner import StoreRunner

# Most targets kept; beyond, the least recently loaded half is forgotten (reloaded on use).
MAX_TARGETS = 100_000


class TargetCache:
    def __init__(self, runner: StoreRunner, store: AttemptStore) -> None:
        self._runner = runner
        self._store = store
        self._targets: dict[str, Target | None] = {}
        # Changes at every invalidate: what a load begun before it read is not kept.
        self._generation = 0

    async def load(self, ids: set[str]) -> dict[str, Target | None]:
        """The targets of the subscriptions; None for one deleted."""
        targets = self._targets
        missing = {i for i in ids if i not in targets or _expired(targets[i])}
        if missing:
            generation = self._generation
            loaded = await self._runner.call(self._store.targets, missing)
            fresh = generation == self._generation
            if len(targets) + len(missing) > MAX_TARGETS:
                for old in list(targets)[: len(targets) // 2]:
                    del targets[old]
            out = {i: targets.get(i) for i in ids if i not in missing}
            for subscription_id in missing:
                target = loaded.get(subscription_id)
                out[subscription_id] = target
                if fresh:
                    targets[subscription_id] = target
            return out
        return {i: targets[i] for i in ids}

    def cached(self, subscription_id: str) -> tuple[bool, Target | None]:
        """(True, its target) when it is cached and current, else (False, None): a call, not
        a coroutine, for the path every attempt takes."""
        try:
            target = self._targets[subscription_id]
        except KeyError:
            return False, None
        return (False, None) if _expired(target) else (True, target)

    def invalidate(self, subscription_id: str) -> None:
        """Forgets a target after its subscription changed or was deleted."""
        self._targets.pop(subscription_id, None)
        self._generation += 1

    def attempted(self, subscription_id: str, succeeded: bool, now: datetime) -> None:
        """An attempt to the subscription ended: failing since now, or since before; or not
        failing (the store applies the same rule to its row)."""
        target = self._targets.get(subscription_id)
        if target is None:
            return
        if succeeded and target.failing_since is not None:
            self._targets[subscription_id] = dataclasses.replace(target, failing_since=None)
        elif not succeeded and target.failing_since is None:
            self._targets[subscription_id] = dataclasses.replace(target, failing_since=now)


def _expired(target: Target | None) -> bool:
    """Whether one of its secrets expired since it was loaded."""
    return (
        target is not None
        and target.secrets_change_at is not None
        and (target.secrets_change_at <= utcnow())
    )

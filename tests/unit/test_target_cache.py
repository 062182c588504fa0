"""The target cache: kept until forgotten, its failing_since following this instance's
attempts by the store's rule, and reloaded once one of its secrets expired."""

import asyncio
from datetime import datetime, timedelta
from typing import Any

import pytest

from service.domain.clock import utcnow
from service.domain.pipeline import Target
from service.engine.targets import TargetCache

SINCE = datetime(2026, 1, 1)
NOW = datetime(2026, 1, 2)


class _Loads:
    """A runner and store in one: counts the loads, answers with `targets`."""

    def __init__(self, targets: dict[str, Target]) -> None:
        self.targets = targets
        self.loads = 0

    async def call(self, fn: Any, ids: set[str]) -> dict[str, Target]:
        self.loads += 1
        return {i: self.targets[i] for i in ids if i in self.targets}


def _target(failing_since: datetime | None = None, expires: datetime | None = None) -> Target:
    return Target("sub_1", "t", "https://x", {}, (b"k",), 0, True, failing_since, expires)


def _cache(target: Target) -> tuple[TargetCache, _Loads]:
    loads = _Loads({"sub_1": target})
    cache = TargetCache(loads, loads)  # type: ignore[arg-type]
    asyncio.run(cache.load({"sub_1"}))
    return cache, loads


@pytest.mark.parametrize(
    ("before", "succeeded", "after"),
    [
        (None, True, None),
        (None, False, NOW),  # starts failing now
        (SINCE, False, SINCE),  # failing since before
        (SINCE, True, None),  # cleared
    ],
)
def test_failing_since_follows_attempts(
    before: datetime | None, succeeded: bool, after: datetime | None
) -> None:
    cache, _ = _cache(_target(failing_since=before))
    cache.attempted("sub_1", succeeded, NOW)
    known, target = cache.cached("sub_1")
    assert known and target is not None and target.failing_since == after


def test_kept_until_forgotten_and_reloaded_after_a_secret_expired() -> None:
    cache, loads = _cache(_target())
    for _ in range(3):
        assert asyncio.run(cache.load({"sub_1"}))["sub_1"] is not None
    assert loads.loads == 1
    cache.invalidate("sub_1")
    assert cache.cached("sub_1") == (False, None)
    asyncio.run(cache.load({"sub_1"}))
    assert loads.loads == 2

    cache, loads = _cache(_target(expires=utcnow() - timedelta(seconds=1)))
    assert cache.cached("sub_1") == (False, None)
    asyncio.run(cache.load({"sub_1"}))
    assert loads.loads == 2


def test_a_deleted_subscription_is_cached_as_none() -> None:
    loads = _Loads({})
    cache = TargetCache(loads, loads)  # type: ignore[arg-type]
    assert asyncio.run(cache.load({"sub_9"})) == {"sub_9": None}
    assert cache.cached("sub_9") == (True, None)
    assert loads.loads == 1

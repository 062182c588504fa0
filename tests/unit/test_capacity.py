"""Capacity alone: the two bounds, who gets a freed slot, parked jobs."""

import asyncio
from collections.abc import Awaitable, Callable

from service.domain.outcomes import Trigger
from service.domain.pipeline import Job
from service.engine.capacity import PARKED_PER_SLOT, Capacity


def _job(n: int, tenant: str) -> Job:
    return Job(f"msg_{n}", "sub_1", tenant, f"e{n}", "x.y", b"{}", 0, Trigger.SCHEDULED)


def _run(test: Callable[[Capacity, list[Job]], Awaitable[None]], **bounds: int) -> None:
    granted: list[Job] = []

    async def run() -> None:
        capacity = Capacity(
            max_in_flight=bounds.get("max_in_flight", 2),
            max_unwritten=bounds.get("max_unwritten", 100),
            granted=granted.append,
        )
        await test(capacity, granted)

    asyncio.run(run())


async def _waiting(hold: Awaitable[None]) -> "asyncio.Future[None]":
    waiter = asyncio.ensure_future(hold)
    await asyncio.sleep(0)
    assert not waiter.done()
    return waiter


def test_hold_waits_while_capacity_is_full() -> None:
    async def test(capacity: Capacity, _: list[Job]) -> None:
        await capacity.hold("t")
        await capacity.hold("t")
        assert capacity.free == 0
        third = await _waiting(capacity.hold("t"))  # backpressure
        capacity.release("t")
        await asyncio.wait_for(third, 1)
        capacity.release("t", 2)
        assert capacity.free == 2

    _run(test)


def test_results_waiting_to_be_written_have_their_own_bound() -> None:
    async def test(capacity: Capacity, _: list[Job]) -> None:
        await capacity.hold("t")
        await capacity.hold("t")
        capacity.answered("t")  # one attempt ended: its request slot is free at once
        assert (capacity.held, capacity.unwritten, capacity.free) == (1, 1, 0)
        third = await _waiting(capacity.hold("t"))  # a slot is free, no room for a result
        capacity.written()
        await asyncio.wait_for(third, 1)
        assert (capacity.held, capacity.unwritten, capacity.free) == (2, 0, 0)

    _run(test, max_unwritten=1)


def test_a_freed_slot_goes_to_the_waiting_tenant_holding_the_fewest() -> None:
    async def test(capacity: Capacity, _: list[Job]) -> None:
        for tenant in ("noisy", "noisy", "noisy", "quiet"):
            await capacity.hold(tenant)
        noisy = await _waiting(capacity.hold("noisy"))  # waited first
        quiet = await _waiting(capacity.hold("quiet"))
        capacity.release("noisy")
        await asyncio.sleep(0)
        assert quiet.done() and not noisy.done()  # quiet holds 1, noisy 2
        capacity.release("noisy")
        await asyncio.wait_for(noisy, 1)

    _run(test, max_in_flight=4)


def test_parked_jobs_hold_up_no_one_and_take_their_turn_in_order() -> None:
    async def test(capacity: Capacity, granted: list[Job]) -> None:
        await capacity.hold("noisy")
        await capacity.hold("noisy")
        jobs = [_job(n, "noisy") for n in range(2)]
        assert all(capacity.park(job) for job in jobs)
        assert capacity.parked == 2 and not granted
        quiet = await _waiting(capacity.hold("quiet"))
        capacity.release("noisy")  # quiet holds none: it goes first
        await asyncio.wait_for(quiet, 1)
        assert not granted
        capacity.release("noisy")
        capacity.release("quiet")
        assert granted == jobs and capacity.parked == 0
        assert capacity.held == 2

    _run(test)


def test_parked_jobs_are_bounded_and_stop_takes_them_back() -> None:
    async def test(capacity: Capacity, granted: list[Job]) -> None:
        await capacity.hold("t")
        await capacity.hold("t")
        most = 2 * PARKED_PER_SLOT
        jobs = [_job(n, "t") for n in range(most + 1)]
        assert [capacity.park(job) for job in jobs] == [True] * most + [False]
        waiter = await _waiting(capacity.hold("t"))
        assert capacity.take_parked() == jobs[:most]
        assert capacity.parked == 0
        capacity.release("t")  # the submit still waiting keeps its turn
        await asyncio.wait_for(waiter, 1)
        assert not granted

    _run(test)


def test_a_cancelled_wait_gives_up_its_turn() -> None:
    async def test(capacity: Capacity, _: list[Job]) -> None:
        await capacity.hold("a")
        await capacity.hold("a")
        gone = await _waiting(capacity.hold("b"))
        after = await _waiting(capacity.hold("c"))
        gone.cancel()
        await asyncio.sleep(0)
        capacity.release("a")
        await asyncio.wait_for(after, 1)
        assert capacity.held == 2

    _run(test)


def test_crowding_needs_full_capacity_and_another_active_tenant() -> None:
    async def test(capacity: Capacity, _: list[Job]) -> None:
        capacity.arriving({"noisy"}, +1)
        for _slot in range(4):
            await capacity.hold("noisy")
        assert not capacity.crowding("noisy")  # alone: waiting is the backpressure
        capacity.arriving({"quiet"}, +1)
        assert capacity.crowding("noisy")
        assert not capacity.crowding("quiet")
        capacity.release("noisy")
        assert not capacity.crowding("noisy")  # room: nobody waits

    _run(test, max_in_flight=4)

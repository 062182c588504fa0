"""Per-endpoint limits with time passed in: a token bucket, a circuit breaker, and how many
jobs an endpoint may hold in memory."""

from dataclasses import dataclass


@dataclass
class TokenBucket:
    """At most `rate` sends per second on average, bursts of up to `burst`."""

    rate: float
    burst: float
    tokens: float = -1.0
    last: float = 0.0

    def take(self, now: float) -> float:
        """Reserves one send; returns how many seconds to wait before making it (0 = now)."""
        if self.tokens < 0 and self.last == 0.0:
            self.tokens, self.last = self.burst, now
        self.tokens = min(self.burst, self.tokens + (now - self.last) * self.rate)
        self.last = now
        self.tokens -= 1
        return 0.0 if self.tokens >= 0 else -self.tokens / self.rate

    def full(self, now: float) -> bool:
        """Whether a fresh bucket would allow no more than this one does now."""
        return self.tokens + (now - self.last) * self.rate >= self.burst


@dataclass
class CircuitBreaker:
    """Opens after `threshold` consecutive failures; after `cooldown` seconds lets one probe
    through (half-open): its success closes the circuit, its failure opens it again with
    twice the cooldown, up to `max_cooldown`."""

    threshold: int
    cooldown: float
    max_cooldown: float
    failures: int = 0
    open_until: float = 0.0
    current_cooldown: float = 0.0
    probing: bool = False

    def allow(self, now: float) -> bool:
        if self.failures < self.threshold:
            return True
        if now < self.open_until or self.probing:
            return False
        self.probing = True
        return True

    def record(self, success: bool, now: float) -> None:
        was_probe, self.probing = self.probing, False
        if success:
            self.failures, self.current_cooldown = 0, 0.0
            return
        self.failures += 1
        if self.failures >= self.threshold:
            if was_probe or self.current_cooldown == 0.0:
                self.current_cooldown = min(
                    self.max_cooldown, self.current_cooldown * 2 if was_probe else self.cooldown
                )
            self.open_until = now + self.current_cooldown

    @property
    def is_open(self) -> bool:
        return self.failures >= self.threshold

    @property
    def serial(self) -> bool:
        """Whether to send one request at a time until one succeeds: after two failures in
        a row (or an open circuit), so a dead endpoint costs about one concurrent wave. One
        failure among successes is noise (say 1% of 500s); waiting then for the slowest
        request in flight cost slow endpoints a third of their rate."""
        return self.failures >= min(2, self.threshold)


def lane_limit(concurrency: int, latency: float | None, seconds: float, unknown: int) -> int:
    """How many jobs an endpoint may hold in memory: what it sends in `seconds` with
    `concurrency` requests at once of `latency` seconds each, and at least one full wave;
    `unknown` while no latency has been measured. The rest wait in the store, so a slow
    endpoint cannot take the capacity that fast ones need."""
    if latency is None:
        return unknown
    return max(concurrency, int(seconds * concurrency / max(latency, 0.001)))


def smoothed(previous: float | None, sample: float, weight: float = 0.2) -> float:
    """An exponentially weighted moving average; the first sample starts it."""
    return sample if previous is None else previous + weight * (sample - previous)


def crowding(held: int, capacity: int, active_tenants: int) -> bool:
    """Whether a tenant holding `held` of a full `capacity` crowds the other active tenants
    out: it holds at least half of it, and one and a half times an equal share. Its further
    jobs then wait aside (Capacity.park) rather than in line for capacity, where they would
    hold up the events of every other tenant behind them (a lone tenant keeps the whole
    capacity: waiting for it is the backpressure; many tenants with a little each wait in
    line too)."""
    return active_tenants > 1 and 2 * held >= capacity and 2 * held * active_tenants >= 3 * capacity


def backlog_delays(
    count: int, held: int, rate: float, free_from: float, now: float
) -> tuple[list[float], float]:
    """Seconds until each of `count` jobs that an endpoint's lane cannot take now is due
    again, and when the lane is free after them: at the pace it sends (`rate` per second),
    after the `held` jobs it has and any deferred before (until `free_from`), at least a
    second from `now`. So a long backlog comes back from the store at its endpoint's pace,
    behind other endpoints' work, instead of all at once every second."""
    start = max(free_from, now + held / rate, now + 1.0)
    return [start + k / rate - now for k in range(count)], start + count / rate

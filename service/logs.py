"""JSON log lines on stderr, one object per line, with any `extra` fields included."""

import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime

_STANDARD = set(logging.makeLogRecord({}).__dict__) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        line = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        line.update({k: v for k, v in record.__dict__.items() if k not in _STANDARD})
        if record.exc_info:
            line["exception"] = self.formatException(record.exc_info)
        return json.dumps(line, default=str)


class QuietRepeats(logging.Filter):
    """aiokafka logs the same line at every retry (a refused topic at each metadata refresh,
    each SASL_PLAINTEXT login): each of its lines passes once per `window` seconds."""

    def __init__(self, window: float = 300.0) -> None:
        super().__init__()
        self._window = window
        self._seen: dict[tuple[str, str], float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith("aiokafka"):
            return True
        key, now = (record.name, record.getMessage()), time.monotonic()
        last = self._seen.get(key)
        if last is not None and now - last < self._window:
            return False
        if len(self._seen) >= 1000:
            self._seen.clear()
        self._seen[key] = now
        return True


def setup(level: str) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(QuietRepeats())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)


class Outage:
    """A failure that retries go on meeting, logged once when it starts or changes, and once
    when it is over: not a line per retry. Safe to share between threads."""

    def __init__(self, logger: logging.Logger, what: str) -> None:
        self._log = logger
        self._what = what
        self._cause: str | None = None
        self._lock = threading.Lock()

    @property
    def ongoing(self) -> bool:
        return self._cause is not None

    def failed(self, cause: str) -> None:
        with self._lock:
            if cause == self._cause:
                return
            self._cause = cause
        self._log.warning(self._what, extra={"error": cause})

    def ended(self) -> None:
        if self._cause is None:  # the common case, without the lock
            return
        with self._lock:
            cause, self._cause = self._cause, None
        if cause is not None:
            self._log.info(f"{self._what}: working again", extra={"after": cause})

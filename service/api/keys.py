"""The API keys file: read at start, read again on SIGHUP."""

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from service.domain.access import KeyEntry, parse_keys
from service.errors import StartupError

log = logging.getLogger(__name__)


def load_keys(path: Path) -> dict[str, KeyEntry]:
    try:
        return parse_keys(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise StartupError(f"WEBHOOKS_API_KEYS_FILE {path}: {exc}") from None


class ApiKeys:
    """The keys in force; `current` is what the servicer authenticates against."""

    def __init__(self, path: Path) -> None:
        self._path = path
        self._keys: Mapping[str, KeyEntry] = {}

    def load(self) -> None:
        """Reads the file; raises StartupError if it is missing or invalid."""
        self._keys = load_keys(self._path)

    def current(self) -> Mapping[str, KeyEntry]:
        return self._keys

    def reload(self) -> None:
        """Reads the file again; keeps the keys in force if the new file is invalid."""
        try:
            self.load()
            log.info("API keys reloaded", extra={"count": len(self._keys)})
        except StartupError as exc:
            log.error("API keys not reloaded: %s", exc)

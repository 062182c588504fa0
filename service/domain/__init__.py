"""Pure domain rules: no I/O, no third-party clients."""

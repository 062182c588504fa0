"""Process tuning shared by the service and its delivery worker: the garbage collector."""

import gc

# Python's default (a collection every 700 allocations) pauses the loop often and long: the
# pipeline makes many short-lived objects and few cycles.
GC_THRESHOLDS = (20_000, 10, 10)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def freeze_startup_objects() -> None:
    """Once started: what exists now (modules, settings, tables) lives as long as the process,
    so full collections need not walk it again."""
    gc.collect()
    gc.freeze()

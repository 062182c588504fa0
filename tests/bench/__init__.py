"""make bench: the whole pipeline measured against the limits it runs into, in one run."""

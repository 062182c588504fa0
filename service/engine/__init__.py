"""The delivery engine: HTTP client, per-endpoint limits, dispatcher and retry scheduler."""

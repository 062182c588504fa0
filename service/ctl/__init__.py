"""webhookctl, the client CLI for people (console script `webhookctl`)."""

"""Device probes and A/B experiments: one-off measurements behind a design decision (see README.md)."""

"""runtime/telemetry."""

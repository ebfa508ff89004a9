"""runtime/dataplane."""

"""runtime/controlplane."""

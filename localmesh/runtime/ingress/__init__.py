"""runtime/ingress."""

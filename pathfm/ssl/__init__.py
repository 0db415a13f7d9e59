"""Self-supervised methods, one module per method, each a set of pure functions of arrays."""

"""Device models: numpy state for every device of a kind, advanced together (no I/O)."""

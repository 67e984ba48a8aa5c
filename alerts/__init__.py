"""Rules engine: turns readings, statuses and events into alerts (a later issue builds it)."""

"""Servers OCC starts for itself on a machine that has none: PostgreSQL from a PyPI wheel and an MQTT broker.

Both bind 127.0.0.1 on a free port, keep their data under a directory the caller owns, and stop cleanly.
The launchers are thin (initdb + a foreground `postgres`; a config file plus one child process) so the wheel
behind either can be replaced. Both die with the process that started them (occ.embedded.proc).
"""

from occ.embedded.broker import EmbeddedBroker
from occ.embedded.net import free_port, wait_for_port
from occ.embedded.postgres import EmbeddedPostgres

__all__ = ["EmbeddedBroker", "EmbeddedPostgres", "free_port", "wait_for_port"]

"""REST API, live websocket gateway and wall display (a later issue builds it)."""

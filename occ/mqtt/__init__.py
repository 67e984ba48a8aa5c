"""OCC's own MQTT 5 receive path: a sans-I/O protocol core (`protocol`) and its asyncio transport (`transport`).

Ingest uses it by default; paho (`occ.bus`) stays for publishing services, tests and `ingest.transport: paho`.
"""

"""Device simulators for OCC: hydromet stations, traffic counters and cameras of Hà Giang over MQTT.

Pure, vectorised models (`simulators.models`) and a scenario engine (`simulators.engine`) produce messages;
thin adapters (`simulators.publisher`, `simulators.runner`) pace and publish them. Entry point:
`simulators.cli.main` (`occ simulate`).
"""

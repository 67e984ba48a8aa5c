"""OCC core: configuration, models, payload codecs, store, MQTT bus and CLI shared by every service."""

__version__ = "0.1.0"

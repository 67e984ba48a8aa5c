"""MQTT → PostgreSQL ingest: loss-free (ack after commit), idempotent, batched with COPY, bounded."""

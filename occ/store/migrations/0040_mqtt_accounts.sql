-- MQTT accounts (issue 7): one per device, gateway and platform service. The database is the source of truth;
-- the broker's password and ACL files are rendered from it (occ/broker_auth.py), so the hash is kept in the
-- form Mosquitto reads: "$7$<iterations>$<salt b64>$<PBKDF2-HMAC-SHA512 b64>". The password itself is never
-- stored. A revoked account keeps its row (who had access, until when) with the hash removed.

CREATE TABLE mqtt_accounts (
    username      text PRIMARY KEY CHECK (username ~ '^[A-Za-z0-9_.-]{1,64}$'),
    role          text NOT NULL CHECK (role IN ('device', 'gateway', 'service')),
    password_hash text CHECK (password_hash IS NULL OR password_hash LIKE '$7$%'),
    issued_at     timestamptz,
    revoked_at    timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK ((password_hash IS NULL) = (revoked_at IS NOT NULL))
);

-- Users of the web console and their tokens (issue 10, ARCHITECTURE §6). Passwords are stored only as a
-- slow-KDF hash (scrypt, parameters inside the hash string); tokens only as a SHA-256 of the secret, so a
-- leaked table cannot be replayed.

CREATE TABLE users (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name          text NOT NULL UNIQUE CHECK (name ~ '^[A-Za-z0-9_.@-]{1,64}$'),
    role          text NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    password_hash text,
    disabled      boolean NOT NULL DEFAULT false,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now()
);

-- Login sessions (kind 'session', short-lived, sliding) and kiosk tokens (kind 'kiosk', read-only, long-lived,
-- revocable with `occ users kiosk-token NAME --revoke`).
CREATE TABLE user_tokens (
    token_hash  bytea PRIMARY KEY,
    user_id     bigint NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind        text NOT NULL CHECK (kind IN ('session', 'kiosk')),
    label       text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz NOT NULL,
    revoked_at  timestamptz,
    last_seen   timestamptz
);
CREATE INDEX user_tokens_user_idx ON user_tokens (user_id, kind);

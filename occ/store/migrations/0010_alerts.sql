-- Alerts (ARCHITECTURE §5, issue 6): episodes, their full transition history, acknowledgements, silences,
-- maintenance windows, incidents (grouping), webhook outbox and the engine's state snapshots.
-- Same schema on both storage paths: alert tables are small OLTP tables, never hypertables.
--
-- Severity is the disaster-risk level of Decision 18/2021/QĐ-TTg (1..5), so the wall colours markers
-- without knowing rules: 1 light blue, 2 light yellow, 3 orange, 4 red, 5 purple.

CREATE TABLE alert_incidents (
    id           bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    group_key    text NOT NULL,            -- e.g. 'camera-offline|ha-giang-city'
    rule         text NOT NULL,
    area         text,
    state        text NOT NULL CHECK (state IN ('open', 'resolved')),
    severity     smallint NOT NULL CHECK (severity BETWEEN 1 AND 5),
    members      integer NOT NULL DEFAULT 0,   -- open member episodes right now
    peak_members integer NOT NULL DEFAULT 0,
    title_vi     text NOT NULL DEFAULT '',
    title_en     text NOT NULL DEFAULT '',
    opened_at    timestamptz NOT NULL,
    changed_at   timestamptz NOT NULL,
    resolved_at  timestamptz
);
-- One open incident per group.
CREATE UNIQUE INDEX alert_incidents_open_uq ON alert_incidents (group_key) WHERE state = 'open';
CREATE INDEX alert_incidents_opened_idx ON alert_incidents (opened_at DESC);

CREATE TABLE alert_episodes (
    id             bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    fingerprint    text NOT NULL,          -- rule + device + labels, never severity
    rule           text NOT NULL,
    kind           text NOT NULL,          -- threshold | accumulation | rate | deadman | offline | composite | ...
    device_id      text,                   -- null for area-wide rules (composite across an area)
    area           text,
    labels         jsonb NOT NULL DEFAULT '{}'::jsonb,
    state          text NOT NULL CHECK (state IN ('pending', 'firing', 'recovering', 'resolved')),
    severity       smallint NOT NULL CHECK (severity BETWEEN 1 AND 5),
    peak_severity  smallint NOT NULL CHECK (peak_severity BETWEEN 1 AND 5),
    level          text NOT NULL DEFAULT '',   -- the rule's level name: 'I', 'II', 'III', 'heavy', ...
    value          double precision,
    threshold      double precision,
    message_vi     text NOT NULL DEFAULT '',
    message_en     text NOT NULL DEFAULT '',
    started_at     timestamptz NOT NULL,   -- event time the condition began (pending or firing)
    fired_at       timestamptz,            -- null when the episode never fired (pending then cleared)
    changed_at     timestamptz NOT NULL,
    resolved_at    timestamptz,
    late           boolean NOT NULL DEFAULT false,  -- opened by old (backfilled) data: not announced as new
    muted          text,                   -- null, or why notifications are muted: silenced, inhibited, ...
    flapping       boolean NOT NULL DEFAULT false,
    incident_id    bigint REFERENCES alert_incidents (id),
    acked_by       text,
    acked_at       timestamptz,
    ack_note       text,
    ack_expires_at timestamptz,
    escalation_step integer NOT NULL DEFAULT 0,
    resolved_by    text                    -- null (engine) or the operator who resolved it by hand
);
-- ARCHITECTURE §5: one open episode per fingerprint, enforced by the database.
CREATE UNIQUE INDEX alert_episodes_open_uq ON alert_episodes (fingerprint) WHERE state <> 'resolved';
CREATE INDEX alert_episodes_changed_idx ON alert_episodes (changed_at DESC);
CREATE INDEX alert_episodes_device_idx ON alert_episodes (device_id, changed_at DESC);
CREATE INDEX alert_episodes_open_idx ON alert_episodes (severity DESC, changed_at DESC) WHERE state <> 'resolved';

-- Every transition with its reason. `id` is the order of the alert stream (consumers dedupe on it);
-- `published_at` is the MQTT outbox: rows still null after a crash are published again at start.
CREATE TABLE alert_transitions (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    episode_id    bigint NOT NULL REFERENCES alert_episodes (id),
    ts            timestamptz NOT NULL,    -- event time of the change
    recorded_at   timestamptz NOT NULL,
    from_state    text NOT NULL,           -- 'ok' for the first transition
    to_state      text NOT NULL,
    from_severity smallint,
    to_severity   smallint,
    reason        text NOT NULL,
    actor         text NOT NULL DEFAULT 'engine',
    late          boolean NOT NULL DEFAULT false,
    muted         text,
    payload       jsonb NOT NULL,          -- exactly what was (or will be) published
    published_at  timestamptz
);
CREATE INDEX alert_transitions_episode_idx ON alert_transitions (episode_id, id);
CREATE INDEX alert_transitions_unpublished_idx ON alert_transitions (id) WHERE published_at IS NULL;

-- Acknowledgement history (the current one is mirrored on the episode).
CREATE TABLE alert_acks (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    episode_id  bigint NOT NULL REFERENCES alert_episodes (id),
    acked_by    text NOT NULL,
    note        text NOT NULL DEFAULT '',
    acked_at    timestamptz NOT NULL,
    expires_at  timestamptz
);
CREATE INDEX alert_acks_episode_idx ON alert_acks (episode_id);

-- Silences: label matchers (JSON list of {label, op: = != =~ !~, value}) over a time range.
CREATE TABLE alert_silences (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    matchers    jsonb NOT NULL,
    starts_at   timestamptz NOT NULL,
    ends_at     timestamptz NOT NULL,
    author      text NOT NULL,
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz,
    CHECK (ends_at > starts_at)
);
CREATE INDEX alert_silences_active_idx ON alert_silences (ends_at) WHERE deleted_at IS NULL;

-- Recurring maintenance windows in local time (site time zone, Asia/Ho_Chi_Minh): on `weekdays`
-- (ISO 1=Mon..7=Sun) from `start_local` for `duration_s`, matching `matchers`.
CREATE TABLE alert_maintenance (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    matchers    jsonb NOT NULL,
    weekdays    smallint[] NOT NULL DEFAULT '{1,2,3,4,5,6,7}',
    start_local time NOT NULL,
    duration_s  integer NOT NULL CHECK (duration_s > 0),
    timezone    text NOT NULL DEFAULT 'Asia/Ho_Chi_Minh',
    author      text NOT NULL DEFAULT '',
    comment     text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now(),
    deleted_at  timestamptz
);

-- Webhook outbox: written in the transaction of the transition, sent (with retries) after commit.
CREATE TABLE alert_notifications (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    transition_id bigint NOT NULL REFERENCES alert_transitions (id),
    target        text NOT NULL,
    step          integer NOT NULL DEFAULT 0,   -- escalation step that produced it (0 = the transition itself)
    payload       jsonb NOT NULL,
    status        text NOT NULL DEFAULT 'pending' CHECK (status IN ('pending', 'sent', 'failed')),
    attempts      integer NOT NULL DEFAULT 0,
    next_at       timestamptz NOT NULL,
    last_error    text,
    sent_at       timestamptz,
    UNIQUE (transition_id, target, step)
);
CREATE INDEX alert_notifications_pending_idx ON alert_notifications (next_at) WHERE status = 'pending';

-- Engine state snapshots (pending timers, windows, hysteresis, last-seen times) keyed by instance, written in
-- the same transaction as the transitions they produced; MQTT messages are acknowledged only after it.
CREATE TABLE alert_engine_state (
    key         text PRIMARY KEY,
    data        bytea NOT NULL,
    updated_at  timestamptz NOT NULL
) WITH (fillfactor = 70);

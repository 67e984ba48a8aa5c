-- Dead letters carry a stable reject code beside the human reason (issue 11 item 7), so operators and tools
-- group and count them without parsing text; rows written before this migration keep a NULL code.
-- client_id was never filled (a subscriber does not learn the publisher's MQTT client id); it is replaced by
-- the device the topic names, which is what an operator looks for.
ALTER TABLE dead_letters ADD COLUMN code text;
ALTER TABLE dead_letters ADD COLUMN device_id text;
ALTER TABLE dead_letters DROP COLUMN client_id;
CREATE INDEX dead_letters_code_idx ON dead_letters (code, received_at);

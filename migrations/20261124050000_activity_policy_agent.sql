-- Which document decided: the agent whose own policy it was (NULL: the server's policy). Kept on
-- the event itself, so it still says so after the agent's policy is removed.
ALTER TABLE activity_events ADD COLUMN policy_agent_id uuid;
-- The impact preview and the shadow summary read one server's recent calls.
CREATE INDEX activity_events_org_server_calls_idx ON activity_events (org_id, server_id, at)
    WHERE method = 'tools/call';

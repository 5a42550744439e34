-- Gateways cache agents with their server grants: a grant added or removed must reach them at
-- once, like a revocation. And a policy head removed (its policy deleted) must too.
CREATE FUNCTION portcullis_notify_agent_grant() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('portcullis_agent', COALESCE(NEW.agent_id, OLD.agent_id)::text);
    RETURN COALESCE(NEW, OLD);
END $$;
CREATE TRIGGER agent_servers_notify AFTER INSERT OR DELETE ON agent_servers
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_agent_grant();

CREATE FUNCTION portcullis_notify_policy_removed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('portcullis_policy', OLD.policy_id::text);
    RETURN OLD;
END $$;
CREATE TRIGGER policy_heads_notify_delete AFTER DELETE ON policy_heads
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_policy_removed();

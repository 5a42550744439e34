-- A decision on an approval (or its end: used, expired, abandoned) wakes the gateway holding the
-- call, whichever process that is, and refreshes the pages showing it.
CREATE FUNCTION portcullis_notify_approval() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('portcullis_approval', NEW.id::text);
    RETURN NULL;
END $$;
CREATE TRIGGER approvals_notify AFTER INSERT OR UPDATE OF status ON approvals
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_approval();

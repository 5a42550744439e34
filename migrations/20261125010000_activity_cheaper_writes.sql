-- Every gateway decision is a row here, so what a row costs PostgreSQL is paid on every call,
-- on the same cores as the gateway (docs/BENCHMARKS.md, session 7). 20,000 rows inserted in
-- batches of 500: 16.5-19 µs a row before, 11.3 µs after. PostgreSQL's CPU per proxied call in
-- the gateway benchmark: 25-28 µs before, 14-16 µs after.

-- The foreign key to organizations ran a row-level check (a locking read of the organization)
-- for every event: about 30 % of an insert. server_id and agent_id never had one, for the same
-- reason. Events of an organization are only written by a gateway that loaded it, and nothing
-- deletes organizations; whatever does must delete their events with them.
ALTER TABLE activity_events DROP CONSTRAINT activity_events_org_fkey;

-- The indexes were declared `at DESC, id DESC`, so every new event went to the left end of its
-- key range, where B-tree page splits leave both halves half empty (PostgreSQL packs pages only
-- on the rightmost split). Ascending, new events go to the right end: pages end 90 % full, the
-- indexes are about half the size, and a backward scan reads them newest first as before.
-- Building them blocks writes to the table for as long as it takes (seconds per million events);
-- meanwhile the gateways' activity writers wait, and their queues (10,000 events each) fill.
DROP INDEX activity_events_org_at_idx;
DROP INDEX activity_events_org_server_idx;
DROP INDEX activity_events_org_agent_idx;
DROP INDEX activity_events_org_tool_idx;
DROP INDEX activity_events_org_decision_idx;
CREATE INDEX activity_events_org_at_idx ON activity_events (org_id, at, id);
CREATE INDEX activity_events_org_server_idx ON activity_events (org_id, server_id, at, id);
CREATE INDEX activity_events_org_agent_idx ON activity_events (org_id, agent_id, at, id);
CREATE INDEX activity_events_org_tool_idx ON activity_events (org_id, tool, at, id);
CREATE INDEX activity_events_org_decision_idx ON activity_events (org_id, decision, at, id);

-- Every event is a `tools/call` decision, so this partial index held the same entries as
-- activity_events_org_server_idx, which serves the impact preview and the shadow summary as
-- well.
DROP INDEX activity_events_org_server_calls_idx;

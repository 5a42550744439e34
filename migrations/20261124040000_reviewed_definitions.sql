-- The tool definitions as reviewed when a version was published (not only their hashes), so the
-- console can show what changed in a tool since.
ALTER TABLE policy_versions ADD COLUMN reviewed_definitions jsonb NOT NULL DEFAULT '{}';

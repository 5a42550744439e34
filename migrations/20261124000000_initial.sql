-- Portcullis schema, version 1. Forward-only: later changes come as new migrations.
--
-- Conventions: every row of tenant data carries org_id and every query of it filters by org_id
-- (crates/store enforces this in its function signatures). Constraints are named so the store can
-- turn a violation into a precise 409. Times are timestamptz. Secrets never appear in clear:
-- passwords as Argon2id PHC strings, agent keys as SHA-256 digests, upstream credentials as
-- AES-256-GCM ciphertexts.

CREATE TABLE organizations (
    id                     uuid        NOT NULL,
    slug                   text        NOT NULL,
    name                   text        NOT NULL,
    approval_webhook_url   text,
    store_argument_values  boolean     NOT NULL DEFAULT false,
    created_at             timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT organizations_pkey PRIMARY KEY (id),
    CONSTRAINT organizations_slug_key UNIQUE (slug),
    CONSTRAINT organizations_slug_format CHECK (slug ~ '^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$'),
    CONSTRAINT organizations_name_length CHECK (char_length(name) BETWEEN 1 AND 200)
);

CREATE TABLE users (
    id             uuid        NOT NULL,
    -- Stored normalized (trimmed, lower-case) so the unique constraint is case-insensitive.
    email          text        NOT NULL,
    password_hash  text        NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz,
    CONSTRAINT users_pkey PRIMARY KEY (id),
    CONSTRAINT users_email_key UNIQUE (email),
    CONSTRAINT users_email_normalized CHECK (email = lower(btrim(email)))
);

CREATE TABLE memberships (
    org_id      uuid        NOT NULL,
    user_id     uuid        NOT NULL,
    role        text        NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT memberships_pkey PRIMARY KEY (org_id, user_id),
    CONSTRAINT memberships_org_fkey FOREIGN KEY (org_id) REFERENCES organizations (id) ON DELETE CASCADE,
    CONSTRAINT memberships_user_fkey FOREIGN KEY (user_id) REFERENCES users (id) ON DELETE CASCADE,
    CONSTRAINT memberships_role_check CHECK (role IN ('admin', 'policy_manager', 'viewer'))
);
CREATE INDEX memberships_user_idx ON memberships (user_id);

CREATE TABLE servers (
    id                  uuid        NOT NULL,
    org_id              uuid        NOT NULL,
    name                text        NOT NULL,
    -- Exactly one of url (HTTP upstreams) and command (stdio upstreams, self-hosted only).
    url                 text,
    command             jsonb,
    -- Encrypted JSON objects: {"Header-Name": "value"} and {"ENV": "value"}.
    headers_enc         bytea,
    header_names        text[]      NOT NULL DEFAULT '{}',
    env_enc             bytea,
    -- What was asked for at registration ('auto' or a transport) and what discovery found.
    transport_requested text        NOT NULL DEFAULT 'auto',
    transport           text        NOT NULL,
    protocol_version    text,
    server_info         jsonb,
    status              text        NOT NULL DEFAULT 'active',
    status_detail       text,
    last_discovered_at  timestamptz,
    created_at          timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT servers_pkey PRIMARY KEY (id),
    CONSTRAINT servers_org_id_key UNIQUE (org_id, id),
    CONSTRAINT servers_org_fkey FOREIGN KEY (org_id) REFERENCES organizations (id) ON DELETE CASCADE,
    CONSTRAINT servers_org_name_key UNIQUE (org_id, name),
    CONSTRAINT servers_target_check CHECK ((url IS NULL) <> (command IS NULL)),
    CONSTRAINT servers_command_check CHECK (command IS NULL OR jsonb_typeof(command) = 'array'),
    CONSTRAINT servers_transport_requested_check
        CHECK (transport_requested IN ('auto', 'streamable_http', 'sse', 'stdio')),
    CONSTRAINT servers_transport_check CHECK (transport IN ('streamable_http', 'sse', 'stdio')),
    CONSTRAINT servers_status_check CHECK (status IN ('active', 'unreachable', 'error')),
    CONSTRAINT servers_name_length CHECK (char_length(name) BETWEEN 1 AND 200)
);

CREATE TABLE tools (
    org_id           uuid        NOT NULL,
    server_id        uuid        NOT NULL,
    name             text        NOT NULL,
    -- Position in the upstream's tools/list, so the gateway keeps the upstream's order.
    position         integer     NOT NULL,
    definition       jsonb       NOT NULL,
    -- SHA-256 (hex) of the canonical JSON of description, inputSchema and annotations.
    definition_hash  text        NOT NULL,
    category         text        NOT NULL,
    risk             text        NOT NULL,
    evidence         jsonb       NOT NULL DEFAULT '[]',
    recommended      jsonb       NOT NULL,
    first_seen_at    timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT tools_pkey PRIMARY KEY (server_id, name),
    CONSTRAINT tools_server_fkey FOREIGN KEY (org_id, server_id)
        REFERENCES servers (org_id, id) ON DELETE CASCADE,
    CONSTRAINT tools_category_check
        CHECK (category IN ('read', 'write', 'execute', 'financial', 'destructive')),
    CONSTRAINT tools_risk_check CHECK (risk IN ('low', 'medium', 'high', 'critical'))
);

CREATE TABLE agents (
    id            uuid        NOT NULL,
    org_id        uuid        NOT NULL,
    name          text        NOT NULL,
    -- SHA-256 of the whole key. Keys carry 256 random bits, so a fast digest is safe here and
    -- keeps authentication off the CPU-heavy path; the prefix lets people recognise a key.
    key_hash      bytea       NOT NULL,
    key_prefix    text        NOT NULL,
    -- true: the agent may reach every server of the organization, now and later.
    all_servers   boolean     NOT NULL DEFAULT true,
    created_at    timestamptz NOT NULL DEFAULT now(),
    created_by    uuid,
    last_used_at  timestamptz,
    revoked_at    timestamptz,
    CONSTRAINT agents_pkey PRIMARY KEY (id),
    CONSTRAINT agents_org_id_key UNIQUE (org_id, id),
    CONSTRAINT agents_org_fkey FOREIGN KEY (org_id) REFERENCES organizations (id) ON DELETE CASCADE,
    CONSTRAINT agents_created_by_fkey FOREIGN KEY (created_by) REFERENCES users (id) ON DELETE SET NULL,
    CONSTRAINT agents_key_hash_key UNIQUE (key_hash),
    CONSTRAINT agents_name_length CHECK (char_length(name) BETWEEN 1 AND 200)
);

-- Server grants of agents whose all_servers is false.
CREATE TABLE agent_servers (
    org_id     uuid NOT NULL,
    agent_id   uuid NOT NULL,
    server_id  uuid NOT NULL,
    CONSTRAINT agent_servers_pkey PRIMARY KEY (agent_id, server_id),
    CONSTRAINT agent_servers_agent_fkey FOREIGN KEY (org_id, agent_id)
        REFERENCES agents (org_id, id) ON DELETE CASCADE,
    CONSTRAINT agent_servers_server_fkey FOREIGN KEY (org_id, server_id)
        REFERENCES servers (org_id, id) ON DELETE CASCADE
);
CREATE INDEX agent_servers_server_idx ON agent_servers (server_id);

-- One policy per server, and optionally one per (server, agent) that replaces the server's
-- policy for that agent. The draft is edited freely; publishing copies it into an immutable
-- policy_versions row.
CREATE TABLE policies (
    id                uuid        NOT NULL,
    org_id            uuid        NOT NULL,
    server_id         uuid        NOT NULL,
    agent_id          uuid,
    draft             jsonb       NOT NULL,
    draft_updated_at  timestamptz NOT NULL DEFAULT now(),
    draft_updated_by  uuid,
    created_at        timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT policies_pkey PRIMARY KEY (id),
    CONSTRAINT policies_org_id_key UNIQUE (org_id, id),
    CONSTRAINT policies_server_agent_key UNIQUE NULLS NOT DISTINCT (server_id, agent_id),
    CONSTRAINT policies_server_fkey FOREIGN KEY (org_id, server_id)
        REFERENCES servers (org_id, id) ON DELETE CASCADE,
    CONSTRAINT policies_agent_fkey FOREIGN KEY (org_id, agent_id)
        REFERENCES agents (org_id, id) ON DELETE CASCADE,
    CONSTRAINT policies_updated_by_fkey FOREIGN KEY (draft_updated_by)
        REFERENCES users (id) ON DELETE SET NULL
);

CREATE TABLE policy_versions (
    id              uuid        NOT NULL,
    org_id          uuid        NOT NULL,
    policy_id       uuid        NOT NULL,
    version         integer     NOT NULL,
    document        jsonb       NOT NULL,
    -- {"tool name": "definition hash"} as reviewed when this version was published; a tool whose
    -- hash differs later is a "changed tool" for changed_tools.
    reviewed_tools  jsonb       NOT NULL DEFAULT '{}',
    -- 'enforced' is what the gateway applies; 'shadow' is evaluated beside it and only recorded.
    mode            text        NOT NULL DEFAULT 'enforced',
    published_at    timestamptz NOT NULL DEFAULT now(),
    published_by    uuid,
    CONSTRAINT policy_versions_pkey PRIMARY KEY (id),
    CONSTRAINT policy_versions_policy_version_key UNIQUE (policy_id, version),
    CONSTRAINT policy_versions_policy_fkey FOREIGN KEY (org_id, policy_id)
        REFERENCES policies (org_id, id) ON DELETE CASCADE,
    CONSTRAINT policy_versions_published_by_fkey FOREIGN KEY (published_by)
        REFERENCES users (id) ON DELETE SET NULL,
    CONSTRAINT policy_versions_version_positive CHECK (version > 0),
    CONSTRAINT policy_versions_mode_check CHECK (mode IN ('enforced', 'shadow'))
);

-- Which version is enforced (and which is shadowed) for each policy. Rolling back points
-- enforced_version_id at an older row; versions themselves never change.
CREATE TABLE policy_heads (
    policy_id            uuid NOT NULL,
    org_id               uuid NOT NULL,
    enforced_version_id  uuid,
    shadow_version_id    uuid,
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT policy_heads_pkey PRIMARY KEY (policy_id),
    CONSTRAINT policy_heads_policy_fkey FOREIGN KEY (org_id, policy_id)
        REFERENCES policies (org_id, id) ON DELETE CASCADE,
    CONSTRAINT policy_heads_enforced_fkey FOREIGN KEY (enforced_version_id)
        REFERENCES policy_versions (id) ON DELETE SET NULL,
    CONSTRAINT policy_heads_shadow_fkey FOREIGN KEY (shadow_version_id)
        REFERENCES policy_versions (id) ON DELETE SET NULL
);

CREATE TABLE approvals (
    id                 uuid        NOT NULL,
    org_id             uuid        NOT NULL,
    server_id          uuid        NOT NULL,
    agent_id           uuid        NOT NULL,
    session            text        NOT NULL,
    tool               text        NOT NULL,
    arguments          jsonb       NOT NULL,
    -- SHA-256 (hex) of the canonical arguments: the approval is bound to this exact call.
    arguments_hash     text        NOT NULL,
    policy_version_id  uuid,
    rule               text        NOT NULL,
    reason             text,
    status             text        NOT NULL DEFAULT 'pending',
    requested_at       timestamptz NOT NULL DEFAULT now(),
    expires_at         timestamptz NOT NULL,
    decided_at         timestamptz,
    decided_by         uuid,
    note               text,
    -- The gateway process holding the client's request, so a dead holder's approvals can be
    -- marked abandoned.
    holder             text        NOT NULL,
    CONSTRAINT approvals_pkey PRIMARY KEY (id),
    CONSTRAINT approvals_server_fkey FOREIGN KEY (org_id, server_id)
        REFERENCES servers (org_id, id) ON DELETE CASCADE,
    CONSTRAINT approvals_agent_fkey FOREIGN KEY (org_id, agent_id)
        REFERENCES agents (org_id, id) ON DELETE CASCADE,
    CONSTRAINT approvals_version_fkey FOREIGN KEY (policy_version_id)
        REFERENCES policy_versions (id) ON DELETE SET NULL,
    CONSTRAINT approvals_decided_by_fkey FOREIGN KEY (decided_by)
        REFERENCES users (id) ON DELETE SET NULL,
    CONSTRAINT approvals_status_check
        CHECK (status IN ('pending', 'approved', 'denied', 'expired', 'abandoned', 'used')),
    CONSTRAINT approvals_expiry_check CHECK (expires_at > requested_at)
);
CREATE INDEX approvals_org_status_idx ON approvals (org_id, status, requested_at DESC);
CREATE INDEX approvals_pending_holder_idx ON approvals (holder) WHERE status = 'pending';

CREATE TABLE webhook_deliveries (
    id               uuid        NOT NULL,
    org_id           uuid        NOT NULL,
    approval_id      uuid,
    url              text        NOT NULL,
    payload          jsonb       NOT NULL,
    status           text        NOT NULL DEFAULT 'pending',
    attempts         integer     NOT NULL DEFAULT 0,
    last_error       text,
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    created_at       timestamptz NOT NULL DEFAULT now(),
    delivered_at     timestamptz,
    CONSTRAINT webhook_deliveries_pkey PRIMARY KEY (id),
    CONSTRAINT webhook_deliveries_org_fkey FOREIGN KEY (org_id)
        REFERENCES organizations (id) ON DELETE CASCADE,
    CONSTRAINT webhook_deliveries_approval_fkey FOREIGN KEY (approval_id)
        REFERENCES approvals (id) ON DELETE SET NULL,
    CONSTRAINT webhook_deliveries_status_check CHECK (status IN ('pending', 'delivered', 'failed'))
);
CREATE INDEX webhook_deliveries_due_idx ON webhook_deliveries (next_attempt_at) WHERE status = 'pending';
CREATE INDEX webhook_deliveries_org_idx ON webhook_deliveries (org_id, created_at DESC);

-- Every gateway decision. Ids are UUIDv7 (time-ordered), so (org_id, at, id) gives a stable
-- keyset order. server_id and agent_id carry no foreign key on purpose: the log outlives the
-- servers and agents it mentions, and inserts stay cheap.
CREATE TABLE activity_events (
    id                 uuid        NOT NULL,
    org_id             uuid        NOT NULL,
    at                 timestamptz NOT NULL,
    server_id          uuid,
    agent_id           uuid,
    agent_name         text,
    session            text,
    method             text        NOT NULL,
    tool               text,
    argument_keys      text[]      NOT NULL DEFAULT '{}',
    -- Only when the organization stores argument values, with secret-looking keys redacted.
    arguments          jsonb,
    decision           text        NOT NULL,
    rule               text,
    reason             text,
    policy_id          uuid,
    policy_version     integer,
    latency_ms         double precision,
    upstream_status    integer,
    -- Where a shadow version would have decided differently: {"version", "decision", "rule"}.
    shadow             jsonb,
    CONSTRAINT activity_events_pkey PRIMARY KEY (id),
    CONSTRAINT activity_events_org_fkey FOREIGN KEY (org_id)
        REFERENCES organizations (id) ON DELETE CASCADE,
    CONSTRAINT activity_events_decision_check CHECK (decision IN (
        'allow', 'deny', 'hidden', 'rate_limited', 'approval_requested', 'approval_granted',
        'approval_denied', 'approval_expired', 'approval_abandoned', 'upstream_error'))
);
CREATE INDEX activity_events_org_at_idx ON activity_events (org_id, at DESC, id DESC);
CREATE INDEX activity_events_org_server_idx ON activity_events (org_id, server_id, at DESC, id DESC);
CREATE INDEX activity_events_org_agent_idx ON activity_events (org_id, agent_id, at DESC, id DESC);
CREATE INDEX activity_events_org_tool_idx ON activity_events (org_id, tool, at DESC, id DESC);
CREATE INDEX activity_events_org_decision_idx ON activity_events (org_id, decision, at DESC, id DESC);

-- What people did in the console: sign-ins, policy changes, publishes, keys, approvals.
CREATE TABLE audit_log (
    id          uuid        NOT NULL,
    org_id      uuid,
    at          timestamptz NOT NULL DEFAULT now(),
    actor_id    uuid,
    action      text        NOT NULL,
    target_type text,
    target_id   uuid,
    before      jsonb,
    after       jsonb,
    ip          inet,
    CONSTRAINT audit_log_pkey PRIMARY KEY (id),
    CONSTRAINT audit_log_org_fkey FOREIGN KEY (org_id) REFERENCES organizations (id) ON DELETE CASCADE,
    CONSTRAINT audit_log_actor_fkey FOREIGN KEY (actor_id) REFERENCES users (id) ON DELETE SET NULL
);
CREATE INDEX audit_log_org_at_idx ON audit_log (org_id, at DESC, id DESC);

-- Gateways reload a policy within a second of a publish, and drop a revoked key at once.
CREATE FUNCTION portcullis_notify_policy() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('portcullis_policy', NEW.policy_id::text);
    RETURN NEW;
END $$;
CREATE TRIGGER policy_heads_notify AFTER INSERT OR UPDATE ON policy_heads
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_policy();

CREATE FUNCTION portcullis_notify_agent() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('portcullis_agent', COALESCE(NEW.id, OLD.id)::text);
    RETURN COALESCE(NEW, OLD);
END $$;
CREATE TRIGGER agents_notify AFTER UPDATE OR DELETE ON agents
    FOR EACH ROW EXECUTE FUNCTION portcullis_notify_agent();

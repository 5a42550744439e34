//! Prometheus metrics, served as text at `/metrics` on the admin listener.
//!
//! Labels stay low-cardinality: MCP methods outside a fixed list count as `other`, decisions
//! are the ten of the activity log, and no label carries a tool, server or agent name.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// MCP methods counted under their own name; any other is `other`.
const METHODS: [&str; 14] = [
    "initialize",
    "ping",
    "tools/list",
    "tools/call",
    "resources/list",
    "resources/read",
    "resources/templates/list",
    "prompts/list",
    "prompts/get",
    "completion/complete",
    "logging/setLevel",
    "notifications/initialized",
    "notifications/cancelled",
    "response",
];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MethodLabel {
    pub method: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DecisionLabel {
    pub decision: String,
}

pub struct Metrics {
    registry: Registry,
    requests: Family<MethodLabel, Counter>,
    decisions: Family<DecisionLabel, Counter>,
    upstream_latency: Histogram,
    policy_reloads: Counter,
    approvals_held: Gauge,
    activity_queue: Gauge,
    policies_loaded: Gauge,
    dropped_events: Counter<u64, AtomicU64>,
    spill_bytes: Gauge,
    redis_up: Gauge,
    limits_fallbacks: Counter,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Metrics(..)")
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let mut registry = Registry::with_prefix("portcullis");
        let requests = Family::<MethodLabel, Counter>::default();
        registry.register(
            "mcp_requests",
            "MCP messages received from clients, by method",
            requests.clone(),
        );
        let decisions = Family::<DecisionLabel, Counter>::default();
        registry.register(
            "decisions",
            "Gateway decisions (the activity log's), by outcome",
            decisions.clone(),
        );
        // 1 ms … ~33 s.
        let upstream_latency = Histogram::new(
            prometheus_client::metrics::histogram::exponential_buckets(0.001, 2.0, 16),
        );
        registry.register(
            "upstream_latency_seconds",
            "Time from deciding a tools/call to the upstream's answer (headers of a stream)",
            upstream_latency.clone(),
        );
        let policy_reloads = Counter::default();
        registry.register(
            "policy_reloads",
            "Policies reloaded after a publish or removal",
            policy_reloads.clone(),
        );
        let approvals_held = Gauge::default();
        registry.register(
            "approvals_held",
            "Calls this process holds for a person's approval",
            approvals_held.clone(),
        );
        let activity_queue = Gauge::default();
        registry.register(
            "activity_queue_depth",
            "Activity events waiting to be written",
            activity_queue.clone(),
        );
        let policies_loaded = Gauge::default();
        registry.register(
            "policies_loaded",
            "Published policies in this process's cache",
            policies_loaded.clone(),
        );
        let dropped_events = Counter::<u64, AtomicU64>::default();
        registry.register(
            "activity_events_dropped",
            "Activity events dropped because the queue was full",
            dropped_events.clone(),
        );
        let spill_bytes = Gauge::default();
        registry.register(
            "activity_spill_bytes",
            "Bytes of activity events waiting in the spill file for the database",
            spill_bytes.clone(),
        );
        let redis_up = Gauge::default();
        registry.register(
            "limits_redis_up",
            "1 while rate limits are counted in Redis (shared by the gateways), 0 when Redis is not configured or unreachable",
            redis_up.clone(),
        );
        let limits_fallbacks = Counter::default();
        registry.register(
            "limits_fallback_decisions",
            "Decisions whose limits were counted in this process (or refused with --limits-fail-closed) because Redis was unreachable",
            limits_fallbacks.clone(),
        );
        Metrics {
            redis_up,
            limits_fallbacks,
            spill_bytes,
            registry,
            requests,
            decisions,
            upstream_latency,
            policy_reloads,
            approvals_held,
            activity_queue,
            policies_loaded,
            dropped_events,
        }
    }

    pub fn request(&self, method: &str) {
        let method = if METHODS.contains(&method) {
            method
        } else {
            "other"
        };
        self.requests
            .get_or_create(&MethodLabel {
                method: method.to_owned(),
            })
            .inc();
    }

    /// One activity event: its decision, and its upstream latency when it has one.
    pub fn decision(&self, decision: &str, latency_ms: Option<f64>) {
        self.decisions
            .get_or_create(&DecisionLabel {
                decision: decision.to_owned(),
            })
            .inc();
        if let Some(ms) = latency_ms {
            self.upstream_latency.observe(ms / 1000.0);
        }
    }

    pub fn policy_reloaded(&self) {
        self.policy_reloads.inc();
    }

    pub fn set_redis_up(&self, up: bool) {
        self.redis_up.set(i64::from(up));
    }

    pub fn limits_fallback(&self) {
        self.limits_fallbacks.inc();
    }

    pub fn event_dropped(&self) {
        self.dropped_events.inc();
    }

    /// The text exposition, with the gauges read now.
    pub fn render(
        &self,
        approvals_held: usize,
        activity_queue: usize,
        policies: usize,
        spill_bytes: u64,
    ) -> String {
        let gauge = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.spill_bytes
            .set(i64::try_from(spill_bytes).unwrap_or(i64::MAX));
        self.approvals_held.set(gauge(approvals_held));
        self.activity_queue.set(gauge(activity_queue));
        self.policies_loaded.set(gauge(policies));
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &self.registry).is_err() {
            out.clear();
        }
        out
    }
}

//! Registered servers as the gateway reaches them: URL and decrypted credential headers (or a
//! command and its environment), cached briefly, and one shared HTTP client (connection reuse
//! across every upstream).
//!
//! Streamable HTTP upstreams need no state here. Legacy HTTP+SSE and stdio upstreams are one
//! long-lived connection (a stream, a process) each: [`Channels`] keeps one per (server,
//! agent), started on first use, replaced when it ended or its settings changed, and closed
//! after `idle_timeout` without use (a stdio server: stdin closed, then SIGTERM, then SIGKILL).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_mcp::upstream::{
    ChannelClient, Client, StdioConfig, StreamableHttpClient, UpstreamConfig, UpstreamError,
};
use portcullis_store::crypto::Sealer;
use portcullis_store::{PgPool, servers};
use uuid::Uuid;

/// How long a server's settings are kept before they are read again.
const TTL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Upstreams {
    http: portcullis_mcp::upstream::HttpClients,
    credentials: Sealer,
    timeout: Duration,
    max_body_bytes: usize,
    allow_private: bool,
    allow_stdio: bool,
    channels: Arc<Channels>,
    cache: Mutex<HashMap<Uuid, (Arc<Upstream>, Instant)>>,
    /// Counts invalidations: a lookup that read the database before one does not cache what it
    /// read (it may be the settings of a server deleted meanwhile).
    generation: std::sync::atomic::AtomicU64,
}

/// One upstream server.
#[derive(Debug)]
pub struct Upstream {
    pub server_id: Uuid,
    pub org_id: Uuid,
    pub name: String,
    pub transport: Transport,
    /// The server speaks only the stateless revision (2026-07-28, found at registration): every
    /// request is stamped with the envelope and headers, and handshake clients are translated.
    pub stateless: bool,
    /// A hash of the settings, secrets included (never shown): a channel started with other
    /// settings is replaced.
    fingerprint: u64,
    channels: Arc<Channels>,
}

/// How the gateway reaches a server.
#[derive(Debug, Clone)]
pub enum Transport {
    /// Streamable HTTP: one exchange per message.
    Http(StreamableHttpClient),
    /// Legacy HTTP+SSE (2024-11-05): the client points at the SSE URL.
    Sse(StreamableHttpClient),
    /// A local command (`--allow-stdio-servers` only).
    Stdio(StdioConfig),
}

impl Upstream {
    /// The connection `agent` uses: the shared HTTP client, or the agent's own channel
    /// (connected, or the process started, on first use).
    pub async fn connect(&self, agent_id: Uuid) -> Result<Client, UpstreamError> {
        match &self.transport {
            Transport::Http(client) => Ok(Client::Http(client.clone())),
            Transport::Sse(client) => {
                let fingerprint = self.fingerprint;
                let client = client.clone();
                let server = self.server_id;
                self.channels
                    .get_or_start((self.server_id, agent_id), fingerprint, || async move {
                        let channel = client.connect_legacy_sse().await?;
                        tracing::info!(%server, agent = %agent_id, "legacy SSE upstream connected");
                        Ok(channel)
                    })
                    .await
                    .map(Client::Channel)
            }
            Transport::Stdio(config) => {
                let fingerprint = self.fingerprint;
                let config = config.clone();
                let server = self.server_id;
                let label = format!("{} ({})", self.name, self.server_id);
                self.channels
                    .get_or_start((self.server_id, agent_id), fingerprint, || async move {
                        let (channel, pid) =
                            portcullis_mcp::upstream::spawn_channel(&config, &label)?;
                        tracing::info!(
                            %server,
                            agent = %agent_id,
                            program = %config.command.first().map(String::as_str).unwrap_or(""),
                            pid = pid.unwrap_or(0),
                            "stdio server started"
                        );
                        Ok(channel)
                    })
                    .await
                    .map(Client::Channel)
            }
        }
    }
}

type ChannelKey = (Uuid, Uuid);
type ChannelSlot = Arc<tokio::sync::Mutex<Option<(u64, ChannelClient)>>>;

/// Long-lived upstream connections by (server, agent).
#[derive(Debug)]
pub struct Channels {
    slots: Mutex<HashMap<ChannelKey, ChannelSlot>>,
    idle_timeout: Duration,
}

impl Channels {
    pub fn new(idle_timeout: Duration) -> Arc<Channels> {
        Arc::new(Channels {
            slots: Mutex::new(HashMap::new()),
            idle_timeout,
        })
    }

    /// The live channel of `key` started with the same settings, or a new one from `start`
    /// (an ended one, or one with other settings, is closed first).
    async fn get_or_start<F, Fut>(
        &self,
        key: ChannelKey,
        fingerprint: u64,
        start: F,
    ) -> Result<ChannelClient, UpstreamError>
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = Result<ChannelClient, UpstreamError>>,
    {
        // One start at a time per (server, agent); other keys are not held up. A slot removed
        // (closed as idle) while this waited for it is left for the one now in the map.
        let (slot, mut guard) = loop {
            let slot = self
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .entry(key)
                .or_default()
                .clone();
            let guard = slot.clone().lock_owned().await;
            let current = self
                .slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .get(&key)
                .is_some_and(|s| Arc::ptr_eq(s, &slot));
            if current {
                break (slot, guard);
            }
        };
        drop(slot);
        let slot = &mut *guard;
        if let Some((current, channel)) = &*slot {
            if *current == fingerprint && !channel.is_closed() {
                return Ok(channel.clone());
            }
            let old = channel.clone();
            tokio::spawn(async move { old.close().await });
        }
        *slot = None;
        let channel = start().await?;
        *slot = Some((fingerprint, channel.clone()));
        Ok(channel)
    }

    /// Closes the channels idle longer than the idle timeout (and forgets ended ones).
    pub async fn close_idle(&self) -> usize {
        self.close_where(|channel| channel.is_closed() || channel.idle_for() >= self.idle_timeout)
            .await
    }

    /// Closes every channel (at shutdown).
    pub async fn close_all(&self) -> usize {
        self.close_where(|_| true).await
    }

    async fn close_where(&self, doomed: impl Fn(&ChannelClient) -> bool) -> usize {
        let slots: Vec<(ChannelKey, ChannelSlot)> = self
            .slots
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(k, v)| (*k, v.clone()))
            .collect();
        let mut closing = Vec::new();
        for (key, slot) in slots {
            // A slot being started is busy, not idle.
            let Ok(mut guard) = slot.try_lock() else {
                continue;
            };
            let Some((_, channel)) = &*guard else {
                continue;
            };
            if !doomed(channel) {
                continue;
            }
            let channel = channel.clone();
            *guard = None;
            // Out of the map before the slot is released, so no caller starts a process in a
            // slot nobody can see.
            self.slots
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key);
            drop(guard);
            if !channel.is_closed() {
                tracing::info!(server = %key.0, agent = %key.1, "closing an idle upstream connection");
            }
            closing.push(async move { channel.close().await });
        }
        let n = closing.len();
        futures_util::future::join_all(closing).await;
        n
    }

    /// Channels kept now (started and not yet closed).
    pub fn len(&self) -> usize {
        self.slots.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Why an upstream cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamLookupError {
    #[error("no such server")]
    NotFound,
    #[error("this server's transport ({0}) is not served by this gateway")]
    Unsupported(String),
    #[error(
        "this server runs a local command; this gateway was started without --allow-stdio-servers"
    )]
    StdioDisabled,
    #[error("the server's credentials cannot be decrypted (was the secret key changed?)")]
    Credentials,
    #[error("{0} (--allow-private-upstreams allows it)")]
    Private(String),
    #[error("the server's URL is not valid: {0}")]
    Url(String),
    #[error(transparent)]
    Store(#[from] portcullis_store::Error),
}

impl Upstreams {
    pub fn new(
        http: portcullis_mcp::upstream::HttpClients,
        credentials: Sealer,
        timeout: Duration,
        max_body_bytes: usize,
        allow_private: bool,
        allow_stdio: bool,
        channels: Arc<Channels>,
    ) -> Self {
        Upstreams {
            http,
            credentials,
            timeout,
            max_body_bytes,
            allow_private,
            allow_stdio,
            channels,
            cache: Mutex::new(HashMap::new()),
            generation: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// Drops the cached settings of `server` (of every server with `None`).
    pub fn forget(&self, server: Option<Uuid>) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        match server {
            Some(id) => {
                cache.remove(&id);
            }
            None => cache.clear(),
        }
    }

    /// The organization's server, ready to call.
    pub async fn get(
        &self,
        db: &PgPool,
        org_id: Uuid,
        server_id: Uuid,
    ) -> Result<Arc<Upstream>, UpstreamLookupError> {
        if let Some((up, at)) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&server_id)
            && at.elapsed() < TTL
            && up.org_id == org_id
        {
            return Ok(up.clone());
        }
        let generation = self.generation.load(std::sync::atomic::Ordering::SeqCst);
        let server = match servers::get(db, org_id, server_id).await {
            Ok(s) => s,
            Err(portcullis_store::Error::NotFound) => return Err(UpstreamLookupError::NotFound),
            Err(e) => return Err(e.into()),
        };
        let secrets = servers::secrets(db, org_id, server_id).await?;
        let open = |sealed: Option<Vec<u8>>| -> Result<Vec<(String, String)>, UpstreamLookupError> {
            let Some(sealed) = sealed else {
                return Ok(Vec::new());
            };
            let plain = self
                .credentials
                .open(&sealed, server_id.as_bytes())
                .ok_or(UpstreamLookupError::Credentials)?;
            let map: HashMap<String, String> =
                serde_json::from_slice(&plain).map_err(|_| UpstreamLookupError::Credentials)?;
            let mut pairs: Vec<(String, String)> = map.into_iter().collect();
            pairs.sort();
            Ok(pairs)
        };
        let headers = open(secrets.headers_enc)?;
        let env = open(secrets.env_enc)?;
        let fingerprint = {
            use std::hash::{Hash, Hasher};
            let mut hasher = std::collections::hash_map::DefaultHasher::new();
            (
                &server.transport,
                &server.url,
                server.command.as_ref().map(|c| c.to_string()),
            )
                .hash(&mut hasher);
            (&headers, &env).hash(&mut hasher);
            hasher.finish()
        };
        let transport = match (server.transport.as_str(), &server.url, &server.command) {
            ("stdio", _, Some(command)) => {
                if !self.allow_stdio {
                    return Err(UpstreamLookupError::StdioDisabled);
                }
                let command: Vec<String> = serde_json::from_value(command.clone())
                    .map_err(|_| UpstreamLookupError::Unsupported("stdio".into()))?;
                Transport::Stdio(StdioConfig {
                    command,
                    env,
                    timeout: self.timeout,
                    max_message_bytes: self.max_body_bytes,
                })
            }
            (kind @ ("streamable_http" | "sse"), Some(url), _) => {
                let url =
                    url::Url::parse(url).map_err(|e| UpstreamLookupError::Url(e.to_string()))?;
                if !self.allow_private {
                    // Names are checked after resolution, on every connection; literals here.
                    portcullis_mcp::upstream::addresses::check_literal(&url)
                        .map_err(UpstreamLookupError::Private)?;
                }
                let mut config = UpstreamConfig::new(url).timeout(self.timeout);
                config.max_body_bytes = self.max_body_bytes;
                // One bound for a message, whether it comes as a JSON body or as an SSE event.
                config.max_event_bytes = self.max_body_bytes;
                for (name, value) in headers {
                    config = config.header(name, value);
                }
                let client = StreamableHttpClient::new(self.http.clone(), config);
                if kind == "sse" {
                    Transport::Sse(client)
                } else {
                    Transport::Http(client)
                }
            }
            (other, _, _) => return Err(UpstreamLookupError::Unsupported(other.to_owned())),
        };
        let upstream = Arc::new(Upstream {
            server_id,
            org_id,
            name: server.name,
            stateless: matches!(transport, Transport::Http(_))
                && server.protocol_version.as_deref() == Some(portcullis_mcp::stateless::VERSION),
            transport,
            fingerprint,
            channels: self.channels.clone(),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            cache.insert(server_id, (upstream.clone(), Instant::now()));
        }
        Ok(upstream)
    }
}

//! Registered servers as the gateway reaches them: URL and decrypted credential headers,
//! cached briefly, and one shared HTTP client (connection reuse across every upstream).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use portcullis_mcp::upstream::{StreamableHttpClient, UpstreamConfig};
use portcullis_store::crypto::Sealer;
use portcullis_store::{PgPool, servers};
use uuid::Uuid;

/// How long a server's settings are kept before they are read again.
const TTL: Duration = Duration::from_secs(10);

#[derive(Debug)]
pub struct Upstreams {
    http: reqwest::Client,
    credentials: Sealer,
    timeout: Duration,
    max_body_bytes: usize,
    allow_private: bool,
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
    pub client: StreamableHttpClient,
}

/// Why an upstream cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamLookupError {
    #[error("no such server")]
    NotFound,
    #[error("this server's transport ({0}) is not served by this gateway yet")]
    Unsupported(String),
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
        http: reqwest::Client,
        credentials: Sealer,
        timeout: Duration,
        max_body_bytes: usize,
        allow_private: bool,
    ) -> Self {
        Upstreams {
            http,
            credentials,
            timeout,
            max_body_bytes,
            allow_private,
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
        let Some(url) = server.url.clone() else {
            return Err(UpstreamLookupError::Unsupported(server.transport));
        };
        if server.transport != "streamable_http" {
            return Err(UpstreamLookupError::Unsupported(server.transport));
        }
        let secrets = servers::secrets(db, org_id, server_id).await?;
        let headers = match secrets.headers_enc {
            None => Vec::new(),
            Some(sealed) => {
                let plain = self
                    .credentials
                    .open(&sealed, server_id.as_bytes())
                    .ok_or(UpstreamLookupError::Credentials)?;
                let map: HashMap<String, String> =
                    serde_json::from_slice(&plain).map_err(|_| UpstreamLookupError::Credentials)?;
                let mut headers: Vec<(String, String)> = map.into_iter().collect();
                headers.sort();
                headers
            }
        };
        let url = url::Url::parse(&url).map_err(|e| UpstreamLookupError::Url(e.to_string()))?;
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
        let upstream = Arc::new(Upstream {
            server_id,
            org_id,
            name: server.name,
            client: StreamableHttpClient::new(self.http.clone(), config),
        });
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if self.generation.load(std::sync::atomic::Ordering::SeqCst) == generation {
            cache.insert(server_id, (upstream.clone(), Instant::now()));
        }
        Ok(upstream)
    }
}

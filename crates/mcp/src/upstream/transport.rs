//! The HTTP client of upstream calls: hyper's pooled HTTP/1.1 client, TLS by rustls with the
//! platform's certificate verifier, `TCP_NODELAY`, a connect timeout, no redirects, and (unless
//! private upstreams are allowed) only public addresses after DNS resolution.
//!
//! Why not reqwest, which the gateway used before: its per-request layers (redirect policy,
//! retries, URL conversions) parsed the upstream URL twice per call and cost about 14 % of a
//! proxied call's user-space instructions (callgrind on the gateway benchmark). A transport
//! that only ever POSTs to a URL it already holds needs none of them. The trust decisions are
//! the same as before: the same verifier (`rustls-platform-verifier`, the system's roots), the
//! same resolver check, no redirects followed (a 3xx is an answer like any other).

use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::connect::dns::Name;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::addresses::lookup_public;

type Https = hyper_rustls::HttpsConnector<HttpConnector<Resolver>>;

/// How long opening a connection may take in all: DNS, TCP (each address) and TLS.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A pooled client for upstream calls. Cheap to clone; clones share the pool.
#[derive(Clone)]
pub struct HttpClient {
    client: Client<Bounded, Full<Bytes>>,
}

/// What [`HttpClient::send`] answers.
pub type HttpResponse = http::Response<hyper::body::Incoming>;

impl HttpClient {
    /// A client that may reach any address (tests, self-hosted setups with
    /// `--allow-private-upstreams`).
    pub fn new() -> Result<HttpClient, String> {
        HttpClient::guarded(true)
    }

    /// A client refusing private addresses (after DNS resolution) unless `allow_private`.
    /// Fails only when the TLS stack cannot start (no usable certificate verifier).
    pub fn guarded(allow_private: bool) -> Result<HttpClient, String> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS: {e}"))?;
        let tls = rustls_platform_verifier::BuilderVerifierExt::with_platform_verifier(tls)
            .map_err(|e| format!("TLS certificate verifier: {e}"))?
            .with_no_client_auth();
        let mut http = HttpConnector::new_with_resolver(Resolver {
            public_only: !allow_private,
        });
        // https URLs are handed to the TLS layer; the connector must not refuse them.
        http.enforce_http(false);
        http.set_nodelay(true);
        http.set_connect_timeout(Some(CONNECT_TIMEOUT));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(http);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_timer(TokioTimer::new())
            .build(Bounded(https));
        Ok(HttpClient { client })
    }

    /// Sends `request` (its `Host` is set from the URI); the answer once its headers arrived.
    pub async fn send(
        &self,
        request: http::Request<Full<Bytes>>,
    ) -> Result<HttpResponse, hyper_util::client::legacy::Error> {
        self.client.request(request).await
    }
}

impl std::fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HttpClient")
    }
}

/// The connector with a bound on the whole connection setup. The TCP connector bounds each
/// connect attempt only; a name that never resolves, or a peer that accepts TCP and never
/// finishes TLS, would otherwise hold a connection attempt (hyper finishes one in the
/// background after the call that started it has ended) for ever.
#[derive(Clone)]
struct Bounded(Https);

impl tower_service::Service<http::Uri> for Bounded {
    type Response = <Https as tower_service::Service<http::Uri>>::Response;
    type Error = Box<dyn std::error::Error + Send + Sync>;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.0.poll_ready(cx)
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        let connecting = self.0.call(uri);
        Box::pin(async move {
            match tokio::time::timeout(CONNECT_TIMEOUT, connecting).await {
                Ok(connected) => connected,
                Err(_) => Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connection setup timed out",
                )
                .into()),
            }
        })
    }
}

/// Resolves upstream host names with the system resolver, keeping only public addresses when
/// asked. (A URL with an IP address is not resolved: registration checks those.)
#[derive(Debug, Clone, Copy)]
struct Resolver {
    public_only: bool,
}

impl tower_service::Service<Name> for Resolver {
    type Response = std::vec::IntoIter<SocketAddr>;
    type Error = std::io::Error;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, name: Name) -> Self::Future {
        let public_only = self.public_only;
        Box::pin(async move {
            let host = name.as_str();
            let addresses = if public_only {
                lookup_public(host).await?
            } else {
                tokio::net::lookup_host((host, 0)).await?.collect()
            };
            Ok(addresses.into_iter())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::str::FromStr as _;
    use tower_service::Service as _;

    #[tokio::test]
    async fn names_that_resolve_only_to_private_addresses_are_refused_unless_allowed() {
        let localhost = || Name::from_str("localhost").unwrap();
        let err = Resolver { public_only: true }
            .call(localhost())
            .await
            .expect_err("refused");
        assert!(
            err.to_string()
                .contains("localhost resolves only to private addresses"),
            "{err}"
        );
        let allowed: Vec<SocketAddr> = Resolver { public_only: false }
            .call(localhost())
            .await
            .unwrap()
            .collect();
        assert!(allowed.iter().all(|a| a.ip().is_loopback()) && !allowed.is_empty());
    }

    #[tokio::test]
    async fn a_guarded_client_says_why_it_cannot_reach_a_private_name() {
        let client = HttpClient::guarded(false).unwrap();
        let request = http::Request::builder()
            .uri("http://localhost:9/mcp")
            .body(Full::new(Bytes::new()))
            .unwrap();
        let err = client.send(request).await.expect_err("refused");
        let mut text = err.to_string();
        let mut source = std::error::Error::source(&err);
        while let Some(e) = source {
            text = e.to_string();
            source = e.source();
        }
        assert!(
            text.contains("resolves only to private addresses"),
            "{text}"
        );
    }
}

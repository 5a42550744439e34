//! Delivers approval webhooks: a JSON POST per new approval (with a `text` field, so a Slack
//! incoming webhook shows it as it is), off the request path, retried with exponential backoff
//! (1 s, 2 s, 4 s … capped at an hour; given up after 8 attempts). Any gateway process may
//! deliver any queued webhook: deliveries are claimed with `FOR UPDATE SKIP LOCKED` and a lease.

use std::sync::{Arc, Weak};
use std::time::Duration;

use portcullis_store::webhooks;

use crate::Gateway;

/// Attempts before a delivery is given up.
pub const MAX_ATTEMPTS: i32 = 8;
/// The bound on one attempt (and the lease on a claimed delivery, with margin).
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(10);

/// The wait before attempt `attempts + 1`.
pub fn backoff(base: Duration, attempts: i32) -> Duration {
    let factor = 2u32.saturating_pow(u32::try_from(attempts).unwrap_or(0).min(20));
    (base * factor).min(Duration::from_secs(3600))
}

/// Starts the delivery loop; notify the returned handle to deliver at once.
pub fn spawn(gateway: &Arc<Gateway>) -> Arc<tokio::sync::Notify> {
    let kick = Arc::new(tokio::sync::Notify::new());
    let weak: Weak<Gateway> = Arc::downgrade(gateway);
    let http =
        portcullis_mcp::upstream::guarded_client_builder(gateway.config.allow_private_upstreams)
            .timeout(ATTEMPT_TIMEOUT)
            .build();
    let http = match http {
        Ok(http) => http,
        Err(e) => {
            tracing::error!(error = %e, "cannot build the webhook client: webhooks are not delivered");
            return kick;
        }
    };
    let base = gateway.config.webhook_retry_base;
    let woken = kick.clone();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                () = woken.notified() => {}
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let Some(gw) = weak.upgrade() else { return };
            let due =
                match webhooks::claim_due(&gw.db, 10, ATTEMPT_TIMEOUT.as_secs_f64() * 3.0).await {
                    Ok(due) => due,
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot read the webhook queue");
                        continue;
                    }
                };
            for delivery in due {
                let outcome = match http
                    .post(&delivery.url)
                    .header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(delivery.payload.to_string())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => Ok(()),
                    Ok(r) => Err(format!("answered HTTP {}", r.status().as_u16())),
                    Err(e) if e.is_timeout() => {
                        Err(format!("timed out after {} s", ATTEMPT_TIMEOUT.as_secs()))
                    }
                    Err(e) => Err(format!("could not connect: {}", plain(&e))),
                };
                let recorded = match outcome {
                    Ok(()) => webhooks::delivered(&gw.db, delivery.id).await,
                    Err(error) => {
                        let retry = (delivery.attempts + 1 < MAX_ATTEMPTS)
                            .then(|| backoff(base, delivery.attempts).as_secs_f64());
                        tracing::warn!(delivery = %delivery.id, %error, attempts = delivery.attempts + 1, "webhook delivery failed");
                        webhooks::attempt_failed(&gw.db, delivery.id, &error, retry).await
                    }
                };
                if let Err(e) = recorded {
                    tracing::warn!(error = %e, "cannot record a webhook delivery");
                }
            }
        }
    });
    kick
}

/// The innermost cause, without the URL (which may hold a token).
fn plain(error: &reqwest::Error) -> String {
    let mut source: &dyn std::error::Error = error;
    while let Some(inner) = source.source() {
        source = inner;
    }
    source.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_an_hour() {
        let base = Duration::from_secs(1);
        assert_eq!(backoff(base, 0), Duration::from_secs(1));
        assert_eq!(backoff(base, 3), Duration::from_secs(8));
        assert_eq!(backoff(base, 30), Duration::from_secs(3600));
    }
}

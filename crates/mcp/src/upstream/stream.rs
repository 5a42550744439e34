//! A stream of SSE events read from an upstream response.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use serde_json::Value;
use tokio::time::{Instant, Sleep};

use super::UpstreamError;
use crate::jsonrpc::RequestId;
use crate::sse::{SseDecoder, SseEvent};

type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, UpstreamError>> + Send>>;

/// The events of an SSE response, decoded as bytes arrive: a
/// `Stream<Item = Result<SseEvent, UpstreamError>>`.
///
/// - One event larger than the limit yields [`UpstreamError::TooLarge`] (after the events
///   before it), then the stream ends.
/// - With an idle timeout, waiting longer than it for the next bytes yields
///   [`UpstreamError::Timeout`], then the stream ends. Any bytes count, so `:` keep-alive
///   comments keep a stream open. The clock runs only while the stream waits on the upstream,
///   not while the consumer is busy. Streams answering a POST start with the call timeout;
///   the GET stream starts with none (it may be quiet for hours).
/// - A broken connection yields [`UpstreamError::Connect`]; resume with
///   [`last_event_id`](Self::last_event_id) if the upstream supports it.
/// - An event cut off by the end of the stream is discarded (as WHATWG says).
pub struct EventStream {
    bytes: ByteStream,
    /// Boxed: the decoder's state is large next to the rest, and streams are moved around.
    decoder: Box<SseDecoder>,
    max_event_bytes: usize,
    idle_timeout: Option<Duration>,
    idle: Option<Pin<Box<Sleep>>>,
    waiting: bool,
    error: Option<UpstreamError>,
    done: bool,
}

impl EventStream {
    /// Decodes a stream of bytes, bounding one event to `max_event_bytes`. No idle timeout.
    pub fn new<S>(bytes: S, max_event_bytes: usize) -> Self
    where
        S: Stream<Item = Result<Bytes, UpstreamError>> + Send + 'static,
    {
        EventStream {
            bytes: Box::pin(bytes),
            decoder: Box::new(SseDecoder::new(max_event_bytes)),
            max_event_bytes,
            idle_timeout: None,
            idle: None,
            waiting: false,
            error: None,
            done: false,
        }
    }

    /// Sets (or, with `None`, removes) the bound on waiting for the next bytes.
    pub fn with_idle_timeout(mut self, idle_timeout: Option<Duration>) -> Self {
        self.idle_timeout = idle_timeout;
        self.idle = None;
        self.waiting = false;
        self
    }

    pub fn idle_timeout(&self) -> Option<Duration> {
        self.idle_timeout
    }

    /// The id to send as `Last-Event-ID` when reconnecting (the last `id` field seen).
    pub fn last_event_id(&self) -> Option<&str> {
        self.decoder.last_event_id()
    }

    /// The reconnection delay the upstream asked for with `retry`, if it did.
    pub fn retry(&self) -> Option<Duration> {
        self.decoder.retry().map(Duration::from_millis)
    }
}

impl std::fmt::Debug for EventStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventStream")
            .field("max_event_bytes", &self.max_event_bytes)
            .field("idle_timeout", &self.idle_timeout)
            .field("last_event_id", &self.decoder.last_event_id())
            .field("done", &self.done)
            .finish_non_exhaustive()
    }
}

impl Stream for EventStream {
    type Item = Result<SseEvent, UpstreamError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        loop {
            if let Some(event) = this.decoder.pop() {
                return Poll::Ready(Some(Ok(event)));
            }
            if let Some(error) = this.error.take() {
                this.done = true;
                return Poll::Ready(Some(Err(error)));
            }
            if this.done {
                return Poll::Ready(None);
            }
            match this.bytes.as_mut().poll_next(cx) {
                Poll::Ready(Some(Ok(chunk))) => {
                    this.waiting = false;
                    if this.decoder.push(&chunk).is_err() {
                        this.error = Some(UpstreamError::TooLarge(this.max_event_bytes));
                    }
                }
                Poll::Ready(Some(Err(error))) => this.error = Some(error),
                Poll::Ready(None) => this.done = true,
                Poll::Pending => {
                    let Some(timeout) = this.idle_timeout else {
                        return Poll::Pending;
                    };
                    let deadline = Instant::now() + timeout;
                    let idle = this
                        .idle
                        .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
                    if !this.waiting {
                        // Start the clock when the wait starts.
                        idle.as_mut().reset(deadline);
                        this.waiting = true;
                    }
                    match idle.as_mut().poll(cx) {
                        Poll::Ready(()) => this.error = Some(UpstreamError::Timeout(timeout)),
                        Poll::Pending => return Poll::Pending,
                    }
                }
            }
        }
    }
}

/// Reads a POST's event stream until the JSON-RPC response to `id` arrives. Returns the
/// messages that came before it (progress and logging notifications, server requests such as
/// sampling or elicitation, responses to other ids), in order, and the response.
///
/// Events with no data (such as the 2025-11-25 priming event) and events of a type other than
/// `message` are skipped. A response with a null id (the upstream could not read the request)
/// counts as the response. A batch (2025-03-26) is taken apart. A stream that ends first is a
/// [`UpstreamError::Protocol`]; the stream is left where it stopped, so after a broken
/// connection [`EventStream::last_event_id`] tells where to resume.
pub async fn collect_until_response(
    events: &mut EventStream,
    id: &RequestId,
) -> Result<(Vec<Value>, Value), UpstreamError> {
    let mut before = Vec::new();
    while let Some(event) = events.next().await {
        let event = event?;
        if event.event.as_deref().is_some_and(|e| e != "message") || event.data.trim().is_empty() {
            continue;
        }
        let value: Value = serde_json::from_str(&event.data)
            .map_err(|e| UpstreamError::Protocol(format!("an SSE event is not JSON ({e})")))?;
        let messages = match value {
            Value::Array(items) => items,
            single => vec![single],
        };
        for message in messages {
            if is_response_to(&message, id)? {
                return Ok((before, message));
            }
            before.push(message);
        }
    }
    Err(UpstreamError::Protocol(format!(
        "the upstream ended the stream before answering request {}",
        match id {
            RequestId::Number(n) => n.to_string(),
            RequestId::String(s) => format!("{s:?}"),
        }
    )))
}

/// Whether `message` answers `id`; an error if it is not a JSON-RPC message at all.
fn is_response_to(message: &Value, id: &RequestId) -> Result<bool, UpstreamError> {
    let Some(obj) = message.as_object() else {
        return Err(UpstreamError::Protocol(
            "an SSE event holds JSON that is not a JSON-RPC message".into(),
        ));
    };
    if obj.get("jsonrpc").and_then(Value::as_str) != Some("2.0") {
        return Err(UpstreamError::Protocol(
            "an SSE event holds JSON that is not a JSON-RPC 2.0 message".into(),
        ));
    }
    if obj.contains_key("method") {
        return Ok(false);
    }
    Ok(match obj.get("id") {
        Some(Value::Null) => obj.contains_key("error"),
        Some(other) => {
            serde_json::from_value::<RequestId>(other.clone())
                .ok()
                .as_ref()
                == Some(id)
        }
        None => false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::stream;
    use serde_json::json;

    fn from_chunks(chunks: Vec<&'static [u8]>, max: usize) -> EventStream {
        EventStream::new(
            stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c)))),
            max,
        )
    }

    #[tokio::test]
    async fn collects_what_precedes_the_response() {
        let mut events = from_chunks(
            vec![
                b"id: 0\ndata:\n\n: keep-alive\n\nevent: message\ndata: {\"jsonrpc\":\"2.0\",\"method\":\"notifications/progress\",",
                b"\"params\":{\"progress\":1}}\n\n",
                b"data: {\"jsonrpc\":\"2.0\",\"id\":\"other\",\"result\":{}}\n\n",
                b"id: 3\ndata: {\"jsonrpc\":\"2.0\",\"id\":7,\"result\":{\"ok\":true}}\n\n",
                b"data: {\"jsonrpc\":\"2.0\",\"method\":\"late\"}\n\n",
            ],
            1024,
        );
        let (before, response) = collect_until_response(&mut events, &RequestId::Number(7))
            .await
            .unwrap();
        assert_eq!(
            before,
            vec![
                json!({"jsonrpc":"2.0","method":"notifications/progress","params":{"progress":1}}),
                json!({"jsonrpc":"2.0","id":"other","result":{}}),
            ]
        );
        assert_eq!(
            response,
            json!({"jsonrpc":"2.0","id":7,"result":{"ok":true}})
        );
        assert_eq!(events.last_event_id(), Some("3"));
    }

    #[tokio::test]
    async fn a_stream_that_ends_early_is_a_protocol_error() {
        let mut events = from_chunks(
            vec![b"data: {\"jsonrpc\":\"2.0\",\"method\":\"x\"}\n\n"],
            1024,
        );
        let err = collect_until_response(&mut events, &RequestId::String("a".into()))
            .await
            .unwrap_err();
        assert_eq!(
            err,
            UpstreamError::Protocol(
                "the upstream ended the stream before answering request \"a\"".into()
            )
        );
    }

    #[tokio::test]
    async fn an_oversized_event_ends_the_stream_with_an_error() {
        let mut events = from_chunks(vec![b"data: ok\n\ndata: 0123456789abcdef\n\n"], 16);
        assert_eq!(events.next().await, Some(Ok(SseEvent::message("ok"))));
        assert_eq!(events.next().await, Some(Err(UpstreamError::TooLarge(16))));
        assert_eq!(events.next().await, None);
    }

    #[tokio::test(start_paused = true)]
    async fn silence_beyond_the_idle_timeout_is_a_timeout() {
        let bytes = stream::iter([Ok(Bytes::from_static(b"data: a\n\n"))]).chain(stream::pending());
        let mut events =
            EventStream::new(bytes, 1024).with_idle_timeout(Some(Duration::from_secs(5)));
        assert_eq!(events.next().await, Some(Ok(SseEvent::message("a"))));
        assert_eq!(
            events.next().await,
            Some(Err(UpstreamError::Timeout(Duration::from_secs(5))))
        );
        assert_eq!(events.next().await, None);
    }

    #[tokio::test]
    async fn non_json_rpc_data_is_a_protocol_error() {
        let mut events = from_chunks(vec![b"data: [1]\n\n"], 1024);
        assert!(matches!(
            collect_until_response(&mut events, &RequestId::Number(1)).await,
            Err(UpstreamError::Protocol(_))
        ));
    }
}

//! The one WebSocket that carries library events (graphql-transport-ws),
//! reconnecting with back-off when the server goes away.

use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{self, library_events};
use crate::model::FileEvent;
use crate::platform::{self, Socket};

/// The WebSocket sub-protocol (the server also speaks the legacy `graphql-ws`).
pub const PROTOCOL: &str = "graphql-transport-ws";

/// What the connection is doing, for the banner.
#[derive(Debug, Clone, PartialEq)]
pub enum ConnState {
    Connecting,
    Online,
    /// Lost; the next try is `retry_in_s` seconds away.
    Offline {
        retry_in_s: u32,
        attempt: u32,
        reason: String,
    },
}

/// Exponential back-off: `base`, 2·`base`, 4·`base` … capped at `max`;
/// back to `base` once a connection is acknowledged.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u32,
    max_ms: u32,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(500, 10_000)
    }
}

impl Backoff {
    pub fn new(base_ms: u32, max_ms: u32) -> Self {
        Backoff {
            base_ms,
            max_ms,
            attempt: 0,
        }
    }

    /// The wait before the next try; each call doubles the one after.
    pub fn next_delay_ms(&mut self) -> u32 {
        let factor = 1u32 << self.attempt.min(16);
        self.attempt = self.attempt.saturating_add(1);
        self.base_ms.saturating_mul(factor).min(self.max_ms)
    }

    /// Tries since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A message from the server (graphql-transport-ws).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    ConnectionAck,
    Next { id: String, payload: Value },
    Error { id: String, payload: Value },
    Complete { id: String },
    Ping,
    Pong,
}

impl ServerMessage {
    pub fn parse(text: &str) -> Result<ServerMessage, String> {
        serde_json::from_str(text).map_err(|e| format!("unexpected message from the server: {e}"))
    }
}

/// The subscription's id on the connection.
const SUBSCRIPTION_ID: &str = "library";

/// `connection_init`, with the API key when there is one (browsers cannot set headers on a
/// WebSocket, so the key travels in the payload).
pub fn connection_init(api_key: Option<&str>) -> String {
    let payload = match api_key {
        Some(key) => json!({ "Authorization": format!("Bearer {key}") }),
        None => json!({}),
    };
    json!({ "type": "connection_init", "payload": payload }).to_string()
}

pub fn subscribe_library() -> String {
    json!({ "type": "subscribe", "id": SUBSCRIPTION_ID, "payload": api::library_events_query() })
        .to_string()
}

pub fn pong() -> String {
    json!({ "type": "pong" }).to_string()
}

/// A `next` payload as a library event.
pub fn event_from_payload(payload: Value) -> Result<FileEvent, String> {
    let response: graphql_client::Response<library_events::ResponseData> =
        serde_json::from_value(payload).map_err(|e| format!("bad event: {e}"))?;
    if let Some(error) = response.errors.as_ref().and_then(|e| e.first()) {
        return Err(error.message.clone());
    }
    response
        .data
        .map(|d| d.library_events.into())
        .ok_or_else(|| "event without data".to_string())
}

/// What the connection reports to the app.
pub struct Handlers {
    pub state: Box<dyn FnMut(ConnState)>,
    pub event: Box<dyn FnMut(FileEvent)>,
    /// Subscribed again after a loss (`true`) or for the first time: events
    /// may have been missed, so views refetch.
    pub subscribed: Box<dyn FnMut(bool)>,
}

/// Keeps the subscription up for as long as the app runs.
pub async fn run(base: String, mut handlers: Handlers) {
    let url = platform::websocket_url(&base);
    let mut backoff = Backoff::default();
    let mut was_subscribed = false;
    loop {
        (handlers.state)(ConnState::Connecting);
        let reason = match session(&url, &mut handlers, &mut backoff, &mut was_subscribed).await {
            Ok(()) => "the server closed the connection".to_string(),
            Err(e) => e,
        };
        tracing::warn!("live connection lost: {reason}");
        let attempt = backoff.attempt() + 1;
        let delay_ms = backoff.next_delay_ms();
        // Count down in whole seconds so the banner can say when.
        let mut left_ms = delay_ms;
        while left_ms > 0 {
            (handlers.state)(ConnState::Offline {
                retry_in_s: left_ms.div_ceil(1000),
                attempt,
                reason: reason.clone(),
            });
            let step = left_ms.min(1000);
            platform::sleep_ms(step).await;
            left_ms -= step;
        }
    }
}

async fn session(
    url: &str,
    handlers: &mut Handlers,
    backoff: &mut Backoff,
    was_subscribed: &mut bool,
) -> Result<(), String> {
    let mut socket = Socket::connect(url, PROTOCOL).await?;
    socket
        .send(connection_init(platform::api_key().as_deref()))
        .await?;
    while let Some(frame) = socket.next().await {
        match ServerMessage::parse(&frame?)? {
            ServerMessage::ConnectionAck => {
                socket.send(subscribe_library()).await?;
                backoff.reset();
                (handlers.state)(ConnState::Online);
                (handlers.subscribed)(*was_subscribed);
                *was_subscribed = true;
            }
            ServerMessage::Next { payload, .. } => match event_from_payload(payload) {
                Ok(event) => (handlers.event)(event),
                Err(e) => tracing::warn!("{e}"),
            },
            ServerMessage::Error { payload, .. } => {
                return Err(format!("the server refused the subscription: {payload}"));
            }
            // The server ends subscriptions when it shuts down.
            ServerMessage::Complete { .. } => return Ok(()),
            ServerMessage::Ping => socket.send(pong()).await?,
            ServerMessage::Pong => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{EventKind, Status};

    #[test]
    fn backoff_doubles_caps_and_resets() {
        let mut b = Backoff::new(500, 4000);
        let delays: Vec<u32> = (0..6).map(|_| b.next_delay_ms()).collect();
        assert_eq!(delays, [500, 1000, 2000, 4000, 4000, 4000]);
        assert_eq!(b.attempt(), 6);
        b.reset();
        assert_eq!(b.next_delay_ms(), 500);
        let mut forever = Backoff::new(500, 10_000);
        for _ in 0..100 {
            assert!(forever.next_delay_ms() <= 10_000);
        }
    }

    #[test]
    fn protocol_messages() {
        assert_eq!(
            ServerMessage::parse(r#"{"type":"connection_ack"}"#),
            Ok(ServerMessage::ConnectionAck)
        );
        assert_eq!(
            ServerMessage::parse(r#"{"type":"ping","payload":{}}"#),
            Ok(ServerMessage::Ping)
        );
        assert!(matches!(
            ServerMessage::parse(r#"{"type":"complete","id":"library"}"#),
            Ok(ServerMessage::Complete { .. })
        ));
        assert!(ServerMessage::parse(r#"{"type":"nonsense"}"#).is_err());
        let sub: Value = serde_json::from_str(&subscribe_library()).unwrap();
        assert_eq!(sub["type"], "subscribe");
        assert!(sub["payload"]["query"]
            .as_str()
            .unwrap()
            .contains("libraryEvents"));
        assert_eq!(sub["payload"]["operationName"], "LibraryEvents");
    }

    #[test]
    fn events_decode() {
        let next = r#"{"type":"next","id":"library","payload":{"data":{"libraryEvents":{
            "fileId":"f1","kind":"PROGRESS","status":"EMBEDDING","windowsDone":2,"windowsTotal":5,
            "errorCode":null,"errorMessage":null,"at":"2026-11-30T10:00:00Z"}}}}"#;
        let ServerMessage::Next { payload, .. } = ServerMessage::parse(next).unwrap() else {
            panic!("not next");
        };
        let e = event_from_payload(payload).unwrap();
        assert_eq!(e.file_id, "f1");
        assert_eq!(e.kind, EventKind::Progress);
        assert_eq!(e.status, Status::Embedding);
        assert_eq!((e.windows_done, e.windows_total), (2, 5));
        let err = event_from_payload(serde_json::json!({"errors":[{"message":"nope"}]}));
        assert_eq!(err, Err("nope".to_string()));
    }
}

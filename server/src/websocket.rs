//! The subscription WebSocket (graphql-transport-ws and the legacy graphql-ws): async-graphql's
//! protocol state machine, driven by our own send loop.
//!
//! async-graphql-axum's loop sends and flushes every message on its own (one write system call
//! each). A burst of events (an upload of 20 files makes 20 at once) to 1000 subscribers was
//! then 20 000 writes, and the last subscriber's event waited for all of them. Here messages
//! that are ready together go out together: each is fed to the socket's buffer, and the buffer
//! is flushed once the stream has nothing more ready.

use std::sync::Arc;

use async_graphql::http::{WebSocket as ProtocolMachine, WebSocketProtocols, WsMessage};
use axum::extract::ws::{CloseFrame, Message, WebSocket};
use futures_util::{future, FutureExt, SinkExt, StreamExt};

use crate::auth::{Auth, Caller};
use crate::graphql::TraumSchema;

/// Serves one subscription socket until either side ends it.
///
/// `caller` is who the upgrade request authenticated as; a key in `connection_init` (browsers
/// cannot set headers on a WebSocket) replaces it, and a bad key closes the socket.
pub async fn serve(
    socket: WebSocket,
    schema: TraumSchema,
    protocol: WebSocketProtocols,
    auth: Arc<Auth>,
    caller: Caller,
) {
    let (mut sink, stream) = socket.split();
    let input = stream
        .take_while(|msg| future::ready(msg.is_ok()))
        .filter_map(|msg| {
            future::ready(match msg {
                Ok(Message::Text(text)) => Some(Message::Text(text).into_data()),
                Ok(Message::Binary(bytes)) => Some(bytes),
                _ => None,
            })
        });
    let output = ProtocolMachine::new(schema, input, protocol)
        .on_connection_init(move |payload| async move {
            let caller = match crate::auth::key_from_init_payload(&payload) {
                Some(key) => auth
                    .authenticate(Some(&key), caller.peer)
                    .await
                    .map_err(|e| async_graphql::Error::new(e.to_string()))?,
                None => caller,
            };
            let mut data = async_graphql::Data::default();
            data.insert(caller);
            Ok(data)
        })
        .map(|msg| match msg {
            WsMessage::Text(text) => Message::Text(text.into()),
            WsMessage::Close(code, reason) => Message::Close(Some(CloseFrame {
                code,
                reason: reason.into(),
            })),
        });
    futures_util::pin_mut!(output);
    loop {
        // Whatever is ready now joins the buffer; only when nothing is does it go out.
        let next = match output.next().now_or_never() {
            Some(next) => next,
            None => {
                if sink.flush().await.is_err() {
                    return;
                }
                output.next().await
            }
        };
        let Some(msg) = next else { break };
        if sink.feed(msg).await.is_err() {
            return;
        }
    }
    let _ = sink.flush().await;
}

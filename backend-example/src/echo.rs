//! The echo WebSocket handler.
//!
//! Sends `{"type":"hello","backend":"<id>"}`, then echoes every text/binary
//! message back unchanged. The text command `close:<code>` makes the server
//! initiate a close with that code and reason "bye". Client-initiated closes
//! are answered with the same code (tungstenite queues the reply; we keep
//! polling so it gets flushed). On shutdown the socket is closed with 1012.

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;
use tracing::{debug, info};

use crate::shutdown::Shutdown;

/// Parses the `close:<code>` command; only codes valid on the wire count.
fn close_command(text: &str) -> Option<CloseCode> {
    let code = CloseCode::from(text.strip_prefix("close:")?.trim().parse::<u16>().ok()?);
    code.is_allowed().then_some(code)
}

fn close_frame(code: CloseCode, reason: &'static str) -> Option<CloseFrame> {
    Some(CloseFrame {
        code,
        reason: reason.into(),
    })
}

/// Runs the echo protocol until the connection closes.
pub async fn run<S>(mut ws: WebSocketStream<S>, id: &str, shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    // Built by hand to keep the documented key order; `id` is JSON-escaped.
    let hello = format!(r#"{{"type":"hello","backend":{}}}"#, serde_json::json!(id));
    if let Err(err) = ws.send(Message::text(hello)).await {
        debug!(%err, "failed to send hello");
        return;
    }
    // Set once we have sent a Close: from then on we only read until the
    // peer's reply ends the stream.
    let mut closing = false;
    loop {
        let next = tokio::select! {
            next = ws.next() => next,
            () = shutdown.triggered(), if !closing => {
                closing = true;
                match ws.close(close_frame(CloseCode::Restart, "service restart")).await {
                    Ok(()) => continue,
                    Err(_) => break,
                }
            }
        };
        let msg = match next {
            Some(Ok(msg)) => msg,
            Some(Err(err)) => {
                debug!(%err, "websocket ended with error");
                break;
            }
            None => break,
        };
        let result = match msg {
            Message::Text(_) | Message::Binary(_) if closing => Ok(()),
            Message::Text(text) => match close_command(text.as_str()) {
                Some(code) => {
                    closing = true;
                    info!(code = u16::from(code), "server-initiated close");
                    ws.close(close_frame(code, "bye")).await
                }
                None => ws.send(Message::Text(text)).await,
            },
            Message::Binary(data) => ws.send(Message::Binary(data)).await,
            Message::Close(frame) => {
                let code = frame.map(|f| u16::from(f.code));
                info!(?code, reply_to_ours = closing, "close received");
                Ok(())
            }
            // Pings are answered by tungstenite itself.
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => Ok(()),
        };
        if let Err(err) = result {
            debug!(%err, "websocket write failed");
            break;
        }
    }
}

//! The WebSocket handshake of `/api/sync` and `/api/<version>/sync`.
//!
//! actix-http hands every `Connection: upgrade` request here with its socket. The handshake is
//! answered directly and the socket goes to tokio-tungstenite with a small read buffer; the
//! HTTP connection's own 8 KiB read and write buffers are dropped. An idle client then costs
//! a few KiB (see the README's figures), not the ≈20 KiB of an HTTP connection kept open.

use actix_codec::Framed;
use actix_http::{Method, Request, h1};
use actix_web::{HttpMessage, web};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::{Role, WebSocketConfig};

use crate::{AppState, downstream};

/// Bytes read from a client socket at a time; sync-protocol messages are small, and larger
/// ones grow the buffer only while they are read.
const READ_BUFFER: usize = 2048;

/// Why a handshake was refused: the status line and a message.
type Refusal = (&'static str, &'static str);

/// The upgrade service: answers the handshake and starts the client's session. A client that
/// goes away during the handshake only ends its own connection.
pub async fn upgrade(
    state: web::Data<AppState>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> Result<(), actix_http::Error> {
    if let Err(e) = handshake(state, req, framed).await {
        tracing::debug!(error = %e, "WebSocket handshake failed");
    }
    Ok(())
}

async fn handshake(
    state: web::Data<AppState>,
    req: Request,
    framed: Framed<TcpStream, h1::Codec>,
) -> std::io::Result<()> {
    let parts = framed.into_parts();
    let mut io = parts.io;
    let client = client_address(&state, &req, io.peer_addr()?.ip());
    let chunks = edge_convex::sync::supports_transition_chunks(
        req.path()
            .strip_prefix("/api/")
            .and_then(|rest| rest.strip_suffix("/sync")),
    );
    let accept = match accept_key(&req) {
        Ok(accept) => accept,
        Err((status, message)) => {
            let response = format!(
                "HTTP/1.1 {status}\r\ncontent-type: text/plain; charset=utf-8\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{message}",
                message.len()
            );
            io.write_all(response.as_bytes()).await?;
            return io.shutdown().await;
        }
    };
    io.set_nodelay(true)?;
    let response = format!(
        "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\nconnection: Upgrade\r\n\
         sec-websocket-accept: {accept}\r\n\r\n"
    );
    io.write_all(response.as_bytes()).await?;
    let limit = state.config.max_message_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        // Every message is written and flushed as it is sent.
        .write_buffer_size(0)
        .max_message_size(Some(limit))
        .max_frame_size(Some(limit));
    // Whatever the client sent after its handshake (normally nothing) is the socket's first
    // bytes.
    let ws = if parts.read_buf.is_empty() {
        WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await
    } else {
        let early = parts.read_buf.to_vec();
        WebSocketStream::from_partially_read(io, early, Role::Server, Some(config)).await
    };
    actix_web::rt::spawn(downstream::run(state, ws, chunks, client));
    Ok(())
}

/// The client behind `peer`: forwarding headers count only from `QUERY_TRUSTED_PROXIES`.
fn client_address(state: &AppState, req: &Request, peer: std::net::IpAddr) -> std::net::IpAddr {
    let lines = |name: &str| -> Vec<&str> {
        req.headers()
            .get_all(name)
            .filter_map(|v| v.to_str().ok())
            .collect()
    };
    // An IPv6 client is its /64, as for the gateway's rate limits: one host holds a whole /64.
    edge_forwarded::client_network(state.config.trusted_proxies.client(
        peer,
        lines("forwarded"),
        lines("x-forwarded-for"),
    ))
}

/// Checks the request is a WebSocket handshake of a sync route; returns the accept key.
fn accept_key(req: &Request) -> Result<String, Refusal> {
    let path = req.path();
    let sync = path == "/api/sync"
        || path
            .strip_prefix("/api/")
            .and_then(|rest| rest.strip_suffix("/sync"))
            .is_some_and(|version| !version.is_empty() && !version.contains('/'));
    if !sync {
        return Err(("404 Not Found", "not found"));
    }
    if req.method() != Method::GET {
        return Err(("405 Method Not Allowed", "the sync route takes GET"));
    }
    let header = |name: &str| {
        req.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if !header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")) {
        return Err(("400 Bad Request", "expected a WebSocket upgrade"));
    }
    if header("sec-websocket-version") != Some("13") {
        return Err((
            "400 Bad Request",
            "unsupported WebSocket version (13 expected)",
        ));
    }
    let key =
        header("sec-websocket-key").ok_or(("400 Bad Request", "missing Sec-WebSocket-Key"))?;
    Ok(derive_accept_key(key.as_bytes()))
}

//! A client's WebSocket to a node, subscribed to a channel: what the verifier's listeners
//! and the scenario workload's subscribers both read deliveries from.

use std::net::TcpStream;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};
use tungstenite::stream::MaybeTlsStream;

use super::Member;

pub(crate) type Socket = tungstenite::WebSocket<MaybeTlsStream<TcpStream>>;

/// Opens a WebSocket to `member` as the holder of `token`, subscribes to `channel`, and
/// returns once the server confirms it: only then does a post count as one the socket must
/// see. Connecting and the confirmation each get `timeout`; from then on a read gives up
/// after `poll`, so that a reader can look at its stop flag.
pub(crate) fn open_subscribed(
    member: &Member,
    token: &str,
    channel: i64,
    timeout: Duration,
    poll: Duration,
) -> Result<Socket> {
    let url = format!("ws://{}/api/v1/ws?token={token}", member.addr);
    let stream =
        TcpStream::connect_timeout(&member.addr, timeout).with_context(|| format!("connecting to {}", member.id))?;
    // The handshake gets the whole `timeout`: with `poll` already set, a node slower than
    // that to upgrade (a VM just restored from a snapshot, a loaded machine) broke it off
    // as `Interrupted handshake (WouldBlock)`.
    stream.set_read_timeout(Some(timeout))?;
    let (mut socket, _) = tungstenite::client(url.as_str(), MaybeTlsStream::Plain(stream))
        .map_err(|err| anyhow::anyhow!("WebSocket to {}: {err}", member.id))?;
    if let MaybeTlsStream::Plain(stream) = socket.get_ref() {
        stream.set_read_timeout(Some(poll))?;
    }
    socket.send(tungstenite::Message::text(
        json!({"type": "subscribe", "channel_id": channel}).to_string(),
    ))?;
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        match socket.read() {
            Ok(tungstenite::Message::Text(text)) => {
                let frame: Value = serde_json::from_str(text.as_str()).unwrap_or_default();
                match frame["type"].as_str() {
                    Some("subscribed") => return Ok(socket),
                    Some("error") => bail!("{} refused the subscription: {frame}", member.id),
                    _ => {}
                }
            }
            Ok(_) => {}
            Err(tungstenite::Error::Io(err)) if is_timeout(&err) => {}
            Err(err) => return Err(err).with_context(|| format!("subscribing on {}", member.id)),
        }
    }
    bail!("{} confirmed no subscription within {timeout:?}", member.id)
}

/// Whether a read gave up for lack of data (its poll timeout), not because the socket broke.
pub(crate) fn is_timeout(err: &std::io::Error) -> bool {
    matches!(
        err.kind(),
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
    )
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;

    use super::*;

    /// A node that takes `delay` to answer the upgrade, then confirms any subscription.
    fn slow_node(delay: Duration) -> Member {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            std::thread::sleep(delay);
            let mut socket = tungstenite::accept(stream).unwrap();
            let _subscribe = socket.read().unwrap();
            socket
                .send(tungstenite::Message::text(r#"{"type":"subscribed","channel_id":1}"#))
                .unwrap();
            // Held open until the client has read the confirmation and gone.
            while socket.read().is_ok() {}
        });
        Member {
            id: "slow".into(),
            addr,
        }
    }

    #[test]
    fn a_handshake_slower_than_the_poll_but_within_the_timeout_subscribes() {
        let node = slow_node(Duration::from_millis(400));
        let socket = open_subscribed(&node, "t", 1, Duration::from_secs(10), Duration::from_millis(50));
        assert!(socket.is_ok(), "{:#}", socket.err().unwrap());
    }

    #[test]
    fn a_handshake_slower_than_the_timeout_fails() {
        let node = slow_node(Duration::from_secs(3));
        let socket = open_subscribed(&node, "t", 1, Duration::from_millis(300), Duration::from_millis(50));
        assert!(socket.is_err());
    }
}

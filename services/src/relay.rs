//! A TCP relay that the fault scenarios put between a node and what it talks to (NATS,
//! PostgreSQL, its clients): the per-node fault point. Cut, it holds every byte in both
//! directions while the connections stay open — what a partition looks like to both ends:
//! silence, then timeouts, not a reset — and delivers them when restored. It can also add
//! latency, and reset every connection it carries, as a restarted peer would.
//!
//! Threads, not async: a scenario relays a few dozen connections, and the crate stays as
//! small as the server's tests need it to be.

use std::collections::BTreeMap;
use std::io::{ErrorKind, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread;
use std::time::Duration;

use anyhow::{Context, Result};

/// How often a blocked read looks at the relay's state (to notice a reset or the end).
const POLL: Duration = Duration::from_millis(100);

/// A running relay; dropped, it stops and closes every connection it carries.
pub struct Relay {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
}

#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    changed: Condvar,
}

#[derive(Default)]
struct State {
    cut: bool,
    latency: Duration,
    stopped: bool,
    /// Both ends of every relayed connection, to reset them.
    connections: BTreeMap<u64, [TcpStream; 2]>,
    next_id: u64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn update(&self, change: impl FnOnce(&mut State)) {
        change(&mut self.lock());
        self.changed.notify_all();
    }
}

impl Relay {
    /// A relay on a free loopback port to `upstream`.
    pub fn start(upstream: SocketAddr) -> Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream)
    }

    /// A relay listening on `listen` (a port of 0 picks a free one) to `upstream`.
    pub fn start_on(listen: SocketAddr, upstream: SocketAddr) -> Result<Self> {
        let listener = TcpListener::bind(listen).with_context(|| format!("relay: listening on {listen}"))?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Shared::default());
        let accepting = Arc::clone(&shared);
        thread::Builder::new()
            .name(format!("relay {addr}"))
            .spawn(move || accept(&listener, upstream, &accepting))
            .context("relay: starting its thread")?;
        Ok(Self { addr, upstream, shared })
    }

    /// Where clients connect instead of the upstream.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// Holds every byte, both ways, on every connection, new ones included.
    pub fn cut(&self) {
        self.shared.update(|state| state.cut = true);
    }

    /// Lets the held bytes through and the traffic flow again.
    pub fn restore(&self) {
        self.shared.update(|state| state.cut = false);
    }

    /// Delays every chunk of bytes by `latency` (zero removes it).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.update(|state| state.latency = latency);
    }

    /// Closes every connection the relay carries now; new ones are accepted as before.
    pub fn reset_connections(&self) {
        self.shared.update(|state| {
            for ends in std::mem::take(&mut state.connections).into_values() {
                for end in ends {
                    let _ = end.shutdown(Shutdown::Both);
                }
            }
        });
    }

    /// How many connections the relay carries.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections.len()
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shared.update(|state| state.stopped = true);
        self.reset_connections();
        // Wakes the accept loop, which then sees `stopped`.
        let _ = TcpStream::connect_timeout(&self.addr, POLL);
    }
}

fn accept(listener: &TcpListener, upstream: SocketAddr, shared: &Arc<Shared>) {
    for client in listener.incoming() {
        if shared.lock().stopped {
            return;
        }
        let Ok(client) = client else { continue };
        // A node that cannot reach its upstream sees its connection closed, as it would.
        let Ok(server) = TcpStream::connect(upstream) else {
            continue;
        };
        let _ = client.set_nodelay(true);
        let _ = server.set_nodelay(true);
        if let Err(err) = relay_pair(client, server, shared) {
            eprintln!("relay to {upstream}: {err:#}");
        }
    }
}

fn relay_pair(client: TcpStream, server: TcpStream, shared: &Arc<Shared>) -> Result<()> {
    let id = {
        let mut state = shared.lock();
        let id = state.next_id;
        state.next_id += 1;
        state.connections.insert(id, [client.try_clone()?, server.try_clone()?]);
        id
    };
    for (from, to) in [(client.try_clone()?, server.try_clone()?), (server, client)] {
        let shared = Arc::clone(shared);
        thread::Builder::new()
            .name("relay copy".into())
            .spawn(move || {
                copy(from, to, &shared);
                shared.lock().connections.remove(&id);
            })
            .context("relay: starting a copy thread")?;
    }
    Ok(())
}

/// Copies `from` to `to` until either closes, holding bytes while the relay is cut.
fn copy(mut from: TcpStream, mut to: TcpStream, shared: &Shared) {
    let _ = from.set_read_timeout(Some(POLL));
    let mut buffer = [0u8; 16 * 1024];
    loop {
        let read = match from.read(&mut buffer) {
            Ok(0) => break,
            Ok(read) => read,
            Err(err) if matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                if shared.lock().stopped {
                    break;
                }
                continue;
            }
            Err(err) if err.kind() == ErrorKind::Interrupted => continue,
            Err(_) => break,
        };
        let latency = {
            let mut state = shared.lock();
            while state.cut && !state.stopped {
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
            }
            if state.stopped {
                break;
            }
            state.latency
        };
        if !latency.is_zero() {
            thread::sleep(latency);
        }
        if to.write_all(&buffer[..read]).is_err() {
            break;
        }
    }
    // Half-close: the other direction may still have bytes to deliver.
    let _ = to.shutdown(Shutdown::Write);
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use super::*;

    /// An upstream that echoes every connection's bytes back.
    fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                thread::spawn(move || {
                    let mut reader = stream.try_clone().unwrap();
                    let mut writer = stream;
                    let _ = std::io::copy(&mut reader, &mut writer);
                });
            }
        });
        addr
    }

    fn connect(relay: &Relay) -> TcpStream {
        let stream = TcpStream::connect(relay.addr()).unwrap();
        stream.set_read_timeout(Some(Duration::from_millis(500))).unwrap();
        stream
    }

    fn echo(stream: &mut TcpStream, bytes: &[u8]) -> std::io::Result<Vec<u8>> {
        stream.write_all(bytes)?;
        let mut back = vec![0u8; bytes.len()];
        stream.read_exact(&mut back)?;
        Ok(back)
    }

    #[test]
    fn bytes_flow_both_ways_until_cut_and_the_held_ones_arrive_when_restored() {
        let relay = Relay::start(echo_server()).unwrap();
        let mut stream = connect(&relay);
        assert_eq!(echo(&mut stream, b"before").unwrap(), b"before");

        relay.cut();
        let err = echo(&mut stream, b"during").unwrap_err();
        assert!(
            matches!(err.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
            "a cut is silence, not a reset: {err}"
        );
        // A connection opened during the cut is silent too.
        let mut late = connect(&relay);
        assert!(echo(&mut late, b"late").is_err());

        relay.restore();
        let mut held = vec![0u8; b"during".len()];
        stream.read_exact(&mut held).unwrap();
        assert_eq!(held, b"during");
        let mut held = vec![0u8; b"late".len()];
        late.read_exact(&mut held).unwrap();
        assert_eq!(held, b"late");
        assert_eq!(echo(&mut stream, b"after").unwrap(), b"after");
    }

    #[test]
    fn latency_delays_each_way() {
        let relay = Relay::start(echo_server()).unwrap();
        let mut stream = connect(&relay);
        relay.set_latency(Duration::from_millis(150));
        let started = Instant::now();
        assert_eq!(echo(&mut stream, b"slow").unwrap(), b"slow");
        // There and back: at least twice the latency, whatever the machine.
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
    }

    #[test]
    fn a_reset_closes_every_connection_and_new_ones_still_work() {
        let relay = Relay::start(echo_server()).unwrap();
        let mut stream = connect(&relay);
        assert_eq!(echo(&mut stream, b"x").unwrap(), b"x");
        assert_eq!(relay.connections(), 1);
        relay.reset_connections();
        let mut buffer = [0u8; 1];
        assert_eq!(stream.read(&mut buffer).unwrap_or(0), 0, "the connection is closed");
        let mut again = connect(&relay);
        assert_eq!(echo(&mut again, b"y").unwrap(), b"y");
    }

    #[test]
    fn dropping_the_relay_closes_its_connections_and_its_port() {
        let relay = Relay::start(echo_server()).unwrap();
        let addr = relay.addr();
        let mut stream = connect(&relay);
        assert_eq!(echo(&mut stream, b"x").unwrap(), b"x");
        drop(relay);
        let mut buffer = [0u8; 1];
        assert_eq!(stream.read(&mut buffer).unwrap_or(0), 0);
        // The listener is gone once the accept loop has seen the stop.
        let deadline = Instant::now() + Duration::from_secs(5);
        while TcpStream::connect(addr).is_ok() && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(20));
        }
        assert!(TcpStream::connect(addr).is_err(), "{addr} still accepts");
    }
}

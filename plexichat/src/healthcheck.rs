//! `plexichat healthcheck`: probes a server's /health with nothing but the standard
//! library, so a container with no shell (FROM scratch) can run it as its HEALTHCHECK.
//! Host names are resolved as the server resolves its database's: through the C
//! library's resolver, reading /etc/hosts and /etc/resolv.conf.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum HealthError {
    #[error("`{0}` is not an http://HOST:PORT/PATH URL")]
    BadUrl(String),
    #[error("cannot resolve {host}: {source}")]
    Resolve { host: String, source: std::io::Error },
    #[error("cannot reach {0}: {1}")]
    Connect(String, std::io::Error),
    #[error("unhealthy: {0}")]
    Unhealthy(String),
}

/// GETs `url` and succeeds on a 200 whose body says `"status":"ok"`.
pub fn probe(url: &str, timeout: Duration) -> Result<String, HealthError> {
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| HealthError::BadUrl(url.into()))?;
    let (authority, path) = rest
        .split_once('/')
        .map_or((rest, "/".to_string()), |(a, p)| (a, format!("/{p}")));
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, port.parse::<u16>().map_err(|_| HealthError::BadUrl(url.into()))?),
        None => (authority, 80),
    };
    if host.is_empty() {
        return Err(HealthError::BadUrl(url.into()));
    }
    let addrs: Vec<_> = (host, port)
        .to_socket_addrs()
        .map_err(|source| HealthError::Resolve {
            host: host.into(),
            source,
        })?
        .collect();
    let mut last_error = None;
    for addr in addrs {
        match TcpStream::connect_timeout(&addr, timeout) {
            Ok(mut stream) => {
                let response = get(&mut stream, authority, &path, timeout)
                    .map_err(|err| HealthError::Connect(addr.to_string(), err))?;
                let status_ok = response.split_whitespace().nth(1) == Some("200");
                let body = response
                    .split_once("\r\n\r\n")
                    .map_or("", |(_, body)| body)
                    .trim()
                    .to_string();
                return if status_ok && body.contains(r#""status":"ok""#) {
                    Ok(body)
                } else {
                    Err(HealthError::Unhealthy(
                        response.lines().next().unwrap_or_default().to_string(),
                    ))
                };
            }
            Err(err) => last_error = Some(HealthError::Connect(addr.to_string(), err)),
        }
    }
    Err(last_error.unwrap_or_else(|| HealthError::Connect(authority.into(), std::io::ErrorKind::NotFound.into())))
}

fn get(stream: &mut TcpStream, authority: &str, path: &str, timeout: Duration) -> std::io::Result<String> {
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.0\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_urls_are_refused_before_any_network_use() {
        for url in [
            "https://x/health",
            "127.0.0.1:8000/health",
            "http://:80/",
            "http://host:port/",
        ] {
            assert!(
                matches!(probe(url, Duration::from_secs(1)), Err(HealthError::BadUrl(_))),
                "{url}"
            );
        }
    }

    #[test]
    fn an_unresolvable_name_says_so() {
        let err = probe("http://no-such-host.invalid:8000/health", Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, HealthError::Resolve { .. }), "{err}");
    }

    #[test]
    fn a_closed_port_is_unreachable() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let err = probe(&format!("http://127.0.0.1:{port}/health"), Duration::from_secs(2)).unwrap_err();
        assert!(matches!(err, HealthError::Connect(..)), "{err}");
    }
}

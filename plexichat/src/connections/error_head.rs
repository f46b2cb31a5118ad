//! The connection's socket as hyper sees it: reports reads and writes to the connection's
//! phase, and gives hyper's automatic error answers API.md's JSON body.
//!
//! hyper answers a request it cannot parse (400), a request target over its limit (414)
//! and a head over its limit (431) by itself, before any service runs, with an empty body,
//! and offers no hook to change that. It writes such an answer only between requests, as
//! the head of a 4xx with `content-length: 0`, and closes the connection after it. Our own
//! responses are never written between requests (see `Activity::between_requests`), and
//! none of our 4xx is bodiless anyway, so a write that matches is hyper's: we send the
//! same head with the JSON body instead, and tell hyper its bytes were written.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use axum::http::StatusCode;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use super::connection::Activity;
use crate::error::ErrorBody;

pub(super) struct ConnIo {
    stream: TcpStream,
    activity: Arc<Activity>,
    /// Our answer in place of hyper's, once one was made, and how much of it is written.
    replacement: Option<(Vec<u8>, usize)>,
}

impl ConnIo {
    pub(super) fn new(stream: TcpStream, activity: Arc<Activity>) -> Self {
        Self {
            stream,
            activity,
            replacement: None,
        }
    }

    /// `Ready(None)`: write `first` as it is. `Ready(Some(..))`: hyper's bytes (`total` of
    /// them, starting with `first`) were replaced by ours, which are now written.
    fn poll_replace(&mut self, cx: &mut Context<'_>, first: &[u8], total: usize) -> Poll<Option<io::Result<usize>>> {
        if self.replacement.is_none() {
            if !self.activity.between_requests() {
                return Poll::Ready(None);
            }
            match with_json_body(first) {
                Some(answer) => self.replacement = Some((answer, 0)),
                None => return Poll::Ready(None),
            }
        }
        match ready!(self.poll_write_replacement(cx)) {
            // hyper closes the connection after this answer; whatever else it might
            // write belongs to the answer we replaced.
            Ok(()) => Poll::Ready(Some(Ok(total))),
            Err(err) => Poll::Ready(Some(Err(err))),
        }
    }

    fn poll_write_replacement(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let Some((answer, written)) = &mut self.replacement else {
            return Poll::Ready(Ok(()));
        };
        while *written < answer.len() {
            let n = ready!(Pin::new(&mut self.stream).poll_write(cx, &answer[*written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            *written += n;
        }
        Poll::Ready(Ok(()))
    }

    fn written(&self, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        if let Poll::Ready(Ok(n)) = result {
            if n > 0 {
                self.activity.bytes_written();
            }
        }
        result
    }
}

impl AsyncRead for ConnIo {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        ready!(Pin::new(&mut self.stream).poll_read(cx, buf))?;
        if buf.filled().len() > before {
            self.activity.bytes_read();
        }
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for ConnIo {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        if let Some(result) = ready!(self.poll_replace(cx, buf, buf.len())) {
            return Poll::Ready(result);
        }
        let result = Pin::new(&mut self.stream).poll_write(cx, buf);
        self.written(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let first = bufs.iter().find(|buf| !buf.is_empty()).map_or(&[][..], |buf| &buf[..]);
        let total = bufs.iter().map(|buf| buf.len()).sum();
        if let Some(result) = ready!(self.poll_replace(cx, first, total)) {
            return Poll::Ready(result);
        }
        let result = Pin::new(&mut self.stream).poll_write_vectored(cx, bufs);
        self.written(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_replacement(cx))?;
        ready!(Pin::new(&mut self.stream).poll_flush(cx))?;
        // hyper flushes the socket once its buffer is empty: all of a response is out.
        self.activity.flushed();
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_replacement(cx))?;
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// hyper's automatic answer (the whole head, starting `bytes`) with API.md's error body,
/// or `None` when `bytes` is not such an answer.
fn with_json_body(bytes: &[u8]) -> Option<Vec<u8>> {
    let end = bytes.windows(4).position(|window| window == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&bytes[..end]).ok()?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next()?;
    let code = ["HTTP/1.1 ", "HTTP/1.0 "]
        .iter()
        .find_map(|version| status_line.strip_prefix(version))?
        .get(..3)?;
    let status = StatusCode::from_bytes(code.as_bytes()).ok()?;
    let fields: Vec<&str> = lines.collect();
    let bodiless = fields
        .iter()
        .any(|field| field.eq_ignore_ascii_case("content-length: 0"));
    if !status.is_client_error() || !bodiless {
        return None;
    }
    let body = serde_json::to_string(&ErrorBody::new(status, message_for(status).to_string())).ok()?;
    let mut answer = format!("{status_line}\r\n");
    for field in fields {
        if field.eq_ignore_ascii_case("content-length: 0") {
            answer.push_str(&format!(
                "content-type: application/json\r\ncontent-length: {}\r\n",
                body.len()
            ));
        } else {
            answer.push_str(field);
            answer.push_str("\r\n");
        }
    }
    answer.push_str("\r\n");
    answer.push_str(&body);
    Some(answer.into_bytes())
}

fn message_for(status: StatusCode) -> &'static str {
    match status {
        StatusCode::BAD_REQUEST => "malformed request: the request line or a header field is not valid HTTP/1.1",
        StatusCode::URI_TOO_LONG => "request target is too long",
        StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE => "request head is too large: too many or too long header fields",
        _ => status.canonical_reason().unwrap_or("request refused"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Value;

    use super::*;

    fn split(answer: &[u8]) -> (String, Value) {
        let text = String::from_utf8(answer.to_vec()).unwrap();
        let (head, body) = text.split_once("\r\n\r\n").unwrap();
        (head.to_string(), serde_json::from_str(body).unwrap())
    }

    #[test]
    fn hyper_answers_keep_their_head_and_get_the_json_body() {
        let hyper = b"HTTP/1.1 431 Request Header Fields Too Large\r\nconnection: close\r\n\
                      content-length: 0\r\ndate: Sat, 28 Nov 2026 00:43:04 GMT\r\n\r\n";
        let answer = with_json_body(hyper).expect("recognised");
        let (head, body) = split(&answer);
        assert!(
            head.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{head}"
        );
        assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
        assert!(head.contains("\r\ndate: Sat, 28 Nov 2026 00:43:04 GMT"), "{head}");
        assert!(head.contains("\r\ncontent-type: application/json\r\n"), "{head}");
        let length = format!("content-length: {}", body.to_string().len());
        assert!(head.contains(&length), "{head}");
        assert_eq!(body["error"]["code"], "headers_too_large");
        for (status, code) in [(400, "invalid_request"), (414, "uri_too_long")] {
            let hyper = format!("HTTP/1.1 {status} X\r\nconnection: close\r\ncontent-length: 0\r\n\r\n");
            let (_, body) = split(&with_json_body(hyper.as_bytes()).unwrap());
            assert_eq!(body["error"]["code"], code);
        }
    }

    #[test]
    fn anything_else_is_left_alone() {
        for bytes in [
            &b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n"[..],
            b"HTTP/1.1 404 Not Found\r\ncontent-length: 56\r\n\r\n{}",
            b"HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n",
            b"HTTP/1.1 400 Bad Request\r\ncontent-length: 0\r\n",
            b"\x81\x05hello",
        ] {
            assert_eq!(with_json_body(bytes), None, "{}", String::from_utf8_lossy(bytes));
        }
    }
}

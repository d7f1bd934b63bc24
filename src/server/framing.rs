//! SPEC §4.5: a request with both `Content-Length` and `Transfer-Encoding`
//! is refused with 400 (request smuggling: a proxy and its upstream could
//! each frame it differently).
//!
//! hyper settles such a request before any service sees it (RFC 9112 §6.3:
//! `Transfer-Encoding` wins, and `Content-Length` is taken out of the header
//! map), so the conflict is invisible to `proxy::handle`. [`Sniffed`] wraps
//! the client connection and follows HTTP/1 message framing over the bytes
//! hyper reads: request heads, `Content-Length` bodies (skipped by count),
//! chunked bodies (only their size lines are read). It records the position
//! on the connection of the first request whose head carries both headers;
//! the service answers that request with 400 instead of dispatching it, and
//! hyper closes the connection after it (it never keeps such a connection
//! alive), so nothing later on it matters.
//!
//! Where the bytes stop being HTTP/1 requests (the h2c preface, a head or
//! line too long, framing hyper would refuse itself) the tracker stops: hyper
//! answers or closes those connections on its own.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// What the connection's reader found, shared with its service.
#[derive(Debug)]
pub struct Framing {
    /// Index (0-based, in arrival order) of the first request with both
    /// headers; `u64::MAX` while there is none.
    ambiguous: AtomicU64,
    /// Requests handed to the service so far on this connection.
    served: AtomicU64,
}

impl Framing {
    /// Called once per request, in the order hyper hands them to the service
    /// (HTTP/1 serves one request at a time, in arrival order): whether this
    /// one must be refused. hyper reads a head before it can pass it on, so
    /// the reader has always seen it first.
    pub fn next_request_is_ambiguous(&self) -> bool {
        let n = self.served.fetch_add(1, Ordering::AcqRel);
        n == self.ambiguous.load(Ordering::Acquire)
    }
}

/// A client connection whose incoming HTTP/1 framing is followed. Writes
/// pass through untouched.
pub struct Sniffed<IO> {
    io: IO,
    tracker: Tracker,
    framing: Arc<Framing>,
    /// Bytes [`Sniffed::read_preface`] read, handed out again first.
    first: [u8; PREFACE.len()],
    first_len: u8,
    first_pos: u8,
}

/// What an HTTP/2 client with prior knowledge (h2c) sends first (RFC 9113 §3.4).
const PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Wraps `io`; `max_head` bounds the head and line lengths followed (beyond
/// them hyper answers 431 or 400 itself).
pub fn sniff<IO>(io: IO, max_head: usize) -> (Sniffed<IO>, Arc<Framing>) {
    let framing = Arc::new(Framing {
        ambiguous: AtomicU64::new(u64::MAX),
        served: AtomicU64::new(0),
    });
    let sniffed = Sniffed {
        io,
        tracker: Tracker::new(max_head),
        framing: Arc::clone(&framing),
        first: [0; PREFACE.len()],
        first_len: 0,
        first_pos: 0,
    };
    (sniffed, framing)
}

impl<IO: AsyncRead + Unpin> Sniffed<IO> {
    /// Reads the connection's first bytes, as far as it takes to tell the
    /// h2c preface (`true`) from anything else: an HTTP/1 request, or an end
    /// of stream. Whatever was read is read again by the server after it.
    ///
    /// # Errors
    /// The connection's read errors.
    pub async fn read_preface(&mut self) -> io::Result<bool> {
        use tokio::io::AsyncReadExt;
        let mut len = usize::from(self.first_len);
        while len < PREFACE.len() {
            let n = self.io.read(&mut self.first[len..]).await?;
            if n == 0 {
                break;
            }
            len += n;
            self.first_len = len as u8; // at most 24
            if self.first[..len] != PREFACE[..len] {
                return Ok(false);
            }
        }
        Ok(len == PREFACE.len())
    }
}

impl<IO: AsyncRead + Unpin> AsyncRead for Sniffed<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        if this.first_pos < this.first_len {
            let first = &this.first[usize::from(this.first_pos)..usize::from(this.first_len)];
            let n = first.len().min(buf.remaining());
            buf.put_slice(&first[..n]);
            this.first_pos += n as u8; // at most 24
        } else {
            ready!(Pin::new(&mut this.io).poll_read(cx, buf))?;
        }
        if let Some(index) = this.tracker.feed(&buf.filled()[before..]) {
            this.framing.ambiguous.store(index, Ordering::Release);
        }
        Poll::Ready(Ok(()))
    }
}

impl<IO: AsyncWrite + Unpin> AsyncWrite for Sniffed<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

// === the framing tracker ===

/// Where in the request stream the next byte belongs.
#[derive(Debug, PartialEq, Eq)]
enum State {
    /// A request head, line by line.
    Head(Head),
    /// `n` more bytes of a `Content-Length` body.
    Body(u64),
    /// A chunk-size line.
    ChunkSize,
    /// `n` more bytes of chunk data.
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd,
    /// Trailer lines after the last chunk, up to an empty line.
    Trailers,
    /// No longer followed (not HTTP/1 requests, or hyper refuses them).
    Off,
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Head {
    /// The request line was read (empty lines before it are skipped, as
    /// hyper does).
    started: bool,
    http10: bool,
    bytes: usize,
    /// Every `Content-Length` value agreed (`None`: none, or one that hyper
    /// refuses).
    content_length: Option<u64>,
    has_content_length: bool,
    bad_content_length: bool,
    has_transfer_encoding: bool,
    /// The last `Transfer-Encoding` header ends in `chunked`.
    chunked: bool,
}

struct Tracker {
    state: State,
    /// The current line, when it spans reads.
    line: Vec<u8>,
    /// Heads completed so far on this connection.
    heads: u64,
    max_line: usize,
}

impl Tracker {
    fn new(max_head: usize) -> Self {
        Tracker {
            state: State::Head(Head::default()),
            line: Vec::new(),
            heads: 0,
            // Slack over hyper's own limit: stopping early would only miss a request.
            max_line: max_head.saturating_mul(2),
        }
    }

    /// Follows `data`; returns the index of a request that has both
    /// `Content-Length` and `Transfer-Encoding`, when its head ends here.
    fn feed(&mut self, mut data: &[u8]) -> Option<u64> {
        while !data.is_empty() {
            match &mut self.state {
                State::Off => return None,
                State::Body(n) | State::ChunkData(n) => {
                    let take = (*n).min(data.len() as u64);
                    *n -= take;
                    data = &data[take as usize..];
                    if *n == 0 {
                        self.state = match self.state {
                            State::Body(_) => State::Head(Head::default()),
                            _ => State::ChunkEnd,
                        };
                    }
                }
                _ => {
                    let Some(nl) = memchr::memchr(b'\n', data) else {
                        self.line.extend_from_slice(data);
                        if self.line.len() > self.max_line {
                            self.state = State::Off;
                        }
                        return None;
                    };
                    let found = if self.line.is_empty() {
                        // The whole line is in this read: no copy.
                        self.on_line(strip_cr(&data[..nl]))
                    } else {
                        self.line.extend_from_slice(&data[..nl]);
                        let mut line = std::mem::take(&mut self.line);
                        let found = self.on_line(strip_cr(&line));
                        line.clear();
                        // Keep a small buffer for the next line, not a long one's.
                        if line.capacity() <= 1024 {
                            self.line = line;
                        }
                        found
                    };
                    data = &data[nl + 1..];
                    if found.is_some() {
                        return found;
                    }
                }
            }
        }
        None
    }

    fn on_line(&mut self, line: &[u8]) -> Option<u64> {
        if line.len() > self.max_line {
            self.state = State::Off;
            return None;
        }
        match &mut self.state {
            State::Head(head) => {
                head.bytes += line.len() + 2;
                if head.bytes > self.max_line {
                    self.state = State::Off;
                } else if !head.started {
                    if line.is_empty() {
                        return None;
                    }
                    head.started = true;
                    if line.starts_with(b"PRI * HTTP/2") {
                        self.state = State::Off; // h2c prior knowledge
                    } else {
                        head.http10 = line.ends_with(b"HTTP/1.0");
                    }
                } else if line.is_empty() {
                    return self.end_of_head();
                } else {
                    head.header(line);
                }
            }
            State::ChunkSize => self.state = chunk_size(line),
            State::ChunkEnd if line.is_empty() => self.state = State::ChunkSize,
            State::ChunkEnd => self.state = State::Off,
            State::Trailers if line.is_empty() => self.state = State::Head(Head::default()),
            State::Trailers => {}
            State::Body(_) | State::ChunkData(_) | State::Off => {
                unreachable!("byte-counted states never read lines")
            }
        }
        None
    }

    /// The head is complete: decide how its body is framed (as hyper does).
    fn end_of_head(&mut self) -> Option<u64> {
        let State::Head(head) = std::mem::replace(&mut self.state, State::Off) else {
            unreachable!("called on a head")
        };
        let index = self.heads;
        self.heads += 1;
        if head.has_transfer_encoding && head.has_content_length {
            // Refused; hyper keeps no connection alive after such a request.
            return Some(index);
        }
        self.state = if head.has_transfer_encoding {
            if head.chunked && !head.http10 {
                State::ChunkSize
            } else {
                State::Off // hyper answers 400
            }
        } else if head.bad_content_length {
            State::Off // hyper answers 400
        } else {
            match head.content_length {
                Some(n) if n > 0 => State::Body(n),
                _ => State::Head(Head::default()),
            }
        };
        None
    }
}

impl Head {
    fn header(&mut self, line: &[u8]) {
        // Only `Content-Length` and `Transfer-Encoding` matter here: most
        // lines (`Host`, `Authorization`, `Accept`...) end at their first byte.
        if !matches!(line.first(), Some(b'c' | b'C' | b't' | b'T')) {
            return;
        }
        let Some(colon) = line.iter().position(|&b| b == b':') else {
            return; // hyper refuses the head; nothing after it is served
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            self.has_content_length = true;
            match (digits(value), self.content_length) {
                (Some(n), None) if !self.bad_content_length => self.content_length = Some(n),
                (Some(n), Some(prev)) if n == prev => {}
                _ => self.bad_content_length = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.has_transfer_encoding = true;
            let last = value.rsplit(|&b| b == b',').next().unwrap_or_default();
            self.chunked = trim(last).eq_ignore_ascii_case(b"chunked");
        }
    }
}

/// A chunk-size line: hex digits, then optional whitespace and `;extensions`.
fn chunk_size(line: &[u8]) -> State {
    let end = line
        .iter()
        .position(|b| !b.is_ascii_hexdigit())
        .unwrap_or(line.len());
    let rest = trim(&line[end..]);
    if end == 0 || !(rest.is_empty() || rest[0] == b';') {
        return State::Off;
    }
    let hex = std::str::from_utf8(&line[..end]).expect("hex digits are ASCII");
    match u64::from_str_radix(hex, 16) {
        Ok(0) => State::Trailers,
        Ok(n) => State::ChunkData(n),
        Err(_) => State::Off,
    }
}

/// hyper's `Content-Length` rule: ASCII digits only (no sign, no list).
fn digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() {
        return None;
    }
    v.iter().try_fold(0u64, |acc, &b| {
        if !b.is_ascii_digit() {
            return None;
        }
        acc.checked_mul(10)?.checked_add(u64::from(b - b'0'))
    })
}

fn strip_cr(line: &[u8]) -> &[u8] {
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim(mut b: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = b {
        b = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = b {
        b = rest;
    }
    b
}

#[cfg(test)]
mod tests;

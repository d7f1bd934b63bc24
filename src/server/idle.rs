//! Closing HTTP/2 (h2c) connections that sit idle.
//!
//! hyper closes an idle HTTP/1.1 keep-alive connection itself: its
//! `header_read_timeout` bounds the wait for the next request head. Its
//! HTTP/2 server has no such limit, so an h2c client could open
//! connections, send a request on each (or none) and hold them, and their
//! `max_connections` permits, for good. Envoy's `idle_timeout` and
//! HAProxy's `timeout client` close such connections; here an h2c
//! connection with no open stream for `header_read_timeout` (the same wait
//! an HTTP/1.1 connection gets) is closed:
//! - when it never carried a request, by dropping it (a client stalled in
//!   the preface or the SETTINGS exchange would not act on a GOAWAY);
//! - otherwise politely, with hyper's graceful shutdown (GOAWAY: the client
//!   knows no request of its was lost), and dropped if it has not closed
//!   within one more `header_read_timeout`.
//!
//! A stream counts as open from the moment hyper hands its request to the
//! service until hyper has dropped both its response body (all of it
//! queued for sending, or the stream reset) and, when the request is
//! proxied, its request body: a slow upstream, a long download or an
//! upload that outlasts its response keeps the connection, as a slow
//! HTTP/1.1 exchange does.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body as HttpBody, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use crate::body::{Body, BoxError};

/// The streams of one connection: how many are open, and since when the
/// number last changed.
pub struct Streams {
    state: Mutex<State>,
}

struct State {
    open: usize,
    /// When a stream last opened or closed (the connection's start before
    /// the first).
    changed: Instant,
    /// A stream was ever opened.
    served: bool,
}

impl Streams {
    pub fn new() -> Arc<Self> {
        Arc::new(Streams {
            state: Mutex::new(State {
                open: 0,
                changed: Instant::now(),
                served: false,
            }),
        })
    }

    /// Counts a stream open until the guard is dropped.
    pub fn open(self: &Arc<Self>) -> StreamGuard {
        let mut s = self.lock();
        s.open += 1;
        s.served = true;
        s.changed = Instant::now();
        StreamGuard(Arc::clone(self))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        // The state stays consistent across a panic: each update is whole.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// One open stream; dropping it closes the stream's count.
pub struct StreamGuard(Arc<Streams>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let mut s = self.0.lock();
        s.open -= 1;
        s.changed = Instant::now();
    }
}

/// A response body that keeps its stream counted open until hyper drops it
/// (the request body holds it too: see `body::Hold`).
/// (A struct, not `BodyExt::map_frame` with the guard in its closure:
/// `MapFrame` does not pass `size_hint` on, and h2 would lose the
/// response's length.)
pub struct Tracked {
    inner: Body,
    _stream: Arc<StreamGuard>,
}

impl Tracked {
    pub fn body(inner: Body, stream: Arc<StreamGuard>) -> Body {
        Body::new(Tracked {
            inner,
            _stream: stream,
        })
    }
}

impl HttpBody for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// `conn`, closed after `limit` without an open stream (see the module
/// docs). Resolves to `None` when it was dropped rather than finished.
pub struct Idle<C> {
    conn: Pin<Box<C>>,
    stop: fn(Pin<&mut C>),
    streams: Arc<Streams>,
    limit: Duration,
    sleep: Pin<Box<Sleep>>,
    /// When the connection was asked to finish (idle, or the drain).
    stopped: Option<Instant>,
}

impl<C: Future> Idle<C> {
    pub fn new(conn: C, stop: fn(Pin<&mut C>), streams: Arc<Streams>, limit: Duration) -> Self {
        Idle {
            conn: Box::pin(conn),
            stop,
            streams,
            limit,
            sleep: Box::pin(tokio::time::sleep(limit)),
            stopped: None,
        }
    }

    /// Asks the connection to finish; for [`super::drain::Drain::watch`].
    pub fn stop(mut self: Pin<&mut Self>) {
        let this = &mut *self;
        if this.stopped.is_none() {
            this.stopped = Some(Instant::now());
            (this.stop)(this.conn.as_mut());
        }
    }

    /// What to do now that the timer fired: `Some(deadline)` to look again
    /// then, `None` to drop the connection.
    fn on_timer(&mut self, now: Instant) -> Option<Instant> {
        let (open, changed, served) = {
            let s = self.streams.lock();
            (s.open, s.changed, s.served)
        };
        if open > 0 {
            // Busy: nothing to decide before the streams close.
            return Some(now + self.limit);
        }
        let quiet_since = self.stopped.map_or(changed, |at| at.max(changed));
        let idle_until = quiet_since + self.limit;
        if now < idle_until {
            return Some(idle_until);
        }
        if self.stopped.is_some() || !served {
            return None;
        }
        self.stopped = Some(now);
        (self.stop)(self.conn.as_mut());
        Some(now + self.limit)
    }
}

impl<C: Future> Future for Idle<C> {
    type Output = Option<C::Output>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        loop {
            if let Poll::Ready(out) = this.conn.as_mut().poll(cx) {
                return Poll::Ready(Some(out));
            }
            if this.sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            match this.on_timer(Instant::now()) {
                // Looped: the connection is polled again (it may finish at
                // once after a stop), and the timer registers.
                Some(next) => this.sleep.as_mut().reset(next),
                None => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};

    /// A connection that finishes once stopped, if `obeys`.
    struct Conn {
        stopped: Arc<AtomicBool>,
        obeys: bool,
    }

    impl Future for Conn {
        type Output = &'static str;
        fn poll(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<&'static str> {
            if self.obeys && self.stopped.load(Ordering::SeqCst) {
                Poll::Ready("finished")
            } else {
                Poll::Pending
            }
        }
    }

    fn stop(c: Pin<&mut Conn>) {
        c.stopped.store(true, Ordering::SeqCst);
    }

    const LIMIT: Duration = Duration::from_secs(10);

    fn idle(obeys: bool) -> (Idle<Conn>, Arc<Streams>, Arc<AtomicBool>) {
        let stopped = Arc::new(AtomicBool::new(false));
        let conn = Conn {
            stopped: Arc::clone(&stopped),
            obeys,
        };
        let streams = Streams::new();
        (
            Idle::new(conn, stop, Arc::clone(&streams), LIMIT),
            streams,
            stopped,
        )
    }

    /// Runs `fut` on paused time; returns its output and the virtual time
    /// it took, or `None` if it had not finished after `within`.
    async fn timed<F: Future>(fut: F, within: Duration) -> Option<(F::Output, Duration)> {
        let started = Instant::now();
        let out = tokio::time::timeout(within, fut).await.ok()?;
        Some((out, started.elapsed()))
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_never_opens_a_stream_is_dropped_after_the_limit() {
        let (idle, _streams, stopped) = idle(true);
        let (out, took) = timed(idle, LIMIT * 5).await.expect("closed");
        assert_eq!(out, None, "dropped, not asked to finish");
        assert!(!stopped.load(Ordering::SeqCst));
        assert!(took >= LIMIT && took < LIMIT * 2, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_asked_to_finish_a_limit_after_its_last_stream() {
        let (idle, streams, stopped) = idle(true);
        let task = tokio::spawn(timed(idle, LIMIT * 10));
        tokio::time::sleep(LIMIT / 2).await;
        let stream = streams.open();
        // Open for longer than the limit: the connection stays.
        tokio::time::sleep(LIMIT * 3).await;
        assert!(!stopped.load(Ordering::SeqCst));
        drop(stream);
        let closed_at = Instant::now();
        let (out, _) = task.await.unwrap().expect("closed");
        assert_eq!(out, Some("finished"));
        let after = closed_at.elapsed();
        assert!(
            after >= LIMIT && after < LIMIT * 2,
            "{after:?} after the stream"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ignores_the_goaway_is_dropped_a_limit_later() {
        let (idle, streams, stopped) = idle(false);
        drop(streams.open());
        let (out, took) = timed(idle, LIMIT * 10).await.expect("closed");
        assert_eq!(out, None);
        assert!(stopped.load(Ordering::SeqCst), "asked first");
        assert!(took >= LIMIT * 2 && took < LIMIT * 3, "{took:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_draining_connection_keeps_its_open_streams() {
        let (idle, streams, stopped) = idle(false);
        let stream = streams.open();
        let mut idle = Box::pin(idle);
        idle.as_mut().stop();
        assert!(stopped.load(Ordering::SeqCst));
        let task = tokio::spawn(timed(idle, LIMIT * 10));
        tokio::time::sleep(LIMIT * 4).await;
        assert!(!task.is_finished(), "a stream is still open");
        drop(stream);
        let (out, _) = task.await.unwrap().expect("dropped once quiet");
        assert_eq!(out, None);
    }
}

//! Graceful shutdown of a listener's connections.
//!
//! On [`Drain::start`] every watched connection is asked to finish: hyper
//! answers the request in flight, then closes (HTTP/1), or sends GOAWAY
//! (HTTP/2). hyper-util's `GracefulShutdown` does the same, but polls its
//! shutdown signal on every wake-up of every connection (about 180
//! instructions a request, measured with callgrind); a [`Watched`]
//! connection registers for the signal once and afterwards reads one atomic
//! flag per wake-up.
//!
//! Waiting for the connections to end is the caller's: the accept loop
//! waits until it has all its connection permits back.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};

use tokio::sync::Notify;
use tokio::sync::futures::OwnedNotified;

/// The shutdown signal every connection of a listener watches.
#[derive(Default)]
pub struct Drain {
    stopping: AtomicBool,
    notify: Arc<Notify>,
}

impl Drain {
    /// Asks every watched connection, now and later, to finish.
    pub fn start(&self) {
        // The flag first: a connection that registers after the wake-up
        // below still sees it on its first poll.
        self.stopping.store(true, Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    /// Resolves once the drain has started.
    pub async fn started(&self) {
        let signal = self.notify.notified();
        tokio::pin!(signal);
        signal.as_mut().enable();
        if !self.stopping.load(Ordering::Acquire) {
            signal.await;
        }
    }

    /// `conn`, which calls `stop` on itself once the drain has started.
    pub fn watch<C: Future>(self: &Arc<Self>, conn: C, stop: fn(Pin<&mut C>)) -> Watched<C> {
        Watched {
            conn: Box::pin(conn),
            stop,
            drain: Arc::clone(self),
            signal: Some(Box::pin(Arc::clone(&self.notify).notified_owned())),
            registered: false,
        }
    }
}

/// A connection future watched by a [`Drain`].
pub struct Watched<C> {
    conn: Pin<Box<C>>,
    stop: fn(Pin<&mut C>),
    drain: Arc<Drain>,
    /// Registered on the first poll (it wakes this task when the drain
    /// starts); `None` once `stop` has been called.
    signal: Option<Pin<Box<OwnedNotified>>>,
    registered: bool,
}

impl<C: Future> Future for Watched<C> {
    type Output = C::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<C::Output> {
        let this = &mut *self;
        if let Some(signal) = &mut this.signal {
            // The task's waker is handed over on the first poll only, and
            // kept: it stays valid for the task's life.
            if !this.registered {
                this.registered = true;
                let _ = signal.as_mut().poll(cx);
            }
            if this.drain.stopping.load(Ordering::Acquire) {
                this.signal = None;
                (this.stop)(this.conn.as_mut());
            }
        }
        this.conn.as_mut().poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A connection that ends once stopped.
    struct Conn(
        Option<tokio::sync::oneshot::Receiver<()>>,
        Option<tokio::sync::oneshot::Sender<()>>,
    );

    impl Future for Conn {
        type Output = &'static str;
        fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<&'static str> {
            match self.0.as_mut().map(|rx| Pin::new(rx).poll(cx)) {
                Some(Poll::Ready(_)) => Poll::Ready("stopped"),
                _ => Poll::Pending,
            }
        }
    }

    fn stop(mut c: Pin<&mut Conn>) {
        if let Some(tx) = c.1.take() {
            let _ = tx.send(());
        }
    }

    fn conn() -> Conn {
        let (tx, rx) = tokio::sync::oneshot::channel();
        Conn(Some(rx), Some(tx))
    }

    #[tokio::test]
    async fn an_idle_connection_is_stopped_when_the_drain_starts() {
        let drain = Arc::new(Drain::default());
        let task = tokio::spawn(drain.watch(conn(), stop));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!task.is_finished());
        drain.start();
        let out = tokio::time::timeout(Duration::from_secs(2), task).await;
        assert_eq!(out.unwrap().unwrap(), "stopped");
    }

    #[tokio::test]
    async fn a_connection_watched_after_the_start_is_stopped_at_once() {
        let drain = Arc::new(Drain::default());
        drain.start();
        let out = tokio::time::timeout(Duration::from_secs(2), drain.watch(conn(), stop)).await;
        assert_eq!(out.unwrap(), "stopped");
    }
}

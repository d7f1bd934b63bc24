//! Timers reused across the requests of a connection.
//!
//! Every request on a keep-alive connection arms two timers: hyper's
//! `header_read_timeout` for the next request head, and the upstream
//! `timeout`. A fresh `tokio::time::Sleep` each time is registered in
//! tokio's timer wheel and removed again under the driver's lock: about
//! 1,300 instructions a request for the two (callgrind). A connection's
//! requests come one after another, each deadline later than the last,
//! and tokio moves a registered timer to a later deadline with one atomic
//! compare-and-swap (the wheel catches up when the old deadline passes).
//! So a connection keeps one `Sleep` per purpose in a [`SleepSlot`] and
//! lends it to each request; a second concurrent request (HTTP/2) finds
//! the slot empty and makes its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// One reusable timer.
#[derive(Default)]
pub struct SleepSlot {
    idle: Mutex<Option<Pin<Box<Sleep>>>>,
}

impl SleepSlot {
    /// A timer that fires at `deadline`: the slot's own, moved there, when
    /// no one else holds it.
    pub fn sleep_until(self: &Arc<Self>, deadline: Instant) -> Lease {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).take();
        let sleep = match idle {
            Some(mut sleep) => {
                sleep.as_mut().reset(deadline);
                sleep
            }
            None => Box::pin(tokio::time::sleep_until(deadline)),
        };
        Lease {
            sleep: Some(sleep),
            slot: Arc::clone(self),
        }
    }

    /// `fut`, or `Err(Elapsed)` if it has not finished by `deadline`.
    pub async fn within<F: Future>(
        self: &Arc<Self>,
        deadline: Instant,
        fut: F,
    ) -> Result<F::Output, Elapsed> {
        let mut fut = std::pin::pin!(fut);
        let mut timer: Option<Lease> = None;
        std::future::poll_fn(|cx| {
            if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                return Poll::Ready(Ok(out));
            }
            // Armed only once `fut` has to wait.
            let timer = timer.get_or_insert_with(|| self.sleep_until(deadline));
            match Pin::new(timer).poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
                Poll::Pending => Poll::Pending,
            }
        })
        .await
    }
}

/// The time limit of [`SleepSlot::within`] passed.
#[derive(Debug)]
pub struct Elapsed;

/// A timer lent out by a [`SleepSlot`], given back when dropped.
pub struct Lease {
    sleep: Option<Pin<Box<Sleep>>>,
    slot: Arc<SleepSlot>,
}

impl Future for Lease {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => sleep.as_mut().poll(cx),
            None => Poll::Ready(()),
        }
    }
}

impl Drop for Lease {
    fn drop(&mut self) {
        if let Some(sleep) = self.sleep.take() {
            let mut idle = self.slot.idle.lock().unwrap_or_else(|p| p.into_inner());
            if idle.is_none() {
                *idle = Some(sleep);
            }
        }
    }
}

impl hyper::rt::Sleep for Lease {}

/// hyper's HTTP/1 timer for one connection (it times request heads),
/// lending the connection's [`SleepSlot`].
#[derive(Clone, Default)]
pub struct ConnTimer(Arc<SleepSlot>);

impl hyper::rt::Timer for ConnTimer {
    fn sleep(&self, duration: Duration) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.0.sleep_until(Instant::now() + duration))
    }

    fn sleep_until(&self, deadline: std::time::Instant) -> Pin<Box<dyn hyper::rt::Sleep>> {
        Box::pin(self.0.sleep_until(deadline.into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lent_timer_fires_at_its_new_deadline() {
        let slot = Arc::new(SleepSlot::default());
        let start = Instant::now();
        // The first lease arms the slot's timer for 10 s, then gives it back.
        drop(slot.sleep_until(start + Duration::from_secs(10)));
        // Reused with a later deadline, it fires then, not at 10 s.
        slot.sleep_until(start + Duration::from_secs(15)).await;
        assert_eq!(start.elapsed(), Duration::from_secs(15));
        // And with an earlier one after it fired, at that one.
        let again = Instant::now();
        slot.sleep_until(again + Duration::from_secs(1)).await;
        assert_eq!(again.elapsed(), Duration::from_secs(1));
    }

    #[tokio::test(start_paused = true)]
    async fn within_times_out_and_lets_a_fast_future_through() {
        let slot = Arc::new(SleepSlot::default());
        let slow = slot.within(
            Instant::now() + Duration::from_secs(2),
            std::future::pending::<()>(),
        );
        assert!(slow.await.is_err());
        let fast = slot.within(Instant::now() + Duration::from_secs(2), async {
            tokio::time::sleep(Duration::from_secs(1)).await;
            7
        });
        assert_eq!(fast.await.unwrap(), 7);
        // Two at once: the second makes its own timer.
        let a = slot.within(
            Instant::now() + Duration::from_secs(3),
            std::future::pending::<()>(),
        );
        let b = slot.within(
            Instant::now() + Duration::from_secs(1),
            std::future::pending::<()>(),
        );
        let start = Instant::now();
        let (a, b) = tokio::join!(a, b);
        assert!(a.is_err() && b.is_err());
        assert_eq!(start.elapsed(), Duration::from_secs(3));
    }
}

//! Timers reused across the requests of a connection, and moved later
//! for free.
//!
//! Every request on a keep-alive connection arms two timers: hyper's
//! `header_read_timeout` for the next request head, and the upstream
//! `timeout`. A fresh `tokio::time::Sleep` each time is registered in
//! tokio's timer wheel and removed again under the driver's lock; even
//! moving one registered `Sleep` (`Sleep::reset`, what hyper-util's
//! `TokioTimer` does) costs about 1,400 instructions a request for the
//! head timer alone (callgrind, a bare hyper proxy: 22.9k -> 24.8k Ir/req).
//!
//! Yet a connection's deadlines only ever move later, by a few
//! milliseconds a request, and almost never pass. So a [`LazySleep`] leaves
//! its `Sleep` where it was first armed and only records the new deadline;
//! when the `Sleep` fires early (once per timeout period on a busy
//! connection) it is moved on to the recorded deadline. Moving a deadline
//! later is a comparison and a store.
//!
//! A connection keeps one per purpose in a [`SleepSlot`], lent to each
//! request: to hyper for the head (see [`ConnTimer`]) and to the upstream
//! exchange. A second concurrent request (HTTP/2) finds the slot empty
//! and makes its own.

use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// A timer for `deadline` whose tokio `Sleep` may be armed earlier: see the
/// module docs.
pub struct LazySleep {
    sleep: Pin<Box<Sleep>>,
    /// When `sleep` fires; never later than `deadline`.
    armed: Instant,
    deadline: Instant,
}

impl LazySleep {
    pub fn new(deadline: Instant) -> Self {
        LazySleep {
            sleep: Box::pin(tokio::time::sleep_until(deadline)),
            armed: deadline,
            deadline,
        }
    }

    /// Fires at `deadline` instead. Later than where the `Sleep` is armed,
    /// nothing but the deadline changes.
    pub fn reset(&mut self, deadline: Instant) {
        if deadline < self.armed {
            self.sleep.as_mut().reset(deadline);
            self.armed = deadline;
        }
        self.deadline = deadline;
    }
}

impl Future for LazySleep {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Every poll goes to tokio: a poll it refuses for want of budget
        // registers nothing, so skipping later polls from the same task
        // (tried: about 0.2k instructions a request) could leave the timer
        // unarmed for good.
        let this = &mut *self;
        loop {
            ready!(this.sleep.as_mut().poll(cx));
            if this.armed >= this.deadline {
                return Poll::Ready(());
            }
            // Fired early: on to the deadline recorded since.
            this.armed = this.deadline;
            this.sleep.as_mut().reset(this.deadline);
        }
    }
}

/// One reusable timer.
#[derive(Default)]
pub struct SleepSlot {
    idle: Mutex<Option<LazySleep>>,
}

impl SleepSlot {
    /// A timer that fires at `deadline`: the slot's own, moved there, when
    /// no one else holds it.
    pub fn sleep_until(self: &Arc<Self>, deadline: Instant) -> Lease {
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).take();
        let sleep = match idle {
            Some(mut sleep) => {
                sleep.reset(deadline);
                sleep
            }
            None => LazySleep::new(deadline),
        };
        Lease {
            sleep: Some(sleep),
            slot: Arc::clone(self),
        }
    }

    /// `fut`, or `Err(Elapsed)` if it has not finished by `deadline`.
    ///
    /// A plain struct rather than an `async fn`: an `async fn` keeps its
    /// argument and its pinned copy side by side, doubling `fut`'s size in
    /// every future that awaits this one (see [`Within`]).
    pub fn within<F: Future>(self: &Arc<Self>, deadline: Instant, fut: F) -> Within<'_, F> {
        Within {
            fut,
            slot: self,
            deadline,
            timer: None,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`SleepSlot::within`]. Its timer is armed only once
    /// `fut` has to wait.
    pub struct Within<'s, F> {
        #[pin]
        fut: F,
        slot: &'s Arc<SleepSlot>,
        deadline: Instant,
        timer: Option<Lease>,
    }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Poll::Ready(out) = this.fut.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        let (slot, deadline) = (*this.slot, *this.deadline);
        let timer = this.timer.get_or_insert_with(|| slot.sleep_until(deadline));
        match Pin::new(timer).poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(Elapsed)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// The time limit of [`SleepSlot::within`] passed.
#[derive(Debug)]
pub struct Elapsed;

/// A timer lent out by a [`SleepSlot`], given back when dropped.
pub struct Lease {
    sleep: Option<LazySleep>,
    slot: Arc<SleepSlot>,
}

impl Future for Lease {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.sleep {
            Some(sleep) => Pin::new(sleep).poll(cx),
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
/// lending the connection's [`SleepSlot`]: hyper drops its timer once a
/// head has arrived and asks for a new one for the next.
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
    async fn a_lazy_sleep_fires_at_its_last_deadline_early_or_late() {
        let start = Instant::now();
        let secs = Duration::from_secs;
        // Moved later: fires then, not where it was first armed.
        let mut sleep = LazySleep::new(start + secs(10));
        sleep.reset(start + secs(25));
        (&mut sleep).await;
        assert_eq!(start.elapsed(), secs(25));
        // Again later, after it fired.
        sleep.reset(start + secs(27));
        (&mut sleep).await;
        assert_eq!(start.elapsed(), secs(27));
        // Moved earlier: fires at the earlier deadline.
        let mut sleep = LazySleep::new(start + secs(100));
        sleep.reset(start + secs(30));
        (&mut sleep).await;
        assert_eq!(start.elapsed(), secs(30));
    }

    /// What an HTTP/2 connection does: its streams run on tasks of their
    /// own and take turns with the connection's upstream timer.
    #[tokio::test(start_paused = true)]
    async fn a_timer_lent_to_one_task_then_another_wakes_the_second() {
        let slot = Arc::new(SleepSlot::default());
        let start = Instant::now();
        let secs = Duration::from_secs;
        // The first task waits on the timer (it registers its waker), and
        // ends before the deadline.
        let first = {
            let slot = Arc::clone(&slot);
            tokio::spawn(async move {
                let pending = slot.within(start + secs(10), std::future::pending::<()>());
                tokio::time::timeout(secs(1), pending).await.is_err()
            })
        };
        assert!(first.await.unwrap(), "the outer timeout ended it");
        // The second task, same slot, a later deadline: woken at it.
        let second = {
            let slot = Arc::clone(&slot);
            tokio::spawn(async move {
                slot.within(start + secs(20), std::future::pending::<()>())
                    .await
            })
        };
        let ended = tokio::time::timeout(secs(60), second).await;
        assert!(ended.expect("woken at its deadline").unwrap().is_err());
        assert_eq!(start.elapsed(), secs(20));
    }

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

//! Deadlines on a connection's one timer.
//!
//! Registering a tokio timer and removing it again for every request is a measurable part of
//! a proxied request's cost (benches/README.md, "Why the hot path is shaped so"). The
//! listener loop keeps one timer per connection instead and lends it to each wait: a wait moves it earlier only when
//! its deadline is before the timer's, and moves it on when it fires before the deadline it
//! stands for. A keep-alive connection whose waits' deadlines all lie beyond the timer's
//! (the usual case: each request's deadline is later than the last) registers it again only
//! when it fires, once per timeout, not once per request.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::time::{Duration, Instant, Sleep};

/// A connection's one timer. Use it from that connection's task only: it keeps the waker it
/// was last polled with.
pub struct Timer {
    sleep: Pin<Box<Sleep>>,
    /// The timer holds the task's waker: until it fires, polling it again at each wake-up of
    /// the task for its sockets would change nothing.
    registered: bool,
}

impl Timer {
    /// A timer armed `after` from now.
    #[must_use]
    pub fn new(after: Duration) -> Self {
        Self {
            sleep: Box::pin(tokio::time::sleep(after)),
            registered: false,
        }
    }

    /// Returns once `due` has passed.
    pub fn until(&mut self, due: Instant) -> impl Future<Output = ()> + '_ {
        self.not_after(due);
        std::future::poll_fn(move |cx| self.poll_until(due, cx))
    }

    /// `future`'s output, or `None` once `due` has passed first. The future is lent, pinned
    /// where it is: a request's future is large, and moving it in here cost several copies.
    pub fn within<'a, F: Future>(
        &'a mut self,
        due: Instant,
        mut future: Pin<&'a mut F>,
    ) -> impl Future<Output = Option<F::Output>> + 'a {
        self.not_after(due);
        std::future::poll_fn(move |cx| match future.as_mut().poll(cx) {
            Poll::Ready(output) => Poll::Ready(Some(output)),
            Poll::Pending => self.poll_until(due, cx).map(|()| None),
        })
    }

    /// Moves the timer earlier when `due` is before its deadline.
    fn not_after(&mut self, due: Instant) {
        if self.sleep.deadline() > due {
            self.sleep.as_mut().reset(due);
            self.registered = false;
        }
    }

    fn poll_until(&mut self, due: Instant, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            std::task::ready!(self.poll_fired(cx));
            if Instant::now() >= due {
                return Poll::Ready(());
            }
            // Fired for an earlier wait's deadline.
            self.sleep.as_mut().reset(due);
        }
    }

    /// Polls the timer, unless it holds the task's waker and has not fired.
    fn poll_fired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let elapsed = self.sleep.is_elapsed();
        poll_kept(self.sleep.as_mut(), &mut self.registered, elapsed, cx)
    }
}

/// Polls `wait`, a future kept across polls that holds the task's waker once it has returned
/// `Pending` (then `registered` is set), unless it is `registered` and not `may_be_ready`:
/// polling it again at every wake-up of the task for its sockets would change nothing. The
/// poll is outside tokio's budget: a wait the budget refused would be left without the waker,
/// and not polled again.
pub fn poll_kept<F: Future + ?Sized>(
    wait: Pin<&mut F>,
    registered: &mut bool,
    may_be_ready: bool,
    cx: &mut Context<'_>,
) -> Poll<F::Output> {
    if *registered && !may_be_ready {
        return Poll::Pending;
    }
    let polled = std::pin::pin!(tokio::task::coop::unconstrained(wait)).poll(cx);
    *registered = polled.is_pending();
    polled
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_leaves_the_timer_where_it_is() {
        let start = Instant::now();
        let mut timer = Timer::new(10 * SECOND);
        let output = timer
            .within(
                start + 30 * SECOND,
                std::pin::pin!(async {
                    tokio::time::sleep(SECOND).await;
                    7
                }),
            )
            .await;
        assert_eq!(output, Some(7));
        assert_eq!(timer.sleep.deadline(), start + 10 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_that_fires_early_is_moved_on_to_the_deadline() {
        let start = Instant::now();
        let mut timer = Timer::new(10 * SECOND);
        let output = timer
            .within(start + 30 * SECOND, std::pin::pin!(std::future::pending::<()>()))
            .await;
        assert_eq!(output, None);
        assert_eq!(start.elapsed(), 30 * SECOND);
        assert_eq!(timer.sleep.deadline(), start + 30 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_moves_the_timer_earlier() {
        let start = Instant::now();
        let mut timer = Timer::new(30 * SECOND);
        timer.until(start + 5 * SECOND).await;
        assert_eq!(start.elapsed(), 5 * SECOND);
        // A timer that has fired already waits again for the next deadline.
        let output = timer
            .within(start + 8 * SECOND, std::pin::pin!(std::future::pending::<()>()))
            .await;
        assert_eq!(output, None);
        assert_eq!(start.elapsed(), 8 * SECOND);
    }
}

//! Deadlines on a connection's one timer.
//!
//! Registering a tokio timer and removing it again cost about 600 instructions a request
//! (benches/README.md), once for the upstream's deadline alone. The listener loop keeps one
//! timer per connection instead and lends it to each wait: a wait moves it earlier only when
//! its deadline is before the timer's, and moves it on when it fires before the deadline it
//! stands for. A keep-alive connection whose waits' deadlines all lie beyond the timer's
//! (the usual case: each request's deadline is later than the last) registers it again only
//! when it fires, once per timeout, not once per request.

use std::future::Future;
use std::pin::Pin;

use tokio::time::{Instant, Sleep};

/// Returns once `due` has passed, waiting on `timer`.
pub async fn until(mut timer: Pin<&mut Sleep>, due: Instant) {
    if timer.deadline() > due {
        timer.as_mut().reset(due);
    }
    loop {
        timer.as_mut().await;
        if Instant::now() >= due {
            return;
        }
        // Fired for an earlier wait's deadline.
        timer.as_mut().reset(due);
    }
}

/// `future`'s output, or `None` once `due` has passed first, waiting on `timer`.
pub async fn within<F: Future>(timer: Pin<&mut Sleep>, due: Instant, future: F) -> Option<F::Output> {
    tokio::select! {
        biased;
        output = future => Some(output),
        () = until(timer, due) => None,
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_later_deadline_leaves_the_timer_where_it_is() {
        let start = Instant::now();
        let timer = tokio::time::sleep(10 * SECOND);
        tokio::pin!(timer);
        let output = within(timer.as_mut(), start + 30 * SECOND, async {
            tokio::time::sleep(SECOND).await;
            7
        })
        .await;
        assert_eq!(output, Some(7));
        assert_eq!(timer.deadline(), start + 10 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn a_timer_that_fires_early_is_moved_on_to_the_deadline() {
        let start = Instant::now();
        let timer = tokio::time::sleep(10 * SECOND);
        tokio::pin!(timer);
        let output = within(timer.as_mut(), start + 30 * SECOND, std::future::pending::<()>()).await;
        assert_eq!(output, None);
        assert_eq!(start.elapsed(), 30 * SECOND);
        assert_eq!(timer.deadline(), start + 30 * SECOND);
    }

    #[tokio::test(start_paused = true)]
    async fn an_earlier_deadline_moves_the_timer_earlier() {
        let start = Instant::now();
        let timer = tokio::time::sleep(30 * SECOND);
        tokio::pin!(timer);
        until(timer.as_mut(), start + 5 * SECOND).await;
        assert_eq!(start.elapsed(), 5 * SECOND);
        // A timer that has fired already waits again for the next deadline.
        let output = within(timer.as_mut(), start + 8 * SECOND, std::future::pending::<()>()).await;
        assert_eq!(output, None);
        assert_eq!(start.elapsed(), 8 * SECOND);
    }
}

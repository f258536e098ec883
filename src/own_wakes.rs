//! A connection's task, polled again for the wakes it makes of itself
//! instead of being rescheduled for them.
//!
//! One task serves a client's connection: hyper's server, the handler, and
//! the upstream connection it drives (`proxy::pool`). These parts wake each
//! other through hyper's channels, and since they all run in the one task,
//! such a wake arrives while that task is running. Two do so on every
//! request: the handler taking the request body wakes hyper's server to send
//! more, and the relay taking a chunk of the answer wakes the upstream
//! connection to read more. tokio cannot tell that the task will look at
//! both anyway: a task woken while it runs is put back on the run queue as a
//! yield, which also wakes a parked worker thread (a futex call and a
//! context switch), and it is then polled once more for nothing.
//! BENCHMARKS.md (issue 15) counts those wakes.
//!
//! [`own_wakes`] polls the task's future with a waker of its own. A wake that
//! arrives while that poll runs (from this thread or another) only marks it,
//! and the future is polled again at once if it was going to return
//! `Pending`; a wake at any other time goes to the task's own waker, as if
//! there were no wrapper.

use std::future::{poll_fn, Future};
use std::pin::pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// How often a future is polled again for wakes made during its poll before
/// the wake is handed to the scheduler after all. A future that wakes itself
/// to yield (hyper's server after 16 rounds of reading and writing, tokio's
/// resources once the task's budget is spent) thus still yields, only later,
/// and the worker gets to run its other tasks.
const MAX_ROUNDS: usize = 4;

const IDLE: u8 = 0;
const POLLING: u8 = 1;
const WOKEN: u8 = 2;

struct Hook {
    state: AtomicU8,
    task: AtomicWaker,
}

impl Wake for Hook {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        // During a poll, the mark is enough: the poll looks at it before it
        // returns. Between polls, the task is woken.
        let marked =
            self.state
                .compare_exchange(POLLING, WOKEN, Ordering::AcqRel, Ordering::Acquire);
        if marked == Err(IDLE) {
            self.task.wake();
        }
    }
}

/// Runs `future`, polling it again for its own wakes. Everything in it is
/// given the same waker, so hyper keeps one clone of it however often it is
/// polled.
pub async fn own_wakes<F: Future>(future: F) -> F::Output {
    let mut future = pin!(future);
    let hook = Arc::new(Hook {
        state: AtomicU8::new(IDLE),
        task: AtomicWaker::new(),
    });
    let waker = Waker::from(Arc::clone(&hook));
    poll_fn(|cx| {
        hook.task.register(cx.waker());
        let mut own = Context::from_waker(&waker);
        for _ in 0..MAX_ROUNDS {
            hook.state.store(POLLING, Ordering::Release);
            let polled = future.as_mut().poll(&mut own);
            // One swap, so a wake is either seen here or sent to the task.
            let woken = hook.state.swap(IDLE, Ordering::AcqRel) == WOKEN;
            if polled.is_ready() || !woken {
                return polled;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicUsize;

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `own_wakes` of a future made of `poll` once, with a waker that
    /// counts the task's wakes; returns what it gave and that count.
    fn poll_once<T>(poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> (Poll<T>, usize) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let polled = pin!(own_wakes(poll_fn(poll))).poll(&mut cx);
        (polled, count.0.load(Ordering::SeqCst))
    }

    #[test]
    fn a_wake_during_the_poll_polls_again_instead_of_waking_the_task() {
        let mut rounds = 0;
        let woken = poll_once(|cx| {
            rounds += 1;
            if rounds == 1 {
                // Twice, the second by value: it finds the mark made.
                cx.waker().wake_by_ref();
                let kept = cx.waker().clone();
                kept.wake();
                return Poll::Pending;
            }
            Poll::Ready(rounds)
        });
        assert_eq!(woken, (Poll::Ready(2), 0));
    }

    #[test]
    fn a_wake_after_the_poll_reaches_the_task() {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let kept = std::cell::RefCell::new(None);
        let mut future = pin!(own_wakes(poll_fn(|cx| {
            *kept.borrow_mut() = Some(cx.waker().clone());
            Poll::<()>::Pending
        })));
        assert!(future.as_mut().poll(&mut cx).is_pending());
        let kept = kept.borrow_mut().take().expect("registered");
        kept.wake_by_ref();
        assert_eq!(count.0.load(Ordering::SeqCst), 1);
        // Polled again, it is woken again by the same waker.
        assert!(future.as_mut().poll(&mut cx).is_pending());
        kept.wake();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
    }

    #[test]
    fn a_future_that_keeps_waking_itself_is_handed_to_the_scheduler() {
        let mut rounds = 0;
        let woken = poll_once(|cx| {
            rounds += 1;
            cx.waker().wake_by_ref();
            Poll::<()>::Pending
        });
        assert_eq!(woken, (Poll::Pending, 1));
        assert_eq!(rounds, MAX_ROUNDS);
    }

    #[test]
    fn a_wake_from_another_thread_during_the_poll_is_not_lost() {
        let mut rounds = 0;
        let woken = poll_once(|cx| {
            rounds += 1;
            if rounds == 1 {
                let other = cx.waker().clone();
                std::thread::spawn(move || other.wake())
                    .join()
                    .expect("thread");
                return Poll::Pending;
            }
            Poll::Ready(())
        });
        assert_eq!((woken, rounds), ((Poll::Ready(()), 0), 2));
    }
}

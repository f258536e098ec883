//! A connection's task, polled again for the wakes it makes of itself
//! instead of being re-queued for them.
//!
//! One task serves a client's connection: hyper's server, the handler, and
//! the upstream connection it drives (`proxy::pool`). These parts wake each
//! other through hyper's body channels, and since they all run in the one
//! task, such a wake arrives while that task is running. Two do so on every
//! request: hyper 1.12's channel wakes its sender each time the receiver
//! takes a chunk, whether or not the sender waits, so the handler taking
//! the request body wakes hyper's server, and the relay taking a chunk of
//! the answer wakes the upstream connection. tokio cannot tell that the
//! task is about to look at both anyway: a task woken while it runs is put
//! back at the end of the run queue as a yield, and if a worker thread is
//! parked (and none is already looking for work) it is woken too (a futex
//! call and a context switch), only to find the task's next poll.
//! BENCHMARKS.md (issue 15, ninth round) counts those wakes.
//!
//! [`OwnWakes`] polls the task's future with a waker of its own. A wake
//! that arrives while that poll runs (from this thread or another) only
//! marks it, and the future is polled again at once if it was about to
//! return `Pending`; a wake at any other time, between two rounds
//! included, goes to the task's own waker, as if there were no wrapper.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};

use futures_util::task::AtomicWaker;

/// How many times a future is polled in a row for the wakes made during its
/// own polls before such a wake is handed to the scheduler after all. A
/// future that wakes itself to yield (hyper's server, after 16 rounds of
/// reading and writing) thus still yields, three times later at most, and
/// the worker gets to run its other tasks. tokio's own yields are deferred
/// until the poll is over, so they are not marks; and once the task's
/// cooperative budget is spent, the wrapper stops polling again at once.
const MAX_ROUNDS: usize = 3;

/// Bits of [`Hook::state`].
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
        // returns. Between polls, the task is woken. Every wake writes the
        // mark, so the poll's swap sees what each one made ready, not only
        // the first's.
        if self.state.fetch_or(WOKEN, Ordering::AcqRel) & POLLING == 0 {
            self.task.wake();
        }
    }
}

pin_project_lite::pin_project! {
    /// A future polled again for its own wakes. Everything in it is given
    /// the same waker, so hyper keeps one clone of it however often it is
    /// polled.
    pub struct OwnWakes<F> {
        #[pin]
        future: F,
        hook: Arc<Hook>,
        waker: Waker,
    }
}

impl<F: Future> OwnWakes<F> {
    pub fn new(future: F) -> Self {
        let hook = Arc::new(Hook {
            state: AtomicU8::new(0),
            task: AtomicWaker::new(),
        });
        let waker = Waker::from(Arc::clone(&hook));
        Self {
            future,
            hook,
            waker,
        }
    }
}

impl<F: Future> Future for OwnWakes<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let mut this = self.project();
        this.hook.task.register(cx.waker());
        let mut own = Context::from_waker(this.waker);
        for _ in 0..MAX_ROUNDS {
            this.hook.state.store(POLLING, Ordering::Release);
            let polled = this.future.as_mut().poll(&mut own);
            // One swap, so a wake is either seen here or sent to the task.
            let woken = this.hook.state.swap(0, Ordering::AcqRel) & WOKEN != 0;
            if polled.is_ready() || !woken {
                return polled;
            }
            if !tokio::task::coop::has_budget_remaining() {
                break;
            }
        }
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::future::poll_fn;
    use std::pin::pin;
    use std::sync::atomic::{AtomicBool, AtomicUsize};
    use std::sync::Mutex;
    use std::time::{Duration, Instant};

    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// Polls `OwnWakes` of a future made of `poll` once, with a waker that
    /// counts the task's wakes; returns what it gave and that count.
    fn poll_once<T>(poll: impl FnMut(&mut Context<'_>) -> Poll<T>) -> (Poll<T>, usize) {
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(Arc::clone(&count));
        let mut cx = Context::from_waker(&waker);
        let polled = pin!(OwnWakes::new(poll_fn(poll))).poll(&mut cx);
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
        let mut future = pin!(OwnWakes::new(poll_fn(|cx| {
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

    #[tokio::test(flavor = "current_thread")]
    async fn a_task_out_of_budget_is_not_polled_again() {
        let mut rounds = 0;
        let polled = poll_fn(|task| {
            let mut future = pin!(OwnWakes::new(poll_fn(|cx| {
                rounds += 1;
                while tokio::task::coop::has_budget_remaining() {
                    let _ = pin!(tokio::task::coop::consume_budget()).poll(cx);
                }
                cx.waker().wake_by_ref();
                Poll::<()>::Pending
            })));
            Poll::Ready(future.as_mut().poll(task))
        })
        .await;
        assert!(polled.is_pending());
        assert_eq!(rounds, 1);
    }

    struct Flag(AtomicBool);

    impl Wake for Flag {
        fn wake(self: Arc<Self>) {
            self.0.store(true, Ordering::Release);
        }
    }

    /// Another thread makes an event and wakes the future as soon as the
    /// future has seen the one before, so its wakes land all around the end
    /// of a poll, where a wake must be either seen or passed on. A lost one
    /// leaves that thread waiting for an event to be seen that never is.
    /// (From a review: it fails within a second, release or debug, with
    /// the end's one `swap` split into a load and a store.)
    #[test]
    fn no_wake_is_lost_around_the_end_of_a_poll() {
        if std::thread::available_parallelism().map_or(1, |n| n.get()) < 2 {
            return;
        }
        const STUCK: Duration = Duration::from_secs(2);
        let run_for = Duration::from_millis(800);
        let events = Arc::new(AtomicUsize::new(0));
        let seen = Arc::new(AtomicUsize::new(0));
        let done = Arc::new(AtomicBool::new(false));
        let waker_slot: Arc<Mutex<Option<Waker>>> = Arc::new(Mutex::new(None));

        let other = {
            let (events, seen, done, slot) = (
                Arc::clone(&events),
                Arc::clone(&seen),
                Arc::clone(&done),
                Arc::clone(&waker_slot),
            );
            std::thread::spawn(move || {
                let waker = loop {
                    if let Some(waker) = slot.lock().expect("slot").clone() {
                        break waker;
                    }
                    std::hint::spin_loop();
                };
                let started = Instant::now();
                let mut jitter = 0x9e37_79b9_7f4a_7c15_u64;
                let mut event = 0;
                let lost = loop {
                    if started.elapsed() > run_for {
                        break None;
                    }
                    jitter ^= jitter << 13;
                    jitter ^= jitter >> 7;
                    jitter ^= jitter << 17;
                    for _ in 0..(jitter & 63) {
                        std::hint::spin_loop();
                    }
                    event += 1;
                    events.store(event, Ordering::Release);
                    waker.wake_by_ref();
                    let waiting = Instant::now();
                    while seen.load(Ordering::Acquire) < event {
                        if waiting.elapsed() > STUCK {
                            break;
                        }
                        std::hint::spin_loop();
                    }
                    if seen.load(Ordering::Acquire) < event {
                        break Some(event);
                    }
                };
                done.store(true, Ordering::Release);
                waker.wake_by_ref();
                (lost, event)
            })
        };

        let flag = Arc::new(Flag(AtomicBool::new(false)));
        let task = Waker::from(Arc::clone(&flag));
        let mut cx = Context::from_waker(&task);
        let mut future = pin!(OwnWakes::new(poll_fn(|cx| {
            waker_slot
                .lock()
                .expect("slot")
                .get_or_insert_with(|| cx.waker().clone());
            if done.load(Ordering::Acquire) {
                return Poll::Ready(());
            }
            seen.store(events.load(Ordering::Acquire), Ordering::Release);
            Poll::Pending
        })));
        // An executor of one task: it polls only when the task is woken.
        while future.as_mut().poll(&mut cx).is_pending() {
            while !flag.0.swap(false, Ordering::AcqRel) {
                std::hint::spin_loop();
            }
        }
        let (lost, events) = other.join().expect("thread");
        assert_eq!(lost, None, "a wake was lost, after {events} events");
        assert!(events > 1_000, "only {events} events");
    }
}

//! One request in flight per token.
//!
//! [`Slots::try_acquire`] either returns a [`SlotGuard`] or `None` at once; it
//! never waits. The guard frees the slot when it is dropped, and the proxy
//! moves it into the response body, so the slot is held until the body has
//! been sent and is freed on every other way out too: an error, a timeout, a
//! panic (drop runs while unwinding), or a client that disconnects (hyper
//! drops the body, or the handler future before the body exists).

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

/// The set of tokens (by `jti`) with a request in flight.
#[derive(Clone, Default)]
pub struct Slots {
    busy: Arc<Mutex<HashSet<u128>>>,
}

impl Slots {
    /// Takes the slot of `token_id`, or returns `None` if it is taken.
    pub fn try_acquire(&self, token_id: u128) -> Option<SlotGuard> {
        self.lock().insert(token_id).then(|| SlotGuard {
            slots: self.clone(),
            token_id,
        })
    }

    /// How many slots are taken now.
    pub fn in_flight(&self) -> usize {
        self.lock().len()
    }

    // The lock is held for one hash-set operation and never across an await,
    // so a std Mutex is right; a poisoned lock still holds a valid set.
    fn lock(&self) -> MutexGuard<'_, HashSet<u128>> {
        self.busy.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Holds one token's slot; dropping it frees the slot.
pub struct SlotGuard {
    slots: Slots,
    token_id: u128,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.slots.lock().remove(&self.token_id);
    }
}

impl std::fmt::Debug for SlotGuard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SlotGuard")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_taken_slot_refuses_a_second_holder_until_released() {
        let slots = Slots::default();
        let first = slots.try_acquire(7).expect("free");
        assert!(slots.try_acquire(7).is_none());
        assert!(
            slots.try_acquire(8).is_some(),
            "other tokens are independent"
        );
        drop(first);
        assert!(slots.try_acquire(7).is_some());
    }

    #[test]
    fn a_panic_while_holding_the_slot_releases_it() {
        let slots = Slots::default();
        let inner = slots.clone();
        let result = std::panic::catch_unwind(move || {
            let _guard = inner.try_acquire(1).expect("free");
            panic!("handler bug");
        });
        assert!(result.is_err());
        assert_eq!(slots.in_flight(), 0);
        assert!(slots.try_acquire(1).is_some());
    }

    #[test]
    fn exactly_one_of_many_racing_threads_gets_the_slot() {
        let slots = Slots::default();
        let barrier = Arc::new(std::sync::Barrier::new(16));
        let handles: Vec<_> = (0..16)
            .map(|_| {
                let (slots, barrier) = (slots.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    slots.try_acquire(42).map(|g| {
                        std::thread::sleep(std::time::Duration::from_millis(50));
                        drop(g);
                    })
                })
            })
            .collect();
        let winners = handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .count();
        assert_eq!(winners, 1);
    }
}

//! What a completion request holds while it runs: its token's slot, its
//! user's quota permit and its `/admin/active` entry. The response body owns
//! the [`Hold`] and gives everything back when the upstream is done (or the
//! client leaves), before the client sees the end of the body.

use futures_util::future::BoxFuture;

use crate::active::ActiveGuard;
use crate::limits::quota::Permit;
use crate::store::Lease;
use crate::upstreams::Place;
use crate::usage::Usage;

#[derive(Default, Debug)]
pub struct Hold {
    pub slot: Option<Lease>,
    pub charge: Option<Charge>,
    pub active: Option<ActiveGuard>,
    /// The request's place at the upstream that serves it (its
    /// `max_in_flight`).
    pub place: Option<Place>,
}

/// A quota permit and how to charge it when the request ends.
#[derive(Debug)]
pub struct Charge {
    permit: Permit,
    /// The prompt's tokens estimated from the body, charged when DeepSeek
    /// reported no usage (a stream the client abandoned).
    prompt_estimate: u64,
    /// False once DeepSeek answered with an error status: nothing to charge.
    billable: bool,
}

impl Charge {
    pub fn new(permit: Permit, prompt_estimate: u64) -> Self {
        Self {
            // Dropped before DeepSeek answered (the client left): the prompt
            // may have been processed, so it is charged.
            permit: permit.with_fallback(prompt_estimate),
            prompt_estimate,
            billable: true,
        }
    }
}

impl Hold {
    /// DeepSeek answered with an error status: the request costs nothing.
    pub fn not_billable(&mut self) {
        if let Some(charge) = &mut self.charge {
            charge.billable = false;
        }
    }

    /// Counts bytes relayed to the client, for `/admin/active`.
    pub fn relayed(&self, n: usize) {
        if let Some(active) = &self.active {
            active.relayed(n);
        }
    }

    /// Gives everything back: the slot, and the quota permit settled with
    /// DeepSeek's usage, else the estimate (prompt from the body, completion
    /// from the characters streamed). Resolves when both are done.
    pub fn release(
        &mut self,
        usage: Option<Usage>,
        estimated_completion: u64,
    ) -> BoxFuture<'static, ()> {
        self.active = None;
        self.place = None;
        let slot = self.slot.take().map(Lease::release);
        let settled = self.charge.take().map(|charge| {
            let tokens = match usage {
                _ if !charge.billable => 0,
                Some(u) => u.prompt_tokens + u.completion_tokens,
                None => charge.prompt_estimate + estimated_completion,
            };
            charge.permit.settle(tokens)
        });
        Box::pin(async move {
            if let Some(settled) = settled {
                settled.await;
            }
            if let Some(slot) = slot {
                slot.await;
            }
        })
    }
}

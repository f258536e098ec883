//! What a completion request holds while it runs: its token's slot, its
//! user's quota permit, its `/admin/active` entry and its bill. The response
//! body owns the [`Hold`] and gives everything back when the upstream is
//! done (or the client leaves), before the client sees the end of the body.

use futures_util::future::BoxFuture;

use crate::access_log::RequestLog;
use crate::active::ActiveGuard;
use crate::limits::quota::{Charged, Permit};
use crate::store::Lease;
use crate::upstreams::Place;
use crate::usage::{Cost, PriceList, Prices, Usage};

#[derive(Default, Debug)]
pub struct Hold {
    pub slot: Option<Lease>,
    pub charge: Option<Permit>,
    pub active: Option<ActiveGuard>,
    /// The request's place at the upstream that serves it (its
    /// `max_in_flight`).
    pub place: Option<Place>,
    pub bill: Option<Bill>,
}

/// How a request is charged when it ends: tokens against quotas, money
/// against budgets, both written to its ledger row.
#[derive(Debug)]
pub struct Bill {
    /// The prices when it was sent; `None` for a model with no price.
    pub prices: Option<Prices>,
    /// The prompt's tokens estimated from the body, charged when DeepSeek
    /// reported no usage (a stream the client abandoned).
    pub prompt_estimate: u64,
    /// False once DeepSeek answered with an error status: nothing to charge.
    pub billable: bool,
    /// Where the charge is recorded (the log line and ledger row).
    pub log: RequestLog,
    /// Bytes relayed to the client.
    pub relayed: u64,
}

/// What a request was charged.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Billed {
    pub tokens: u64,
    /// `None` for a model with no price.
    pub cost: Option<Cost>,
}

impl Bill {
    /// DeepSeek's usage, else the estimate (prompt from the body, completion
    /// from the characters streamed), priced as sent.
    pub fn finish(&self, usage: Option<Usage>, estimated_completion: u64) -> Billed {
        if let Some(Prices {
            list: PriceList::ToolCall(per_call),
            currency,
        }) = self.prices
        {
            // A tool call is billed per call, and only when it answered.
            let answered = self.billable && self.relayed > 0;
            return Billed {
                tokens: 0,
                cost: Some(Cost {
                    micros: if answered { per_call } else { 0 },
                    estimated: false,
                    currency,
                }),
            };
        }
        let (usage, estimated) = match usage {
            _ if !self.billable => (Usage::default(), false),
            Some(u) => (u, false),
            None => (
                Usage {
                    prompt_tokens: self.prompt_estimate,
                    cache_miss_tokens: self.prompt_estimate,
                    completion_tokens: estimated_completion,
                    ..Usage::default()
                },
                true,
            ),
        };
        let cost = self.prices.map(|prices| Cost {
            micros: prices.list.cost(&usage),
            estimated,
            currency: prices.currency,
        });
        Billed {
            tokens: usage.prompt_tokens.saturating_add(usage.completion_tokens),
            cost,
        }
    }
}

impl Hold {
    /// DeepSeek answered with an error status: the request costs nothing.
    pub fn not_billable(&mut self) {
        if let Some(bill) = &mut self.bill {
            bill.billable = false;
        }
    }

    /// Counts bytes relayed to the client, for `/admin/active`.
    pub fn relayed(&mut self, n: usize) {
        if let Some(active) = &self.active {
            active.relayed(n);
        }
        if let Some(bill) = &mut self.bill {
            bill.relayed += n as u64;
        }
    }

    /// Gives everything back: the slot, and the quota permit settled with
    /// what the bill comes to, which is also recorded for the ledger.
    /// Resolves when both are done.
    pub fn release(
        &mut self,
        usage: Option<Usage>,
        estimated_completion: u64,
    ) -> BoxFuture<'static, ()> {
        self.active = None;
        self.place = None;
        let billed = self.bill.take().map(|bill| {
            let billed = bill.finish(usage, estimated_completion);
            bill.log.set_billed(billed);
            billed
        });
        let settled = self.charge.take().map(|permit| {
            let billed = billed.unwrap_or_default();
            permit.into_settle(Charged {
                tokens: billed.tokens,
                micros: billed.cost.map_or(0, |c| c.micros),
            })
        });
        // With Redis: one task sends both scripts together and waits for
        // both answers, and it runs to its end even if the response is
        // dropped meanwhile. In memory both are done already. (Taken last,
        // next to the spawn: nothing in between can panic and lose it.)
        let slot = self.slot.take().and_then(Lease::into_release);
        match (settled.flatten(), slot) {
            (None, None) => Box::pin(std::future::ready(())),
            (Some(one), None) | (None, Some(one)) => crate::store::in_background(one),
            (Some(settled), Some(slot)) => crate::store::in_background(Box::pin(async move {
                futures_util::future::join(settled, slot).await;
            })),
        }
    }
}

impl Drop for Hold {
    /// A hold dropped before it was released (the client left before
    /// DeepSeek answered) is released with no usage: the prompt is charged
    /// as estimated, since DeepSeek may have processed it.
    fn drop(&mut self) {
        drop(self.release(None, 0));
    }
}

//! A decision as its `switchpoint.v1.RouteDecision` message (`crate::proto`), serialized.

use std::cell::RefCell;

use super::{Decision, Router};
use crate::proto::{self, assign, assign_all, ProtoMessage as _};

thread_local! {
    /// The last decision written on this thread. The generated types own their strings, so a
    /// fresh message would allocate every name and reason of every answer; this one keeps their
    /// capacity, and writing the next decision allocates only the bytes it returns.
    static MESSAGE: RefCell<proto::RouteDecision> = RefCell::default();
}

impl Router {
    pub(super) fn encode_decision(&self, decision: &Decision) -> Vec<u8> {
        MESSAGE.with_borrow_mut(|message| {
            self.fill(message, decision);
            message.encode_to_vec()
        })
    }

    fn fill(&self, message: &mut proto::RouteDecision, decision: &Decision) {
        message
            .candidates
            .resize_with(decision.candidates.len(), proto::Candidate::default);
        for (slot, c) in message.candidates.iter_mut().zip(&decision.candidates) {
            slot.set_scored(self.name(c.index), self.provider(c.index), c);
        }
        message.set_chosen();
        message.level = decision.level.number();
        assign_all(
            &mut message.reasons,
            decision.reasons.iter().map(String::as_str),
        );
        assign(&mut message.strategy, &decision.strategy);
        message.weights = Some(proto::Weights::of(decision.weights));
        // Counts of a request gRPC let in (4 MiB by default) and a uint32 max_tokens.
        message.estimated_input_tokens = u32::try_from(decision.input_tokens).unwrap_or(u32::MAX);
        message.estimated_output_tokens = u32::try_from(decision.output_tokens).unwrap_or(u32::MAX);
        assign(&mut message.task_class, decision.task_class);
        message.complexity = proto::implicit(decision.complexity);
    }
}

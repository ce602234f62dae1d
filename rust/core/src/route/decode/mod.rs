//! `switchpoint.v1.RouteRequest` read from protobuf's wire format into its generated type
//! (`crate::proto`), and viewed as the `RouteInput` validation and routing read.
//!
//! Route is served from the request's bytes so that a call crosses into Rust once. prost does the
//! reading; `upb` first holds the bytes to the rules of the parser behind Python's protobuf
//! (upb), where prost's differ, so that Route and the services parsed by protobuf accept the same
//! bytes and read the same values. The Python tests check the result against protobuf's own parse
//! for arbitrary and damaged bytes.

mod upb;

use prost::Message as _;

use crate::error::{Refusal, Result};
use crate::proto;
use crate::route::request::{Message, Params, RouteInput, RoutingOptions};

/// The decoding failure as the caller reads it; which byte went wrong means nothing to a client.
fn malformed(what: &str) -> crate::CoreError {
    Refusal::invalid(
        "request",
        format!("is not a valid switchpoint.v1.RouteRequest ({what})"),
    )
}

/// A decoded `RouteRequest`; [`DecodedRoute::input`] is what routing reads.
#[derive(Debug, Clone, PartialEq)]
pub struct DecodedRoute(proto::RouteRequest);

/// A `RouteRequest` read from `bytes`.
///
/// # Errors
/// `Refused(InvalidRequest)` on field "request" when the bytes are not such a message.
pub fn route_request(bytes: &[u8]) -> Result<DecodedRoute> {
    let readable = upb::as_prost_reads(bytes)?;
    proto::RouteRequest::decode(&*readable)
        .map(DecodedRoute)
        // After the walk, what prost still refuses is a string that is not UTF-8, named by path.
        .map_err(|error| {
            let error = error.to_string();
            malformed(error.trim_start_matches("failed to decode Protobuf message: "))
        })
}

impl DecodedRoute {
    /// The request as validation and routing read it, borrowing its strings.
    pub fn input(&self) -> RouteInput<'_> {
        let request = &self.0;
        let routing = request.routing.as_ref();
        let params = request.params.as_ref();
        RouteInput {
            messages: request
                .messages
                .iter()
                .map(|m| Message {
                    role: &m.role,
                    content: &m.content,
                })
                .collect(),
            routing: routing.map(routing_options).unwrap_or_default(),
            params: Params {
                max_tokens: params.and_then(|p| p.max_tokens).map(i64::from),
                temperature: params.and_then(|p| p.temperature),
                top_p: params.and_then(|p| p.top_p),
                stop: params.map(|p| strs(&p.stop)).unwrap_or_default(),
            },
            request_id: &request.request_id,
            ..RouteInput::default()
        }
    }
}

fn strs(texts: &[String]) -> Vec<&str> {
    texts.iter().map(String::as_str).collect()
}

fn routing_options(routing: &proto::RoutingOptions) -> RoutingOptions<'_> {
    RoutingOptions {
        models: strs(&routing.models),
        stage: &routing.stage,
        strategy: &routing.strategy,
        weights: routing
            .weights
            .map(|w| [w.cost, w.latency, w.quality].map(Option::unwrap_or_default)),
        tenant: &routing.tenant,
        priority: i64::from(routing.priority),
        capabilities: strs(&routing.capabilities),
        max_cost_usd: routing.max_cost_usd,
        hedge: routing.hedge,
    }
}

#[cfg(test)]
mod tests;

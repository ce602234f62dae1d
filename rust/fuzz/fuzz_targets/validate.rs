//! Structured requests (any strings, numbers and lists) through validation and the router.
#![no_main]

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use switchpoint_core::{Limits, Message, Params, RouteInput, RoutingOptions, Stop};
use switchpoint_fuzz::{check_outcome, ROUTER};

fn strings<'a>(u: &mut Unstructured<'a>) -> Result<Vec<&'a str>> {
    u.arbitrary_iter()?.collect()
}

fn input<'a>(u: &mut Unstructured<'a>) -> Result<RouteInput<'a>> {
    let messages = u
        .arbitrary_iter::<(&str, &str)>()?
        .map(|pair| pair.map(|(role, content)| Message { role, content }))
        .collect::<Result<Vec<_>>>()?;
    let routing = RoutingOptions {
        models: strings(u)?,
        stage: u.arbitrary()?,
        strategy: u.arbitrary()?,
        weights: u.arbitrary()?,
        tenant: u.arbitrary()?,
        priority: i64::from(u.arbitrary::<i32>()?),
        capabilities: strings(u)?,
        max_cost_usd: u.arbitrary()?,
        hedge: u.arbitrary()?,
    };
    let params = Params {
        max_tokens: u.arbitrary::<Option<u32>>()?.map(i64::from),
        temperature: u.arbitrary()?,
        top_p: u.arbitrary()?,
        stop: strings(u)?,
    };
    Ok(RouteInput {
        messages,
        routing,
        params,
        request_id: u.arbitrary()?,
        cache_threshold: u.arbitrary()?,
        given: None,
        predicted: Vec::new(),
        explore_draw: u.arbitrary()?,
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(input) = input(&mut Unstructured::new(data)) else {
        return;
    };
    let validated = input.validate(&Limits::default());
    check_outcome(&validated);
    let decided = ROUTER.decide(&input, &[], Stop::never(), 0.0);
    check_outcome(&decided);
    // The router decides only what validation lets through, and refuses the rest as it did.
    if let Err(refused) = validated {
        assert_eq!(
            format!("{refused:?}"),
            format!("{:?}", decided.unwrap_err())
        );
    }
});

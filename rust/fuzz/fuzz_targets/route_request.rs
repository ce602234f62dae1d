//! Arbitrary bytes through Route's path: decode, validate, decide, encode the decision.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchpoint_core::{route_request, CoreError, Refusal, Stop};
use switchpoint_fuzz::{check_outcome, ROUTER};

fuzz_target!(|data: &[u8]| {
    match route_request(data) {
        Ok(decoded) => {
            let decided = ROUTER.decide(&decoded.input(), &[], Stop::never(), 0.0);
            check_outcome(&decided);
            if let Ok(decision) = decided {
                assert!(!ROUTER.encode(&decision).is_empty());
            }
        }
        Err(CoreError::Refused(Refusal::InvalidRequest { field, .. })) => {
            assert_eq!(field, "request");
        }
        Err(other) => panic!("{other:?}"),
    }
});

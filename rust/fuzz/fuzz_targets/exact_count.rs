//! Any text through tiktoken's two encodings: `toktok`'s count (unsafe code, in a dependency)
//! equals the regex and merge's. Worth a run under a sanitizer now and then, on nightly:
//! `cargo +nightly fuzz run --fuzz-dir rust/fuzz exact_count`.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchpoint_core::Stop;
use switchpoint_fuzz::EXACT;

fuzz_target!(|text: &str| {
    for (builtin, general) in EXACT.iter() {
        assert_eq!(builtin.counter_name(), "toktok");
        assert_eq!(
            builtin.count(text, Stop::never()).expect("never stopped"),
            general.count(text, Stop::never()).expect("never stopped"),
            "{text:?}"
        );
    }
});

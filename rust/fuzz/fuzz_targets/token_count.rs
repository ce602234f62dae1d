//! Any text through token counting (the estimate and a BPE) and the classifier.
#![no_main]

use libfuzzer_sys::fuzz_target;
use switchpoint_core::{classify, Message, Stop, Tokenizer};
use switchpoint_fuzz::BPE;

fuzz_target!(|text: &str| {
    let bpe = Tokenizer::Bpe(BPE.clone());
    for tokenizer in [Tokenizer::Estimate, bpe] {
        let count = tokenizer
            .count_text(text, Stop::never())
            .expect("never stopped");
        assert!(count <= text.len() as u64 && (count > 0) != text.is_empty());
        let messages = [Message {
            role: "user",
            content: text,
        }];
        assert!(
            tokenizer
                .count_messages(&messages, Stop::never())
                .expect("never stopped")
                >= count
        );
    }
    let class = classify(text, text.chars().count());
    assert!((0.0..=1.0).contains(&class.complexity));
});

//! The prompt classifier behind auto routing: a task class and a complexity in [0, 1], read from
//! the last user turn (its two ends, when long) with a handful of regular expressions, the
//! reasons for both, and how sure the reading is (`Classification::confidence`), so that an
//! unsure reading can be handed to a classifier model.
//!
//! It runs on every auto-routed request. In Python the same expressions were a fifth of a Route
//! call; here the four task patterns are one `RegexSet` pass (docs/benchmarks.md, "What it
//! took"). The output only picks weights and a capability hint: the scorer still ranks.

use std::sync::LazyLock;

use regex::bytes::{Regex, RegexSet};

/// Task classes in priority order: the first whose pattern matches wins; `chat` otherwise.
pub const TASK_CLASSES: [&str; 4] = ["code", "math", "summarize", "creative"];
pub const DEFAULT_TASK_CLASS: &str = "chat";

const TASK_PATTERNS: [&str; 4] = [
    concat!(
        r"(?i)```|\b(def|class|function|return|import|SELECT|const|let|var|fn|impl|struct)\b",
        r"|\b(python|javascript|typescript|rust|golang|java|sql|regex|bash|compile|",
        r"stack trace|traceback|bug|refactor|unit test)\b",
    ),
    concat!(
        r"(?i)\b(integral|derivative|equation|prove|theorem|lemma|probability|matrix|solve for)\b",
        r"|[0-9]\s*[-+*/^=]\s*[0-9]",
    ),
    r"(?i)\b(summari[sz]e|tl;?dr|extract|list the|key points)\b",
    r"(?i)\b(poem|story|haiku|lyrics|slogan|write a (song|tale))\b",
];

const HARD_MARKERS: &str = concat!(
    r"(?i)\b(step[- ]by[- ]step|prove|derive|analy[sz]e|design|architect\w*|trade-?offs?|",
    r"optimi[sz]e|compare|evaluate|explain why|justify|rigorous|edge cases?|concurren\w+|",
    r"distributed)\b",
);
const EASY_MARKERS: &str =
    r"(?i)^\s*(hi|hello|hey|thanks|thank you|what is|who is|when did|define|translate)\b";

/// Bytes read at each end of a longer message. A long prompt is context (documents, code, a
/// conversation) around an instruction at one end, and reading all of it made the classifier's
/// cost grow with the prompt (~2 ns a byte here: 100 KB took ~0.2 ms). Length still counts every
/// character.
const READ_AT_EACH_END: usize = 1024;

/// Characters of prompt at which length alone makes a request look fully hard.
const LONG_PROMPT_CHARS: f64 = 6000.0;
/// Below this many characters an easy-looking question counts as easy.
const SHORT_PROMPT_CHARS: usize = 400;

static TASKS: LazyLock<RegexSet> =
    LazyLock::new(|| RegexSet::new(TASK_PATTERNS.map(ascii_only)).expect("task patterns compile"));
static HARD: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&ascii_only(HARD_MARKERS)).expect("hard markers compile"));
static EASY: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(&ascii_only(EASY_MARKERS)).expect("easy markers compile"));

/// `pattern` matched over bytes with ASCII classes: `\b`, `\w`, `\s` and case folding. Unicode
/// ones cost the regex crate's lazy DFA dearly: a Unicode `\b` sends it to the `PikeVM` as soon as
/// the text holds one non-ASCII character (a 20 KB prompt with one accent then took
/// milliseconds), and Unicode case folding and `\w` made each byte cost ~10 ns even on ASCII
/// text. The markers are English words, so the only difference is that a non-ASCII letter now
/// separates words like a space.
fn ascii_only(pattern: &str) -> String {
    format!("(?-u){pattern}")
}

/// The task class of that name (one of `TASK_CLASSES` or `DEFAULT_TASK_CLASS`), as the
/// classifier names it.
pub fn task_class_named(name: &str) -> Option<&'static str> {
    TASK_CLASSES
        .into_iter()
        .chain([DEFAULT_TASK_CLASS])
        .find(|&class| class == name)
}

/// How sure the rules are of a task class: exactly one task pattern matched.
const ONE_TASK_MARKER: f64 = 1.0;
/// Several matched and the priority order chose among them.
const SEVERAL_TASK_MARKERS: f64 = 0.7;
/// None matched, but the turn reads as a short, simple question: chat it most likely is.
const SIMPLE_QUESTION: f64 = 0.8;
/// None matched: chat only by default.
const DEFAULTED_TO_CHAT: f64 = 0.4;
/// How far from the nearest auto threshold a complexity must be for the strategy it picks to be
/// sure; at a threshold the certainty is one half.
const SURE_MARGIN: f64 = 0.25;

/// What the classifier read, with the signals that explain the complexity.
#[derive(Debug, Clone, PartialEq)]
pub struct Classification {
    pub task_class: &'static str,
    pub complexity: f64,
    pub signals: Vec<String>,
    /// How sure the task class is, in [0, 1]: 1.0 when exactly one task pattern matched, 0.7
    /// when several did (the priority order chose), 0.8 for chat read from a short simple
    /// question, 0.4 for chat by default (nothing matched).
    pub task_certainty: f64,
}

impl Classification {
    /// How sure the reading is, in [0, 1], under auto thresholds `easy` and `hard`: the lesser of
    /// the task class's certainty and the complexity's. The complexity matters only through the
    /// strategy it picks, which flips at the two thresholds, so its certainty is one half at a
    /// threshold and grows with the distance to the nearest one, to 1.0 at `SURE_MARGIN` (0.25)
    /// or more: `0.5 + min(distance, 0.25) * 2`.
    pub fn confidence(&self, easy: f64, hard: f64) -> f64 {
        let distance = f64::min(
            (self.complexity - easy).abs(),
            (self.complexity - hard).abs(),
        );
        let complexity_certainty = 0.5 + distance.min(SURE_MARGIN) / SURE_MARGIN * 0.5;
        self.task_certainty.min(complexity_certainty)
    }
}

/// Classifies a conversation by its last user message (`last_user`), with length over the whole
/// of it (`total_chars`, in characters).
pub fn classify(last_user: &str, total_chars: usize) -> Classification {
    let read = ends(last_user);
    let found = read.map(|part| TASKS.matches(part.as_bytes()));
    let mut matched = (0..TASK_CLASSES.len()).filter(|&i| found.iter().any(|m| m.matched(i)));
    let first = matched.next();
    let task_class = first.map_or(DEFAULT_TASK_CLASS, |i| TASK_CLASSES[i]);
    let mut task_certainty = match (first, matched.next()) {
        (None, _) => DEFAULTED_TO_CHAT,
        (Some(_), None) => ONE_TASK_MARKER,
        (Some(_), Some(_)) => SEVERAL_TASK_MARKERS,
    };
    let mut signals = Vec::new();
    let mut complexity = 0.3;
    // Precision loss only past 2^52 characters.
    #[allow(clippy::cast_precision_loss)]
    let length_part = (total_chars as f64 / LONG_PROMPT_CHARS).min(1.0) * 0.35;
    if length_part >= 0.05 {
        signals.push(format!("{total_chars} characters"));
    }
    complexity += length_part;
    let mut hard_hits: Vec<String> = read
        .iter()
        .flat_map(|part| HARD.find_iter(part.as_bytes()))
        .map(|m| String::from_utf8_lossy(m.as_bytes()).to_lowercase())
        .collect();
    hard_hits.sort_unstable();
    hard_hits.dedup();
    if !hard_hits.is_empty() {
        // A handful of distinct words at most, so the cast cannot lose anything.
        #[allow(clippy::cast_precision_loss)]
        let hits = hard_hits.len() as f64;
        complexity += (0.15 * hits).min(0.45);
        signals.push(format!("asks to {}", hard_hits.join(", ")));
    }
    if task_class == "code" || task_class == "math" {
        complexity += 0.1;
        signals.push(format!("{task_class} task"));
    }
    if hard_hits.is_empty() && total_chars < SHORT_PROMPT_CHARS && EASY.is_match(read[0].as_bytes())
    {
        complexity -= 0.2;
        signals.push("short, simple question".to_owned());
        if first.is_none() {
            task_certainty = SIMPLE_QUESTION;
        }
    }
    Classification {
        task_class,
        complexity: f64::clamp(complexity, 0.0, 1.0),
        signals,
        task_certainty,
    }
}

/// The parts of `text` the classifier reads: all of it (and an empty tail) when short, else its
/// first and last `READ_AT_EACH_END` bytes, cut at character boundaries.
fn ends(text: &str) -> [&str; 2] {
    if text.len() <= 2 * READ_AT_EACH_END {
        return [text, ""];
    }
    let mut head_end = READ_AT_EACH_END;
    while !text.is_char_boundary(head_end) {
        head_end -= 1;
    }
    let mut tail_start = text.len() - READ_AT_EACH_END;
    while !text.is_char_boundary(tail_start) {
        tail_start += 1;
    }
    [&text[..head_end], &text[tail_start..]]
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The base complexity plus the length part for `total_chars` characters.
    fn base(total_chars: usize) -> f64 {
        0.3 + (total_chars as f64 / LONG_PROMPT_CHARS).min(1.0) * 0.35
    }

    #[test]
    fn plain_chat_is_chat_at_the_base_complexity() {
        let reading = classify("tell me about otters", 20);
        assert_eq!(reading.task_class, "chat");
        assert!((reading.complexity - base(20)).abs() < 1e-12);
        assert!(reading.signals.is_empty());
    }

    #[test]
    fn the_first_matching_task_class_wins() {
        // Both code ("python") and summarize ("summarize") match: code comes first.
        assert_eq!(
            classify("summarize this python file", 30).task_class,
            "code"
        );
        assert_eq!(
            classify("summarize this article", 30).task_class,
            "summarize"
        );
        assert_eq!(classify("what is 2 + 2", 13).task_class, "math");
        assert_eq!(classify("write a haiku", 13).task_class, "creative");
        assert_eq!(classify("```\nx\n```", 9).task_class, "code");
    }

    #[test]
    fn hard_markers_are_counted_once_each_sorted_and_capped() {
        let reading = classify(
            "Compare and EVALUATE, then compare again, step by step, and design it",
            60,
        );
        assert_eq!(
            reading.signals,
            vec!["asks to compare, design, evaluate, step by step".to_owned()]
        );
        // Four distinct markers, capped at three's worth.
        assert!((reading.complexity - (base(60) + 0.45)).abs() < 1e-12);
    }

    #[test]
    fn short_easy_questions_are_easier_unless_they_ask_for_hard_work() {
        let easy = classify("hello, what's up?", 17);
        assert!((easy.complexity - (base(17) - 0.2)).abs() < 1e-12);
        assert_eq!(easy.signals, vec!["short, simple question".to_owned()]);
        let hard = classify("what is the best design here?", 29);
        assert!(hard.complexity > base(29));
        let long = classify("hello", 1000);
        assert!(!long.signals.contains(&"short, simple question".to_owned()));
    }

    #[test]
    fn length_adds_up_to_a_third_and_says_so() {
        let reading = classify("tell me", 12_000);
        assert_eq!(reading.signals, vec!["12000 characters".to_owned()]);
        assert!((reading.complexity - 0.65).abs() < 1e-12);
        assert!(classify("tell me", 800).signals.is_empty());
    }

    #[test]
    fn non_ascii_text_reads_as_ascii_text_does() {
        let text = "Überprüfe, ob café und naïve prove step by step: ".repeat(500);
        let reading = classify(&text, text.chars().count());
        assert_eq!(reading.task_class, "math");
        assert!(reading
            .signals
            .iter()
            .any(|s| s == "asks to prove, step by step"));
        // A non-ASCII letter is a word boundary; an ASCII one still is not.
        assert!(classify("éprove", 6)
            .signals
            .iter()
            .any(|s| s.contains("prove")));
        assert!(!classify("xprove", 6)
            .signals
            .iter()
            .any(|s| s.contains("prove")));
    }

    #[test]
    fn a_long_message_is_read_at_its_ends() {
        let filler = "the otters swim ".repeat(200);
        let head = format!("write a poem. {filler}");
        assert_eq!(classify(&head, head.len()).task_class, "creative");
        let tail = format!("{filler} now refactor it");
        assert_eq!(classify(&tail, tail.len()).task_class, "code");
        // A word in the middle of a long message is context, not the request.
        let middle = format!("{filler} refactor {filler}");
        assert_eq!(classify(&middle, middle.len()).task_class, "chat");
        // Cuts land on character boundaries whatever the text.
        let wide = "é".repeat(2_000);
        let [first, last] = ends(&wide);
        assert!(first.len() <= READ_AT_EACH_END && last.len() <= READ_AT_EACH_END);
        assert!(first.len() >= READ_AT_EACH_END - 1 && last.len() >= READ_AT_EACH_END - 1);
    }

    #[test]
    fn task_certainty_says_how_the_class_was_decided() {
        assert!((classify("write a haiku", 13).task_certainty - ONE_TASK_MARKER).abs() < 1e-12);
        let both = classify("summarize this python file", 30);
        assert!((both.task_certainty - SEVERAL_TASK_MARKERS).abs() < 1e-12);
        let simple = classify("hello, who is the mayor?", 24);
        assert!((simple.task_certainty - SIMPLE_QUESTION).abs() < 1e-12);
        let defaulted = classify("where do otters live", 20);
        assert!((defaulted.task_certainty - DEFAULTED_TO_CHAT).abs() < 1e-12);
    }

    #[test]
    fn confidence_is_the_lesser_of_the_class_and_the_distance_to_a_threshold() {
        let reading = |task_certainty, complexity| Classification {
            task_class: "code",
            complexity,
            signals: Vec::new(),
            task_certainty,
        };
        // At a threshold the strategy could go either way.
        assert!((reading(1.0, 0.6).confidence(0.25, 0.6) - 0.5).abs() < 1e-12);
        assert!((reading(1.0, 0.25).confidence(0.25, 0.6) - 0.5).abs() < 1e-12);
        // Halfway to the sure margin from the nearest threshold.
        assert!((reading(1.0, 0.725).confidence(0.25, 0.6) - 0.75).abs() < 1e-12);
        // Far from both: the task class decides.
        assert!((reading(0.7, 1.0).confidence(0.25, 0.6) - 0.7).abs() < 1e-12);
        assert!((reading(1.0, 0.0).confidence(0.25, 0.6) - 1.0).abs() < 1e-12);
        // A plain question with no marker is unsure; a clear one is not.
        let unsure = classify("where do otters live", 20).confidence(0.25, 0.6);
        let sure = classify("please refactor this python function", 36).confidence(0.25, 0.6);
        assert!(unsure < 0.5 && sure > 0.5, "{unsure} {sure}");
    }

    #[test]
    fn complexity_stays_in_the_unit_interval() {
        let text = "prove the theorem step by step, derive, analyse, design, optimise ```";
        let reading = classify(text, 100_000);
        assert!((reading.complexity - 1.0).abs() < 1e-12);
        assert!(classify("", 0).complexity >= 0.0);
    }

    // Moved from the Python smoke tests when `_native.classify` left the binding: the readings
    // the auto level relies on, through the core directly.
    #[test]
    fn readings_the_auto_level_relies_on() {
        for (text, task_class) in [
            ("please refactor this python function", "code"),
            ("solve for x: 3 * x = 12", "math"),
            ("summarise the key points of the memo", "summarize"),
            ("write a haiku about rain", "creative"),
            ("where do otters live", "chat"),
            ("summarize this stack trace", "code"),
        ] {
            assert_eq!(classify(text, text.len()).task_class, task_class, "{text}");
        }
        let easy = classify("hello, who is the mayor?", 24);
        assert_eq!(easy.task_class, "chat");
        assert_eq!(easy.signals, ["short, simple question"]);
        let text = "Compare the trade-offs step by step and DESIGN a distributed cache";
        let hard = classify(text, text.len());
        assert_eq!(
            hard.signals,
            ["asks to compare, design, distributed, step by step, trade-offs"]
        );
        assert!(hard.complexity > easy.complexity);
        assert!(0.0 <= easy.complexity && hard.complexity <= 1.0);
        let long = "lorem ipsum ".repeat(8_000) + "now derive the integral";
        let reading = classify(&long, long.len());
        assert_eq!(reading.task_class, "math");
        assert_eq!(reading.signals[0], format!("{} characters", long.len()));
        assert!(reading.signals.iter().any(|s| s == "asks to derive"));
        assert!((reading.complexity - (0.3 + 0.35 + 0.15 + 0.1)).abs() < 1e-9);
    }
}

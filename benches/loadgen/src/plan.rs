//! The plan a run follows (JSON on stdin), checked whole before the first call is sent.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

/// Width of the varying slot: eight ASCII digits, the call's sequence number modulo 10^8.
pub const SLOT_LEN: usize = 8;
const SLOT_MODULUS: u64 = 100_000_000;
/// CPUs a `cpu_set_t` can name.
pub const MAX_CPUS: usize = 1024;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub targets: BTreeMap<String, TargetSpec>,
    pub phases: Vec<Phase>,
    /// Per call, from its send (or its scheduled send in open loop) to its answer.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// Pin the whole process (and every thread it starts) to this CPU.
    #[serde(default)]
    pub cpu: Option<usize>,
    /// Run at this nice value where permitted (a lower one needs `CAP_SYS_NICE`), so that the
    /// processes sharing the core wait behind the load's sends rather than delay them.
    #[serde(default)]
    pub nice: Option<i32>,
    /// Processes whose CPU time (utime + stime) is read before and after each phase.
    #[serde(default)]
    pub watch_pids: BTreeMap<String, u32>,
}

fn default_timeout_ms() -> u64 {
    10_000
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetSpec {
    #[serde(default)]
    pub grpc: Option<GrpcEndpoint>,
    #[serde(default)]
    pub http: Option<HttpEndpoint>,
    /// The request's bytes: the serialized protobuf message for gRPC (framed here), the POST
    /// body for HTTP.
    pub body_hex: String,
    /// Where eight ASCII digits in the body are replaced by each call's sequence number.
    #[serde(default)]
    pub slot_offset: Option<usize>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GrpcEndpoint {
    /// host:port
    pub address: String,
    /// The method's path, "/package.Service/Method".
    pub method: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpEndpoint {
    /// `http://host:port/path`, for POST requests over HTTP/1.1 keep-alive connections.
    pub url: String,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Phase {
    pub target: String,
    pub mode: Mode,
}

#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Sequential(Sequential),
    OpenLoop(OpenLoop),
    ClosedLoop(ClosedLoop),
}

impl Mode {
    pub fn name(self) -> &'static str {
        match self {
            Mode::Sequential(_) => "sequential",
            Mode::OpenLoop(_) => "open_loop",
            Mode::ClosedLoop(_) => "closed_loop",
        }
    }
}

/// One call after another; stops at `calls` or after `max_seconds`, whichever comes first.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sequential {
    pub calls: u64,
    #[serde(default)]
    pub max_seconds: Option<f64>,
}

/// `calls` sends on a fixed schedule at `rate` per second, whatever the answers do.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenLoop {
    pub rate: f64,
    pub calls: u64,
}

/// `callers` callers, each calling back to back for `seconds`.
#[derive(Debug, Clone, Copy, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClosedLoop {
    pub callers: u32,
    pub seconds: f64,
}

/// A target's request, decoded and checked.
#[derive(Debug, Clone)]
pub struct Body {
    pub bytes: Vec<u8>,
    pub slot_offset: Option<usize>,
}

impl Body {
    /// The bytes of call `sequence`: the template with the slot (if any) holding the number.
    pub fn for_call(&self, sequence: u64) -> Vec<u8> {
        let mut out = self.bytes.clone();
        if let Some(offset) = self.slot_offset {
            write_slot(&mut out[offset..offset + SLOT_LEN], sequence);
        }
        out
    }
}

/// Eight zero-padded ASCII digits of `sequence` modulo 10^8.
pub fn write_slot(slot: &mut [u8], sequence: u64) {
    let mut rest = sequence % SLOT_MODULUS;
    for byte in slot.iter_mut().rev() {
        *byte = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
}

/// When the open loop's call `index` is due, from the loop's start.
pub fn scheduled_offset(index: u64, rate: f64) -> Duration {
    Duration::from_secs_f64(index as f64 / rate)
}

fn decode_hex(text: &str) -> Result<Vec<u8>, String> {
    if text.len() % 2 != 0 {
        return Err("odd number of hex digits".into());
    }
    let digit = |c: u8| match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        b'A'..=b'F' => Ok(c - b'A' + 10),
        _ => Err(format!("not a hex digit: {:?}", c as char)),
    };
    text.as_bytes()
        .chunks_exact(2)
        .map(|pair| Ok(digit(pair[0])? << 4 | digit(pair[1])?))
        .collect()
}

impl TargetSpec {
    pub fn body(&self) -> Result<Body, String> {
        let bytes = decode_hex(&self.body_hex).map_err(|e| format!("body_hex: {e}"))?;
        if let Some(offset) = self.slot_offset {
            let Some(slot) = bytes.get(offset..offset + SLOT_LEN) else {
                return Err(format!(
                    "slot_offset: {offset} + {SLOT_LEN} is past the body's {} bytes",
                    bytes.len()
                ));
            };
            if !slot.iter().all(u8::is_ascii_digit) {
                return Err(format!(
                    "slot_offset: the body holds {:?} at {offset}, not {SLOT_LEN} ASCII digits",
                    String::from_utf8_lossy(slot)
                ));
            }
        }
        Ok(Body {
            bytes,
            slot_offset: self.slot_offset,
        })
    }
}

fn check_mode(mode: Mode) -> Result<(), String> {
    let positive = |v: f64| v.is_finite() && v > 0.0;
    match mode {
        Mode::Sequential(s) if s.calls == 0 => Err("sequential.calls: must be at least 1".into()),
        Mode::Sequential(Sequential {
            max_seconds: Some(t),
            ..
        }) if !positive(t) => Err("sequential.max_seconds: must be a positive number".into()),
        Mode::OpenLoop(o) if o.calls == 0 => Err("open_loop.calls: must be at least 1".into()),
        Mode::OpenLoop(o) if !positive(o.rate) => {
            Err("open_loop.rate: must be a positive number of calls per second".into())
        }
        Mode::ClosedLoop(c) if c.callers == 0 => {
            Err("closed_loop.callers: must be at least 1".into())
        }
        Mode::ClosedLoop(c) if !positive(c.seconds) => {
            Err("closed_loop.seconds: must be a positive number".into())
        }
        _ => Ok(()),
    }
}

impl Plan {
    /// Every error in the plan, each naming its path.
    pub fn check(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.timeout_ms == 0 {
            errors.push("timeout_ms: must be at least 1".into());
        }
        if self.cpu.is_some_and(|cpu| cpu >= MAX_CPUS) {
            errors.push(format!("cpu: must be below {MAX_CPUS}"));
        }
        for (name, spec) in &self.targets {
            match (&spec.grpc, &spec.http) {
                (Some(grpc), None) => {
                    if !grpc.method.starts_with('/') {
                        errors.push(format!("targets.{name}.grpc.method: must start with '/'"));
                    }
                }
                (None, Some(http)) => {
                    if let Err(e) = crate::http1::split_url(&http.url) {
                        errors.push(format!("targets.{name}.http.url: {e}"));
                    }
                }
                _ => errors.push(format!("targets.{name}: needs exactly one of grpc, http")),
            }
            if let Err(e) = spec.body() {
                errors.push(format!("targets.{name}.{e}"));
            }
        }
        if self.phases.is_empty() {
            errors.push("phases: at least one phase is needed".into());
        }
        for (index, phase) in self.phases.iter().enumerate() {
            if !self.targets.contains_key(&phase.target) {
                errors.push(format!(
                    "phases[{index}].target: no target {:?}",
                    phase.target
                ));
            }
            if let Err(e) = check_mode(phase.mode) {
                errors.push(format!("phases[{index}].mode.{e}"));
            }
        }
        errors
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(json: &str) -> Plan {
        serde_json::from_str(json).expect("a plan")
    }

    const GRPC_TARGET: &str = r#"{"grpc": {"address": "127.0.0.1:1", "method": "/a.B/C"}, "body_hex": "0a3030303030303030"}"#;

    #[test]
    fn a_full_plan_parses_and_checks_clean() {
        let p = plan(&format!(
            r#"{{"targets": {{"r": {GRPC_TARGET}, "h": {{"http": {{"url": "http://127.0.0.1:9/v1/x",
            "headers": {{"a": "b"}}}}, "body_hex": "7b7d"}}}},
            "phases": [{{"target": "r", "mode": {{"sequential": {{"calls": 3}}}}}},
                       {{"target": "h", "mode": {{"open_loop": {{"rate": 100, "calls": 5}}}}}},
                       {{"target": "r", "mode": {{"closed_loop": {{"callers": 2, "seconds": 0.5}}}}}}],
            "timeout_ms": 500, "cpu": 0, "watch_pids": {{"server": 1}}}}"#
        ));
        assert_eq!(p.check(), Vec::<String>::new());
        assert_eq!(p.timeout_ms, 500);
        assert_eq!(p.phases[1].mode.name(), "open_loop");
        assert_eq!(p.targets["h"].body().unwrap().bytes, b"{}");
    }

    #[test]
    fn unknown_keys_are_refused() {
        let bad = r#"{"targets": {}, "phases": [], "speed": 1}"#;
        assert!(serde_json::from_str::<Plan>(bad)
            .unwrap_err()
            .to_string()
            .contains("speed"));
        let bad_mode = r#"{"targets": {}, "phases": [{"target": "x", "mode": {"burst": {}}}]}"#;
        assert!(serde_json::from_str::<Plan>(bad_mode).is_err());
    }

    #[test]
    fn check_names_every_bad_field() {
        let p = plan(
            r#"{"targets": {"both": {"grpc": {"address": "a:1", "method": "no-slash"},
                "http": {"url": "http://a:1/"}, "body_hex": "0g"},
                "short": {"grpc": {"address": "a:1", "method": "/a/b"}, "body_hex": "3030",
                "slot_offset": 0}},
               "phases": [{"target": "nope", "mode": {"open_loop": {"rate": 0, "calls": 1}}},
                          {"target": "short", "mode": {"closed_loop": {"callers": 0, "seconds": 1}}}],
               "timeout_ms": 0, "cpu": 1024}"#,
        );
        let errors = p.check().join("\n");
        for expected in [
            "timeout_ms",
            "cpu: must be below 1024",
            "targets.both: needs exactly one of grpc, http",
            "targets.both.body_hex: not a hex digit",
            "targets.short.slot_offset: 0 + 8 is past the body's 2 bytes",
            "phases[0].target: no target \"nope\"",
            "phases[0].mode.open_loop.rate",
            "phases[1].mode.closed_loop.callers",
        ] {
            assert!(errors.contains(expected), "{expected:?} not in\n{errors}");
        }
    }

    #[test]
    fn the_slot_must_hold_digits_in_the_template() {
        let spec: TargetSpec = serde_json::from_str(
            r#"{"grpc": {"address": "a:1", "method": "/a/b"}, "body_hex": "0a3030303030303078",
                "slot_offset": 1}"#,
        )
        .unwrap();
        assert!(spec.body().unwrap_err().contains("not 8 ASCII digits"));
    }

    #[test]
    fn each_call_carries_its_sequence_number_in_the_slot_only() {
        let spec: TargetSpec = serde_json::from_str(GRPC_TARGET).unwrap();
        let body = Body {
            slot_offset: Some(1),
            ..spec.body().unwrap()
        };
        assert_eq!(body.for_call(42), b"\n00000042");
        assert_eq!(body.for_call(123_456_789), b"\n23456789");
        assert_eq!(body.bytes, b"\n00000000", "the template stays as it was");
        let fixed = Body {
            slot_offset: None,
            ..body
        };
        assert_eq!(fixed.for_call(7), b"\n00000000");
    }

    #[test]
    fn the_open_loop_schedule_is_even_and_starts_at_zero() {
        assert_eq!(scheduled_offset(0, 300.0), Duration::ZERO);
        assert_eq!(scheduled_offset(1, 200.0), Duration::from_millis(5));
        assert_eq!(scheduled_offset(400, 400.0), Duration::from_secs(1));
        let gaps: Vec<Duration> = (1..10)
            .map(|i| scheduled_offset(i, 1000.0).saturating_sub(scheduled_offset(i - 1, 1000.0)))
            .collect();
        assert!(gaps
            .iter()
            .all(|g| g.abs_diff(Duration::from_millis(1)) < Duration::from_nanos(2)));
    }

    #[test]
    fn hex_decodes_both_cases_and_refuses_odd_lengths() {
        assert_eq!(decode_hex("00ffAB").unwrap(), vec![0, 255, 171]);
        assert!(decode_hex("abc").unwrap_err().contains("odd"));
    }
}

//! The three ways of sending load, and what each phase reports.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Serialize;
use tokio::sync::mpsc;

use crate::grpc::{frame, GrpcClient};
use crate::http1::HttpClient;
use crate::pacer;
use crate::plan::{Body, ClosedLoop, Mode, OpenLoop, Sequential, TargetSpec};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CallError {
    Connect,
    Transport,
    Timeout,
    GrpcStatus(u32),
    HttpStatus(u16),
    NoGrpcStatus,
}

impl fmt::Display for CallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CallError::Connect => f.write_str("connect"),
            CallError::Transport => f.write_str("transport"),
            CallError::Timeout => f.write_str("timeout"),
            CallError::GrpcStatus(code) => write!(f, "grpc-status {code}"),
            CallError::HttpStatus(code) => write!(f, "http-status {code}"),
            CallError::NoGrpcStatus => f.write_str("no grpc-status"),
        }
    }
}

enum Client {
    Grpc(GrpcClient),
    Http(HttpClient),
}

/// A server to call and the request to send it; the sequence number runs across the phases.
pub struct Target {
    client: Client,
    body: Body,
    // The template, framed once: a call without a slot sends it as it is (a reference count).
    fixed: Bytes,
    sequence: AtomicU64,
    timeout: Duration,
}

impl Target {
    pub fn new(spec: &TargetSpec, timeout: Duration) -> Result<Self, String> {
        let body = spec.body()?;
        let (client, fixed) = match (&spec.grpc, &spec.http) {
            (Some(grpc), _) => (
                Client::Grpc(GrpcClient::new(&grpc.address, &grpc.method)?),
                frame(&body.bytes),
            ),
            (None, Some(http)) => (
                Client::Http(HttpClient::new(&http.url, &http.headers)?),
                Bytes::from(body.bytes.clone()),
            ),
            (None, None) => return Err("no endpoint".into()),
        };
        Ok(Self {
            client,
            body,
            fixed,
            sequence: AtomicU64::new(0),
            timeout,
        })
    }

    fn request(&self) -> Bytes {
        if self.body.slot_offset.is_none() {
            return self.fixed.clone();
        }
        let bytes = self
            .body
            .for_call(self.sequence.fetch_add(1, Ordering::Relaxed));
        match self.client {
            Client::Grpc(_) => frame(&bytes),
            Client::Http(_) => Bytes::from(bytes),
        }
    }

    /// One call within the plan's timeout.
    async fn call(&self) -> Result<(), CallError> {
        let request = self.request();
        let answer = async {
            match &self.client {
                Client::Grpc(client) => client.call(request).await,
                Client::Http(client) => client.call(request).await,
            }
        };
        tokio::time::timeout(self.timeout, answer)
            .await
            .unwrap_or(Err(CallError::Timeout))
    }
}

/// What a phase did. Latencies (microseconds) are of successful calls only; in open loop they
/// run from each call's scheduled send time.
#[derive(Debug, Default, Serialize)]
pub struct PhaseReport {
    pub target: String,
    pub mode: &'static str,
    pub calls: u64,
    pub latencies_us: Vec<f64>,
    pub errors: BTreeMap<String, u64>,
    /// Open loop: how late each send started against its schedule, in the order sent.
    pub send_lags_us: Vec<f64>,
    pub max_send_lag_us: f64,
    pub wall_s: f64,
    /// This process (every thread, the pacer's too), user + system.
    pub cpu_s: f64,
    pub watched_cpu_s: BTreeMap<String, f64>,
}

impl PhaseReport {
    fn record(&mut self, outcome: Result<(), CallError>, latency: Duration) {
        self.calls += 1;
        match outcome {
            Ok(()) => self.latencies_us.push(micros(latency)),
            Err(error) => *self.errors.entry(error.to_string()).or_default() += 1,
        }
    }
}

fn micros(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1000.0
}

pub async fn run_phase(target: &Arc<Target>, mode: Mode, report: &mut PhaseReport) {
    match mode {
        Mode::Sequential(s) => sequential(target, s, report).await,
        Mode::OpenLoop(o) => open_loop(target, o, report).await,
        Mode::ClosedLoop(c) => closed_loop(target, c, report).await,
    }
}

async fn sequential(target: &Target, mode: Sequential, report: &mut PhaseReport) {
    let started = Instant::now();
    let limit = mode.max_seconds.map(Duration::from_secs_f64);
    for _ in 0..mode.calls {
        if limit.is_some_and(|limit| started.elapsed() >= limit) {
            break;
        }
        let sent = Instant::now();
        let outcome = target.call().await;
        report.record(outcome, sent.elapsed());
    }
}

async fn open_loop(target: &Arc<Target>, mode: OpenLoop, report: &mut PhaseReport) {
    let (due_tx, mut due_rx) = mpsc::unbounded_channel();
    // The pacer is a thread of its own: tokio's timer wheel is 1 ms coarse.
    let pacer = pacer::start(mode.rate, mode.calls, due_tx);
    let mut calls = Vec::with_capacity(usize::try_from(mode.calls).unwrap_or(0));
    while let Some(scheduled) = due_rx.recv().await {
        let target = Arc::clone(target);
        calls.push(tokio::spawn(async move {
            let lag = scheduled.elapsed();
            let outcome = target.call().await;
            (outcome, scheduled.elapsed(), lag)
        }));
    }
    pacer.join().expect("the pacer thread");
    for call in calls {
        let (outcome, latency, lag) = call.await.expect("a call task");
        report.record(outcome, latency);
        report.send_lags_us.push(micros(lag));
        report.max_send_lag_us = report.max_send_lag_us.max(micros(lag));
    }
}

async fn closed_loop(target: &Arc<Target>, mode: ClosedLoop, report: &mut PhaseReport) {
    let deadline = Instant::now() + Duration::from_secs_f64(mode.seconds);
    let callers: Vec<_> = (0..mode.callers)
        .map(|_| {
            let target = Arc::clone(target);
            tokio::spawn(async move {
                let mut done = Vec::new();
                while Instant::now() < deadline {
                    let sent = Instant::now();
                    let outcome = target.call().await;
                    done.push((outcome, sent.elapsed()));
                }
                done
            })
        })
        .collect();
    for caller in callers {
        for (outcome, latency) in caller.await.expect("a caller task") {
            report.record(outcome, latency);
        }
    }
}

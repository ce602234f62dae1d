//! The benches' load generator (see `benches/loadgen.py`, which builds and drives it).
//!
//! Reads a plan (JSON) on stdin: targets (a gRPC method on host:port with the request's bytes, or
//! an HTTP/1.1 POST), then phases run one after another on one thread (sequential, open loop,
//! closed loop), and writes a report (JSON) on stdout: per phase, the latency of every call, the
//! errors by kind, the open loop's send lag and this process's CPU time. A bad plan is refused
//! with every error on stderr and exit status 2.

mod grpc;
mod http1;
mod pacer;
mod plan;
mod run;

use std::collections::BTreeMap;
use std::io::Read;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::plan::Plan;
use crate::run::{run_phase, PhaseReport, Target};

#[derive(Serialize)]
struct Report {
    /// The nice value it ran at (the plan's when permitted).
    nice: i32,
    phases: Vec<PhaseReport>,
    cpu_s: f64,
    wall_s: f64,
}

fn own_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct it is given; zeroed is a valid rusage.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &raw mut usage);
        usage
    };
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// utime + stime of another process, from /proc/PID/stat; None once it is gone.
fn process_cpu_s(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The name (field 2) may hold spaces: count from the ')' that closes it.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 2..].split_whitespace().collect();
    let ticks: u64 = fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?;
    // SAFETY: sysconf reads a constant.
    let per_s = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Some(ticks as f64 / per_s as f64)
}

fn watched(pids: &BTreeMap<String, u32>) -> BTreeMap<String, f64> {
    pids.iter()
        .filter_map(|(name, &pid)| Some((name.clone(), process_cpu_s(pid)?)))
        .collect()
}

fn pin_to(cpu: usize) -> Result<(), String> {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity get valid pointers.
    let result = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &raw const set)
    };
    if result == 0 {
        Ok(())
    } else {
        Err(format!(
            "cpu: cannot pin to CPU {cpu}: {}",
            std::io::Error::last_os_error()
        ))
    }
}

/// Sets this thread's nice value where permitted (threads started later inherit it); returns the
/// value in force.
fn renice(nice: Option<i32>) -> i32 {
    // SAFETY: setpriority and getpriority on this thread (who 0); failure leaves it unchanged.
    unsafe {
        if let Some(nice) = nice {
            libc::setpriority(libc::PRIO_PROCESS, 0, nice);
        }
        libc::getpriority(libc::PRIO_PROCESS, 0)
    }
}

fn run(plan: &Plan) -> Result<Report, String> {
    // Both before any thread starts: every later thread inherits them.
    if let Some(cpu) = plan.cpu {
        pin_to(cpu)?;
    }
    let nice = renice(plan.nice);
    let timeout = Duration::from_millis(plan.timeout_ms);
    let mut targets = BTreeMap::new();
    for (name, spec) in &plan.targets {
        let target = Target::new(spec, timeout).map_err(|e| format!("targets.{name}: {e}"))?;
        targets.insert(name.clone(), Arc::new(target));
    }
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .enable_time()
        .build()
        .map_err(|e| format!("runtime: {e}"))?;
    let started = (Instant::now(), own_cpu_s());
    let phases = runtime.block_on(async {
        let mut reports = Vec::with_capacity(plan.phases.len());
        for phase in &plan.phases {
            let before = (Instant::now(), own_cpu_s(), watched(&plan.watch_pids));
            let mut report = PhaseReport {
                target: phase.target.clone(),
                mode: phase.mode.name(),
                ..PhaseReport::default()
            };
            run_phase(&targets[&phase.target], phase.mode, &mut report).await;
            report.wall_s = before.0.elapsed().as_secs_f64();
            report.cpu_s = own_cpu_s() - before.1;
            report.watched_cpu_s = watched(&plan.watch_pids)
                .into_iter()
                .filter_map(|(name, after)| Some((name.clone(), after - before.2.get(&name)?)))
                .collect();
            reports.push(report);
        }
        reports
    });
    Ok(Report {
        nice,
        phases,
        cpu_s: own_cpu_s() - started.1,
        wall_s: started.0.elapsed().as_secs_f64(),
    })
}

fn main() -> ExitCode {
    let mut input = String::new();
    if let Err(e) = std::io::stdin().read_to_string(&mut input) {
        eprintln!("plan: cannot read stdin: {e}");
        return ExitCode::from(2);
    }
    let plan: Plan = match serde_json::from_str(&input) {
        Ok(plan) => plan,
        Err(e) => {
            eprintln!("plan: {e}");
            return ExitCode::from(2);
        }
    };
    let errors = plan.check();
    if !errors.is_empty() {
        for error in errors {
            eprintln!("plan: {error}");
        }
        return ExitCode::from(2);
    }
    match run(&plan) {
        Ok(report) => {
            println!(
                "{}",
                serde_json::to_string(&report).expect("a serializable report")
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("plan: {e}");
            ExitCode::from(2)
        }
    }
}

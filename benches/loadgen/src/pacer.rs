//! The open loop's clock: a thread that sleeps to each call's due time and hands it over.

use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use tokio::sync::mpsc::UnboundedSender;

use crate::plan::scheduled_offset;

// Sleep to this close to the due time, then spin: a wake-up from sleep can come late by tens of
// microseconds even with the timer slack at its minimum.
const SPIN: Duration = Duration::from_micros(40);
// Room for the thread to start before the first call is due.
const LEAD: Duration = Duration::from_millis(5);

/// Sends each of `calls` due times, at `rate` per second, on `due` when it comes; the channel
/// closes after the last one.
pub fn start(rate: f64, calls: u64, due: UnboundedSender<Instant>) -> JoinHandle<()> {
    let start = Instant::now() + LEAD;
    std::thread::spawn(move || {
        // SAFETY: prctl(PR_SET_TIMERSLACK) changes only this thread's timer slack.
        unsafe {
            libc::prctl(libc::PR_SET_TIMERSLACK, 1_u64, 0_u64, 0_u64, 0_u64);
        }
        for index in 0..calls {
            let at = start + scheduled_offset(index, rate);
            sleep_until(at);
            if due.send(at).is_err() {
                return;
            }
        }
    })
}

fn sleep_until(at: Instant) {
    if let Some(ahead) = at.checked_duration_since(Instant::now() + SPIN) {
        std::thread::sleep(ahead);
    }
    while Instant::now() < at {
        std::hint::spin_loop();
    }
}

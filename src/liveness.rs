//! Liveness that means something: whether the reconcile loops make progress.
//!
//! Each controller loop reports when a reconcile starts and when it ends. A loop with nothing in flight is
//! idle, and healthy however long it stays so (an operator with nothing to do, or a standby that runs no
//! loop at all). A loop with reconciles in flight is healthy while one of them finishes at least every
//! `threshold`; when none has finished for longer than that, the loop is *stalled* (every worker hangs, or
//! the loop stopped polling them), and `/healthz` fails so that the kubelet restarts the process. The
//! work is persisted in status, so a restart resumes it.
//!
//! The threshold must be longer than the longest legitimate reconcile: one ACME request is bounded at 30 s
//! (10 s to connect), a pass makes a handful of them in sequence and waits at most `max_wait_per_step` for
//! the CA in place, so a pass takes seconds, and only minutes when every request of it times out.
//! [`DEFAULT_STALL_THRESHOLD`] leaves a wide margin over that.
//!
//! Time is passed in (`now`), so that the rules are tested with plain values.

use crate::controller::ControllerKind;
use std::collections::BTreeMap;
use std::fmt;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long a busy loop may go without finishing a reconcile before it counts as stalled (the default of
/// `kacme controller --stall-threshold`).
pub const DEFAULT_STALL_THRESHOLD: Duration = Duration::from_secs(600);

/// The progress of one controller loop.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LoopProgress {
    /// Reconciles running now.
    in_flight: usize,
    /// When the loop went from idle to busy (None while idle).
    busy_since: Option<Instant>,
    /// When a reconcile last finished (successfully or not).
    last_finished: Option<Instant>,
}

impl LoopProgress {
    /// A reconcile started at `now`.
    pub fn started(&mut self, now: Instant) {
        if self.in_flight == 0 {
            self.busy_since = Some(now);
        }
        self.in_flight = self.in_flight.saturating_add(1);
    }

    /// A reconcile finished at `now` (with or without an error): progress.
    pub fn finished(&mut self, now: Instant) {
        self.last_finished = Some(now);
        self.end_one();
    }

    /// A reconcile was dropped before it finished (the loop shut down): no progress, but no longer in flight.
    pub fn cancelled(&mut self) {
        self.end_one();
    }

    fn end_one(&mut self) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if self.in_flight == 0 {
            self.busy_since = None;
        }
    }

    /// Reconciles running now.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// How long the loop has been busy without finishing a reconcile: since it became busy, or since the
    /// last reconcile finished, whichever is later. None while idle.
    pub fn without_progress(&self, now: Instant) -> Option<Duration> {
        let busy_since = self.busy_since?;
        let since = self.last_finished.map_or(busy_since, |finished| finished.max(busy_since));
        Some(now.saturating_duration_since(since))
    }
}

/// A loop that has had work in flight without finishing any of it for longer than the threshold.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stall {
    /// The stalled loop.
    pub controller: ControllerKind,
    /// Reconciles in flight.
    pub in_flight: usize,
    /// How long no reconcile of the loop has finished.
    pub without_progress: Duration,
    /// The threshold it exceeded.
    pub threshold: Duration,
}

impl fmt::Display for Stall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the {} controller has {} reconcile(s) in flight and finished none for {}s (threshold {}s)",
            self.controller.as_str(),
            self.in_flight,
            self.without_progress.as_secs(),
            self.threshold.as_secs()
        )
    }
}

/// The progress of every controller loop of the process, shared by the loops (which report) and the
/// health endpoint (which asks [`Progress::stalls`]).
#[derive(Debug)]
pub struct Progress {
    threshold: Duration,
    loops: Mutex<BTreeMap<ControllerKind, LoopProgress>>,
}

impl Default for Progress {
    fn default() -> Self {
        Progress::new(DEFAULT_STALL_THRESHOLD)
    }
}

impl Progress {
    /// No loop has reported yet: healthy. A busy loop stalls after `threshold` without a finished reconcile.
    pub fn new(threshold: Duration) -> Progress {
        Progress { threshold, loops: Mutex::default() }
    }

    /// The stall threshold.
    pub fn threshold(&self) -> Duration {
        self.threshold
    }

    fn update(&self, controller: ControllerKind, change: impl FnOnce(&mut LoopProgress)) {
        // A poisoned lock only means that another thread panicked while holding it: the counts are still
        // usable, and liveness must keep working.
        let mut loops = self.loops.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        change(loops.entry(controller).or_default());
    }

    /// A reconcile of `controller` started at `now`.
    pub fn started(&self, controller: ControllerKind, now: Instant) {
        self.update(controller, |progress| progress.started(now));
    }

    /// A reconcile of `controller` finished at `now`.
    pub fn finished(&self, controller: ControllerKind, now: Instant) {
        self.update(controller, |progress| progress.finished(now));
    }

    /// A reconcile of `controller` was dropped before it finished.
    pub fn cancelled(&self, controller: ControllerKind) {
        self.update(controller, LoopProgress::cancelled);
    }

    /// Every loop's progress at `now`: (controller, in flight, time without progress while busy).
    pub fn snapshot(&self, now: Instant) -> Vec<(ControllerKind, usize, Option<Duration>)> {
        let loops = self.loops.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        loops.iter().map(|(kind, p)| (*kind, p.in_flight(), p.without_progress(now))).collect()
    }

    /// The loops stalled at `now`; empty when the process is live.
    pub fn stalls(&self, now: Instant) -> Vec<Stall> {
        self.snapshot(now)
            .into_iter()
            .filter_map(|(controller, in_flight, without_progress)| {
                let without_progress = without_progress.filter(|d| *d > self.threshold)?;
                Some(Stall { controller, in_flight, without_progress, threshold: self.threshold })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ControllerKind::{Certificate, Issuer};

    const THRESHOLD: Duration = Duration::from_secs(600);

    fn at(t0: Instant, seconds: u64) -> Instant {
        t0 + Duration::from_secs(seconds)
    }

    fn stalled(progress: &Progress, t0: Instant, seconds: u64) -> Vec<(ControllerKind, u64)> {
        progress.stalls(at(t0, seconds)).into_iter().map(|s| (s.controller, s.without_progress.as_secs())).collect()
    }

    #[test]
    fn a_process_whose_loops_never_ran_is_live() {
        // A standby replica runs no loop at all.
        let progress = Progress::new(THRESHOLD);
        assert_eq!(stalled(&progress, Instant::now(), 0), vec![]);
        assert_eq!(stalled(&progress, Instant::now(), 86_400), vec![]);
    }

    #[test]
    fn an_idle_loop_stays_live_however_long_nothing_happens() {
        let t0 = Instant::now();
        let progress = Progress::new(THRESHOLD);
        progress.started(Certificate, at(t0, 0));
        progress.finished(Certificate, at(t0, 1));
        assert_eq!(stalled(&progress, t0, 1 + 86_400), vec![], "a day idle after the last reconcile");
    }

    #[test]
    fn a_busy_loop_that_finishes_reconciles_stays_live() {
        let t0 = Instant::now();
        let progress = Progress::new(THRESHOLD);
        // Always two in flight for an hour, one finishing (and another starting) every five minutes.
        progress.started(Certificate, at(t0, 0));
        progress.started(Certificate, at(t0, 0));
        for minute in (5..=60).step_by(5) {
            progress.finished(Certificate, at(t0, minute * 60));
            progress.started(Certificate, at(t0, minute * 60));
            assert_eq!(stalled(&progress, t0, minute * 60 + 299), vec![], "minute {minute}");
        }
    }

    #[test]
    fn a_busy_loop_without_progress_past_the_threshold_is_stalled_and_recovers_when_one_finishes() {
        let t0 = Instant::now();
        let progress = Progress::new(THRESHOLD);
        progress.started(Certificate, at(t0, 0));
        progress.finished(Certificate, at(t0, 10));
        // Idle for an hour, then busy: the clock starts when the loop becomes busy, not at the last finish.
        progress.started(Certificate, at(t0, 3600));
        progress.started(Certificate, at(t0, 3601));
        assert_eq!(stalled(&progress, t0, 3600 + 600), vec![], "exactly at the threshold");
        assert_eq!(stalled(&progress, t0, 3600 + 601), vec![(Certificate, 601)]);
        let stall = &progress.stalls(at(t0, 3600 + 700))[0];
        assert_eq!(stall.in_flight, 2);
        assert_eq!(
            stall.to_string(),
            "the certificate controller has 2 reconcile(s) in flight and finished none for 700s (threshold 600s)"
        );
        // One finishes: live again, with one still in flight.
        progress.finished(Certificate, at(t0, 3600 + 800));
        assert_eq!(stalled(&progress, t0, 3600 + 800), vec![]);
        assert_eq!(stalled(&progress, t0, 3600 + 800 + 601), vec![(Certificate, 601)], "the other still hangs");
    }

    #[test]
    fn each_loop_is_judged_by_its_own_progress() {
        let t0 = Instant::now();
        let progress = Progress::new(THRESHOLD);
        progress.started(Issuer, at(t0, 0));
        progress.started(Certificate, at(t0, 0));
        for minute in 1..=20 {
            progress.finished(Certificate, at(t0, minute * 60));
            progress.started(Certificate, at(t0, minute * 60));
        }
        assert_eq!(stalled(&progress, t0, 20 * 60), vec![(Issuer, 1200)]);
    }

    #[test]
    fn a_cancelled_reconcile_is_no_progress_but_leaves_the_loop_idle() {
        let t0 = Instant::now();
        let progress = Progress::new(THRESHOLD);
        progress.started(Certificate, at(t0, 0));
        progress.started(Certificate, at(t0, 0));
        progress.cancelled(Certificate);
        assert_eq!(stalled(&progress, t0, 601), vec![(Certificate, 601)], "one still in flight");
        progress.cancelled(Certificate);
        assert_eq!(stalled(&progress, t0, 601), vec![], "nothing in flight");
        progress.cancelled(Certificate);
        assert_eq!(progress.snapshot(at(t0, 601)), vec![(Certificate, 0, None)], "never below zero");
    }
}

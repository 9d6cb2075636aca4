//! A limit on the Certificates that work with one issuer at once, so that a slow or hostile CA cannot hold
//! every worker.
//!
//! A pass that finds every slot of its issuer taken does not hold a worker: it joins the issuer's queue of
//! waiting Certificates and ends. When a slot is released it is offered to the first in the queue (kept for
//! it, so that a newcomer cannot take it), and that Certificate is woken through [`IssuerSlots::take_wakes`],
//! a stream the controller reconciles on. Waiters are served in arrival order, those with an order in flight
//! ([`Turn::Continuing`]) before those that would start one: a slot is held for one pass, not for a whole
//! order, and serving everyone strictly in turn would start every order before finishing any (1,000 solver
//! Pods at once in `./bench -n 1000`). Of those that would start one, a Certificate that has no certificate
//! yet ([`Turn::Starting`]) goes before one that renews ([`Turn::Renewing`]): a renewal has until its
//! certificate expires, a new Certificate's workload waits for it now, and in a renewal storm thousands of
//! renewals would otherwise stand ahead of it. A Certificate is in a queue at most once, so the queues are bounded by the Certificates that exist, and the wake channel by
//! [`WAKE_CAPACITY`]. A wake that is lost (the channel full) or an offer that is not taken within
//! [`OFFER_TIMEOUT`] (the Certificate was deleted, or no longer needs the CA) costs no slot: the offer passes
//! to the next in line, and a waiter that was passed over looks again at its fallback requeue.

use crate::api::Certificate;
use kube::runtime::reflector::ObjectRef;
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long a slot offered to a woken Certificate is kept for it before it passes to the next in line.
pub const OFFER_TIMEOUT: Duration = Duration::from_secs(10);
/// Wakes not yet read by the controller at most; one more is dropped (the fallback requeue covers it).
pub const WAKE_CAPACITY: usize = 4096;

/// The slots of each issuer (by `kind/namespace/name`), `per_issuer` each, and the Certificates waiting for
/// them.
pub struct IssuerSlots {
    shared: Arc<Shared>,
    wakes: Mutex<Option<mpsc::Receiver<ObjectRef<Certificate>>>>,
}

struct Shared {
    per_issuer: usize,
    offer_timeout: Duration,
    state: Mutex<State>,
    wake: mpsc::Sender<ObjectRef<Certificate>>,
}

#[derive(Default)]
struct State {
    issuers: HashMap<String, Issuer>,
    /// The issuer each waiting (or offered) Certificate waits for.
    waiting_for: HashMap<ObjectRef<Certificate>, String>,
}

/// What a pass asking for a slot would do with it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Turn {
    /// Move on an order in flight: served first.
    Continuing,
    /// Start something new (an order, a revocation) for a Certificate that has no certificate yet.
    Starting,
    /// Start something new for a Certificate that has its certificate (a renewal): served after
    /// [`Turn::Starting`].
    Renewing,
}

/// One issuer's slots.
#[derive(Default)]
struct Issuer {
    /// Slots held by passes.
    taken: usize,
    /// Certificates with an order in flight waiting for a slot, first come first served.
    continuing: VecDeque<ObjectRef<Certificate>>,
    /// Certificates without a certificate waiting for a slot, first come first served, after the continuing
    /// ones.
    queue: VecDeque<ObjectRef<Certificate>>,
    /// Certificates that renew waiting for a slot, first come first served, after all the others.
    renewing: VecDeque<ObjectRef<Certificate>>,
    /// Slots kept for woken Certificates, since when.
    offered: HashMap<ObjectRef<Certificate>, Instant>,
}

impl Issuer {
    fn free(&self, per_issuer: usize) -> usize {
        per_issuer.saturating_sub(self.taken + self.offered.len())
    }

    fn idle(&self) -> bool {
        self.taken == 0 && self.nobody_waits() && self.offered.is_empty()
    }

    fn nobody_waits(&self) -> bool {
        self.continuing.is_empty() && self.queue.is_empty() && self.renewing.is_empty()
    }

    fn next_in_line(&mut self) -> Option<ObjectRef<Certificate>> {
        self.continuing.pop_front().or_else(|| self.queue.pop_front()).or_else(|| self.renewing.pop_front())
    }
}

/// A slot of an issuer, held until dropped; dropping it offers the slot to the next waiting Certificate.
pub struct IssuerSlot {
    shared: Arc<Shared>,
    issuer: String,
}

impl std::fmt::Debug for IssuerSlot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IssuerSlot").field("issuer", &self.issuer).finish()
    }
}

impl Drop for IssuerSlot {
    fn drop(&mut self) {
        let mut state = self.shared.lock();
        if let Some(issuer) = state.issuers.get_mut(&self.issuer) {
            issuer.taken = issuer.taken.saturating_sub(1);
        }
        self.shared.hand_on(&mut state, &self.issuer, Instant::now());
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // No step taken under the lock panics midway, so a poisoned lock still holds consistent counts.
        self.state.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Offers the free slots of `issuer` to the first waiting Certificates and wakes them; takes back offers
    /// older than the timeout first. Forgets an issuer with nothing left.
    fn hand_on(&self, state: &mut State, issuer_key: &str, now: Instant) {
        let State { issuers, waiting_for } = state;
        let Some(issuer) = issuers.get_mut(issuer_key) else { return };
        issuer.offered.retain(|certificate, since| {
            let keep = now.duration_since(*since) < self.offer_timeout;
            if !keep {
                waiting_for.remove(certificate);
            }
            keep
        });
        while issuer.free(self.per_issuer) > 0 {
            let Some(next) = issuer.next_in_line() else { break };
            issuer.offered.insert(next.clone(), now);
            if let Err(error) = self.wake.try_send(next) {
                // The offer times out and passes on; the Certificate looks again at its fallback requeue.
                tracing::debug!(%error, "waking a Certificate waiting for an issuer slot failed");
            }
        }
        if issuer.idle() {
            issuers.remove(issuer_key);
        }
        crate::controller::context::shrink_when_drained(waiting_for);
    }
}

impl IssuerSlots {
    /// `per_issuer` slots for every issuer (at least one).
    pub fn new(per_issuer: usize) -> IssuerSlots {
        IssuerSlots::with_offer_timeout(per_issuer, OFFER_TIMEOUT, WAKE_CAPACITY)
    }

    fn with_offer_timeout(per_issuer: usize, offer_timeout: Duration, wake_capacity: usize) -> IssuerSlots {
        let (wake, wakes) = mpsc::channel(wake_capacity.max(1));
        let shared = Shared { per_issuer: per_issuer.max(1), offer_timeout, state: Mutex::default(), wake };
        IssuerSlots { shared: Arc::new(shared), wakes: Mutex::new(Some(wakes)) }
    }

    /// The slots each issuer has.
    pub fn per_issuer(&self) -> usize {
        self.shared.per_issuer
    }

    /// The Certificates to reconcile because a slot was offered to them, in the order offered: for
    /// `Controller::reconcile_on`. The first call takes the stream; later calls get an empty one.
    pub fn take_wakes(&self) -> impl futures::Stream<Item = ObjectRef<Certificate>> + Send + 'static {
        let receiver = self.wakes.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        futures::stream::unfold(receiver, |receiver| async move {
            let mut receiver = receiver?;
            receiver.recv().await.map(|certificate| (certificate, Some(receiver)))
        })
    }

    /// A slot of `issuer` for `certificate`: the one offered to it, or a free one when nobody waits. `None`
    /// when all are taken: `certificate` then waits in the issuer's queue (keeping its place if it already
    /// does) and is woken when a slot is offered to it.
    pub fn try_take(&self, issuer: &str, certificate: &ObjectRef<Certificate>, turn: Turn) -> Option<IssuerSlot> {
        let now = Instant::now();
        let mut state = self.shared.lock();
        // Waiting for another issuer (its issuerRef changed): that place is given up.
        if state.waiting_for.get(certificate).is_some_and(|waits_for| waits_for != issuer) {
            self.leave_locked(&mut state, certificate, now);
        }
        self.shared.hand_on(&mut state, issuer, now);
        let per_issuer = self.shared.per_issuer;
        let State { issuers, waiting_for } = &mut *state;
        let slots = issuers.entry(issuer.to_string()).or_default();
        let taken = if slots.offered.remove(certificate).is_some() {
            waiting_for.remove(certificate);
            true
        } else if slots.free(per_issuer) > 0 && slots.nobody_waits() {
            true
        } else {
            if !waiting_for.contains_key(certificate) {
                match turn {
                    Turn::Continuing => slots.continuing.push_back(certificate.clone()),
                    Turn::Starting => slots.queue.push_back(certificate.clone()),
                    Turn::Renewing => slots.renewing.push_back(certificate.clone()),
                }
                waiting_for.insert(certificate.clone(), issuer.to_string());
            }
            false
        };
        if !taken {
            return None;
        }
        slots.taken += 1;
        Some(IssuerSlot { shared: self.shared.clone(), issuer: issuer.to_string() })
    }

    /// `certificate` no longer waits for a slot (it was deleted, or its pass ended without needing one): its
    /// place in a queue goes, and a slot offered to it passes to the next in line.
    pub fn leave(&self, certificate: &ObjectRef<Certificate>) {
        let mut state = self.shared.lock();
        if state.waiting_for.contains_key(certificate) {
            self.leave_locked(&mut state, certificate, Instant::now());
        }
    }

    fn leave_locked(&self, state: &mut State, certificate: &ObjectRef<Certificate>, now: Instant) {
        let Some(issuer_key) = state.waiting_for.remove(certificate) else { return };
        if let Some(issuer) = state.issuers.get_mut(&issuer_key) {
            issuer.continuing.retain(|waiting| waiting != certificate);
            issuer.queue.retain(|waiting| waiting != certificate);
            issuer.renewing.retain(|waiting| waiting != certificate);
            issuer.offered.remove(certificate);
        }
        self.shared.hand_on(state, &issuer_key, now);
    }

    /// Certificates waiting for a slot (offered ones included), over all issuers.
    pub fn waiting(&self) -> usize {
        self.shared.lock().waiting_for.len()
    }
}

/// The default number of slots per issuer: three quarters of the workers (rounded, at least one), so that
/// Certificates of other issuers always find a worker while one CA is slow. With one issuer the limit costs
/// no throughput, since a waiting Certificate is woken the moment a slot frees (BENCHMARKS.md, "Per-issuer
/// slots").
pub fn default_per_issuer(concurrency: u16) -> usize {
    ((usize::from(concurrency) * 3 + 2) / 4).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::{FutureExt, StreamExt};

    const SLOW: &str = "ClusterIssuer//slow";
    const FAST: &str = "Issuer/apps/fast";

    fn certificate(name: &str) -> ObjectRef<Certificate> {
        ObjectRef::new(name).within("apps")
    }

    /// The wakes sent so far, in order.
    fn wakes_now(wakes: &mut (impl futures::Stream<Item = ObjectRef<Certificate>> + Unpin)) -> Vec<String> {
        let mut woken = Vec::new();
        while let Some(Some(certificate)) = wakes.next().now_or_never() {
            woken.push(certificate.name);
        }
        woken
    }

    #[test]
    fn an_issuer_gets_at_most_its_slots_and_others_are_not_affected() {
        let slots = IssuerSlots::new(2);
        let first = slots.try_take(SLOW, &certificate("a"), Turn::Starting);
        let second = slots.try_take(SLOW, &certificate("b"), Turn::Starting);
        assert!(first.is_some() && second.is_some());
        assert!(
            slots.try_take(SLOW, &certificate("c"), Turn::Starting).is_none(),
            "the slow issuer's slots are all taken"
        );
        assert!(slots.try_take(FAST, &certificate("d"), Turn::Starting).is_some(), "another issuer still has slots");
        drop(first);
        assert!(
            slots.try_take(SLOW, &certificate("c"), Turn::Starting).is_some(),
            "the slot released is offered to the waiter"
        );
    }

    #[test]
    fn a_released_slot_wakes_the_first_waiter_and_is_kept_for_it_against_newcomers() {
        let slots = IssuerSlots::new(1);
        let mut wakes = Box::pin(slots.take_wakes());
        let held = slots.try_take(SLOW, &certificate("holder"), Turn::Starting);
        assert!(held.is_some());
        assert!(slots.try_take(SLOW, &certificate("first"), Turn::Starting).is_none());
        assert!(slots.try_take(SLOW, &certificate("second"), Turn::Starting).is_none());
        assert_eq!(wakes_now(&mut wakes), Vec::<String>::new(), "nobody is woken while the slot is held");

        drop(held);
        assert_eq!(wakes_now(&mut wakes), ["first"], "the first waiter, at once");
        assert!(
            slots.try_take(SLOW, &certificate("newcomer"), Turn::Starting).is_none(),
            "the slot is kept for the woken one"
        );
        assert!(
            slots.try_take(SLOW, &certificate("second"), Turn::Starting).is_none(),
            "and the second waits its turn"
        );
        let first = slots.try_take(SLOW, &certificate("first"), Turn::Starting).expect("the woken one takes its slot");
        drop(first);
        assert_eq!(wakes_now(&mut wakes), ["second"]);
        let second = slots.try_take(SLOW, &certificate("second"), Turn::Starting).expect("the slot");
        drop(second);
        assert_eq!(wakes_now(&mut wakes), ["newcomer"], "the newcomer queued behind them");
    }

    #[test]
    fn waiters_are_woken_in_the_order_they_came_and_one_that_asks_again_keeps_its_place() {
        let slots = IssuerSlots::new(3);
        let mut wakes = Box::pin(slots.take_wakes());
        let mut held: Vec<_> = ["h1", "h2", "h3"].map(|h| slots.try_take(SLOW, &certificate(h), Turn::Starting)).into();
        let waiters = ["w1", "w2", "w3", "w4", "w5"];
        for waiter in waiters {
            assert!(slots.try_take(SLOW, &certificate(waiter), Turn::Starting).is_none());
        }
        // Looked at again (a fallback requeue, a change of its own) while waiting: no new place at the back.
        assert!(slots.try_take(SLOW, &certificate("w1"), Turn::Starting).is_none());
        assert!(slots.try_take(SLOW, &certificate("w2"), Turn::Starting).is_none());
        let mut woken = Vec::new();
        while woken.len() < waiters.len() {
            held.pop();
            woken.extend(wakes_now(&mut wakes));
            let next = woken.last().expect("a release wakes someone").clone();
            held.push(slots.try_take(SLOW, &certificate(&next), Turn::Starting));
        }
        assert_eq!(woken, waiters, "first come, first served");
        assert_eq!(slots.waiting(), 0);
    }

    #[test]
    fn certificates_with_an_order_in_flight_are_served_before_those_that_would_start_one() {
        let slots = IssuerSlots::new(1);
        let mut wakes = Box::pin(slots.take_wakes());
        let mut held = slots.try_take(SLOW, &certificate("holder"), Turn::Starting);
        let waiters = [("new-1", Turn::Starting), ("mid-1", Turn::Continuing), ("new-2", Turn::Starting)];
        for (waiter, turn) in waiters.into_iter().chain([("mid-2", Turn::Continuing)]) {
            assert!(slots.try_take(SLOW, &certificate(waiter), turn).is_none());
        }
        let mut woken = Vec::new();
        for _ in 0..4 {
            drop(held.take());
            let next = wakes_now(&mut wakes);
            assert_eq!(next.len(), 1, "one slot, one wake: {next:?}");
            held = slots.try_take(SLOW, &certificate(&next[0]), Turn::Starting);
            assert!(held.is_some(), "{} takes the slot offered to it", next[0]);
            woken.extend(next);
        }
        assert_eq!(woken, ["mid-1", "mid-2", "new-1", "new-2"], "orders in flight first, each class in turn");
    }

    #[test]
    fn a_deleted_waiter_leaves_the_queue_and_a_slot_offered_to_it_passes_on() {
        let slots = IssuerSlots::new(1);
        let mut wakes = Box::pin(slots.take_wakes());
        let held = slots.try_take(SLOW, &certificate("holder"), Turn::Starting);
        for waiter in ["gone-before", "gone-after", "stays"] {
            assert!(slots.try_take(SLOW, &certificate(waiter), Turn::Starting).is_none());
        }
        slots.leave(&certificate("gone-before"));
        drop(held);
        assert_eq!(wakes_now(&mut wakes), ["gone-after"], "the deleted waiter is not woken");
        slots.leave(&certificate("gone-after"));
        assert_eq!(wakes_now(&mut wakes), ["stays"], "the slot offered to a deleted one passes on");
        assert!(slots.try_take(SLOW, &certificate("stays"), Turn::Starting).is_some());
        assert_eq!(slots.waiting(), 0, "nothing is left of the deleted ones");
    }

    #[test]
    fn a_certificate_without_a_certificate_goes_before_renewals_that_came_first() {
        let slots = IssuerSlots::new(1);
        let mut wakes = Box::pin(slots.take_wakes());
        let held = slots.try_take(SLOW, &certificate("holder"), Turn::Starting);
        for renewal in ["renewal-1", "renewal-2"] {
            assert!(slots.try_take(SLOW, &certificate(renewal), Turn::Renewing).is_none());
        }
        assert!(slots.try_take(SLOW, &certificate("new"), Turn::Starting).is_none());
        assert!(slots.try_take(SLOW, &certificate("in-flight"), Turn::Continuing).is_none());
        drop(held);
        let mut served = Vec::new();
        for _ in 0..4 {
            let woken = wakes_now(&mut wakes);
            assert_eq!(woken.len(), 1, "one slot, one wake at a time");
            let turn = if woken[0].starts_with("renewal") { Turn::Renewing } else { Turn::Starting };
            drop(slots.try_take(SLOW, &certificate(&woken[0]), turn).expect("the woken one takes its slot"));
            served.extend(woken);
        }
        assert_eq!(served, ["in-flight", "new", "renewal-1", "renewal-2"]);
    }

    #[test]
    fn an_offer_not_taken_in_time_passes_to_the_next_and_the_late_one_queues_again() {
        let slots = IssuerSlots::with_offer_timeout(1, Duration::ZERO, WAKE_CAPACITY);
        let mut wakes = Box::pin(slots.take_wakes());
        let held = slots.try_take(SLOW, &certificate("holder"), Turn::Starting);
        assert!(slots.try_take(SLOW, &certificate("lost"), Turn::Starting).is_none());
        assert!(slots.try_take(SLOW, &certificate("next"), Turn::Starting).is_none());
        drop(held);
        assert_eq!(wakes_now(&mut wakes), ["lost"]);
        // "lost" never comes (its wake went astray): the next pass at this issuer passes the offer on.
        assert!(slots.try_take(SLOW, &certificate("newcomer"), Turn::Starting).is_none());
        assert_eq!(wakes_now(&mut wakes), ["next"]);
    }

    #[test]
    fn a_wake_that_does_not_fit_the_channel_is_covered_by_the_offer_timeout() {
        let slots = IssuerSlots::with_offer_timeout(1, Duration::ZERO, 1);
        let mut wakes = Box::pin(slots.take_wakes());
        let holder = slots.try_take(SLOW, &certificate("holder"), Turn::Starting);
        let other = slots.try_take(FAST, &certificate("other-holder"), Turn::Starting);
        assert!(slots.try_take(SLOW, &certificate("a"), Turn::Starting).is_none());
        assert!(slots.try_take(FAST, &certificate("b"), Turn::Starting).is_none());
        drop(holder);
        drop(other);
        assert_eq!(wakes_now(&mut wakes), ["a"], "the channel holds one; b's wake is dropped");
        assert!(
            slots.try_take(FAST, &certificate("b"), Turn::Starting).is_some(),
            "b's fallback pass takes its expired offer's slot"
        );
    }

    #[test]
    fn a_certificate_that_changes_issuer_gives_up_its_place_at_the_old_one() {
        let slots = IssuerSlots::new(1);
        let mut wakes = Box::pin(slots.take_wakes());
        let held = slots.try_take(SLOW, &certificate("holder"), Turn::Starting);
        assert!(slots.try_take(SLOW, &certificate("moved"), Turn::Starting).is_none());
        assert!(slots.try_take(SLOW, &certificate("stayed"), Turn::Starting).is_none());
        assert!(
            slots.try_take(FAST, &certificate("moved"), Turn::Starting).is_some(),
            "its new issuer has a free slot"
        );
        drop(held);
        assert_eq!(wakes_now(&mut wakes), ["stayed"]);
    }

    #[test]
    fn an_issuer_with_nothing_held_or_waiting_is_forgotten() {
        let slots = IssuerSlots::new(1);
        let held = slots.try_take(SLOW, &certificate("a"), Turn::Starting);
        assert!(slots.try_take(SLOW, &certificate("b"), Turn::Starting).is_none());
        drop(held);
        drop(slots.try_take(SLOW, &certificate("b"), Turn::Starting));
        assert!(slots.shared.lock().issuers.is_empty(), "no memory kept for an idle issuer");
    }

    /// Many Certificates take and release slots from several threads at once; each that finds none waits
    /// for its wake and nothing else. A lost wake leaves one waiting forever (the test times out).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn under_contention_no_wake_is_lost_and_every_certificate_gets_its_turns() {
        let slots = Arc::new(IssuerSlots::new(3));
        let mut wakes = Box::pin(slots.take_wakes());
        let mut wake_of = HashMap::new();
        let mut tasks = Vec::new();
        for n in 0..40 {
            let (tx, mut rx) = mpsc::unbounded_channel::<()>();
            wake_of.insert(format!("c{n}"), tx);
            let slots = slots.clone();
            tasks.push(tokio::spawn(async move {
                let me = certificate(&format!("c{n}"));
                for _ in 0..20 {
                    loop {
                        let turn = if n % 3 == 0 { Turn::Continuing } else { Turn::Starting };
                        if let Some(slot) = slots.try_take(SLOW, &me, turn) {
                            tokio::task::yield_now().await;
                            drop(slot);
                            break;
                        }
                        rx.recv().await.expect("woken");
                    }
                }
            }));
        }
        let dispatcher = tokio::spawn(async move {
            while let Some(woken) = wakes.next().await {
                let _ = wake_of[&woken.name].send(());
            }
        });
        let all = futures::future::join_all(tasks);
        let finished = tokio::time::timeout(Duration::from_secs(20), all).await.expect("every Certificate finished");
        assert!(finished.iter().all(Result::is_ok));
        dispatcher.abort();
        assert_eq!(slots.waiting(), 0);
    }

    #[test]
    fn by_default_one_issuer_may_use_three_quarters_of_the_workers_and_at_least_one() {
        let expected = [(0, 1), (1, 1), (2, 2), (3, 2), (4, 3), (8, 6), (16, 12), (32, 24), (64, 48)];
        for (concurrency, per_issuer) in expected {
            assert_eq!(default_per_issuer(concurrency), per_issuer, "{concurrency} workers");
        }
    }
}

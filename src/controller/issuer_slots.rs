//! A limit on the Certificates that work with one issuer at once, so that a slow or hostile CA cannot hold
//! every worker: a Certificate whose issuer has no free slot is looked at again shortly, without blocking
//! a worker, while Certificates of other issuers go on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The slots of each issuer (by `kind/namespace/name`), `per_issuer` each.
pub struct IssuerSlots {
    per_issuer: usize,
    issuers: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl IssuerSlots {
    /// `per_issuer` slots for every issuer (at least one).
    pub fn new(per_issuer: usize) -> IssuerSlots {
        IssuerSlots { per_issuer: per_issuer.max(1), issuers: Mutex::default() }
    }

    /// A slot of `issuer`, held until the permit is dropped; `None` when all are taken.
    pub fn try_take(&self, issuer: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut issuers = self.issuers.lock().ok()?;
            issuers.entry(issuer.to_string()).or_insert_with(|| Arc::new(Semaphore::new(self.per_issuer))).clone()
        };
        semaphore.try_acquire_owned().ok()
    }
}

/// The default number of slots per issuer: every worker. Measured with one issuer and 100 Certificates at
/// once (./bench, 2 cores), a limit of 12 of 16 cut throughput from 17.2 to 11.4 certificates per second, so
/// the limit is for operators whose issuers are many and some slow (`--issuer-concurrency`).
pub fn default_per_issuer(concurrency: u16) -> usize {
    usize::from(concurrency.max(1))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_issuer_gets_at_most_its_slots_and_others_are_not_affected() {
        let slots = IssuerSlots::new(2);
        let first = slots.try_take("ClusterIssuer//slow");
        let second = slots.try_take("ClusterIssuer//slow");
        assert!(first.is_some() && second.is_some());
        assert!(slots.try_take("ClusterIssuer//slow").is_none(), "the slow issuer's slots are all taken");
        assert!(slots.try_take("Issuer/apps/fast").is_some(), "another issuer still has slots");
        drop(first);
        assert!(slots.try_take("ClusterIssuer//slow").is_some(), "a slot comes back when released");
    }

    #[test]
    fn by_default_one_issuer_may_use_every_worker() {
        for concurrency in [0, 1, 16, 64] {
            assert_eq!(default_per_issuer(concurrency), usize::from(concurrency.max(1)), "{concurrency} workers");
        }
    }
}

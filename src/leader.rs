//! Leader election through a `coordination.k8s.io/v1` Lease (kube-lease-manager): with several replicas,
//! only the holder of the Lease reconciles; the others wait as standbys and take over when it expires.

use k8s_openapi::api::coordination::v1::Lease;
use kube::Client;
use kube::api::Api;
use kube_lease_manager::{LeaseManager, LeaseManagerBuilder};
use std::time::{Duration, Instant};

/// The name of the Lease kacme replicas compete for.
pub const LEASE_NAME: &str = "kacme-controller";

/// How to take part in leader election.
#[derive(Clone, Debug)]
pub struct LeaderElectionConfig {
    /// Namespace of the Lease (the operator's own).
    pub namespace: String,
    /// Name of the Lease ([`LEASE_NAME`]).
    pub lease_name: String,
    /// This process's identity in the Lease (the Pod name).
    pub identity: String,
    /// How long the Lease is valid after its last renewal: a crashed leader is replaced after at most this
    /// long (plus up to a second).
    pub lease_duration: Duration,
}

impl LeaderElectionConfig {
    /// How long before expiry the leader renews: two thirds of the lease (10 s of 15 s), so that a failing
    /// renewal has time for retries, as client-go's renew deadline gives it.
    pub fn renew_before(&self) -> Duration {
        (self.lease_duration * 2 / 3).max(Duration::from_secs(1))
    }

    /// The timeout of each Lease request: a renewal that hangs must fail while the Lease is still valid.
    pub fn request_timeout(&self) -> Duration {
        (self.renew_before() / 4).clamp(Duration::from_millis(500), Duration::from_secs(5))
    }

    /// How long a leader retries failing renewals before it steps down. The first failure comes at most
    /// one request timeout after the renewal began, `renew_before` before expiry; stepping down a second
    /// before expiry leaves no moment with two leaders.
    pub fn retry_window(&self) -> Duration {
        self.renew_before()
            .saturating_sub(self.request_timeout() + Duration::from_secs(1))
            .max(Duration::from_millis(250))
    }
}

/// Leader election failures.
#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("preparing Lease {namespace}/{name}: {source}")]
    PrepareLease {
        namespace: String,
        name: String,
        #[source]
        source: kube_lease_manager::LeaseManagerError,
    },
    #[error("lease duration {0:?} is too short: use at least 3s")]
    LeaseTooShort(Duration),
    #[error("building the Kubernetes client of leader election: {source}")]
    Client {
        #[source]
        source: kube::Error,
    },
}

/// Why this process stopped being the leader.
#[derive(Debug)]
pub enum LeaseLoss {
    /// Another replica holds the Lease now.
    TakenOver,
    /// Renewals failed for so long that the Lease may have expired.
    RenewalFailed(String),
}

impl std::fmt::Display for LeaseLoss {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LeaseLoss::TakenOver => f.write_str("another replica holds the Lease"),
            LeaseLoss::RenewalFailed(error) => write!(f, "renewing the Lease failed for too long: {error}"),
        }
    }
}

/// A participant in leader election.
pub struct LeaderElection {
    manager: LeaseManager,
    leases: Api<Lease>,
    config: LeaderElectionConfig,
}

impl LeaderElection {
    /// Joins the election: creates the Lease when it does not exist yet (nobody holds it then). Lease
    /// requests go through a client of their own, built from `kube_config` with short timeouts.
    pub async fn join(kube_config: kube::Config, config: LeaderElectionConfig) -> Result<LeaderElection, LeaderError> {
        if config.lease_duration < Duration::from_secs(3) {
            return Err(LeaderError::LeaseTooShort(config.lease_duration));
        }
        let mut kube_config = kube_config;
        kube_config.connect_timeout = Some(config.request_timeout());
        kube_config.read_timeout = Some(config.request_timeout());
        kube_config.write_timeout = Some(config.request_timeout());
        let client = Client::try_from(kube_config).map_err(|source| LeaderError::Client { source })?;
        let manager = LeaseManagerBuilder::new(client.clone(), &config.lease_name)
            .with_namespace(&config.namespace)
            .with_identity(&config.identity)
            .with_duration(config.lease_duration.as_secs())
            .with_grace(config.renew_before().as_secs())
            .with_field_manager(format!("kacme-leader-election-{}", config.identity))
            .build()
            .await
            .map_err(|source| LeaderError::PrepareLease {
                namespace: config.namespace.clone(),
                name: config.lease_name.clone(),
                source,
            })?;
        let leases = Api::namespaced(client, &config.namespace);
        Ok(LeaderElection { manager, leases, config })
    }

    /// The identity that holds the Lease now, if anyone does (for logs).
    async fn holder(&self) -> Option<String> {
        let lease = self.leases.get_opt(&self.config.lease_name).await.ok()??;
        lease.spec?.holder_identity.filter(|h| !h.is_empty())
    }

    /// Waits until this process holds the Lease, retrying API failures for ever.
    pub async fn acquire(&self) {
        let lease = format!("{}/{}", self.config.namespace, self.config.lease_name);
        match self.holder().await {
            Some(holder) => tracing::info!(%lease, %holder, identity = %self.config.identity,
                "standby: waiting for the leader Lease, held by another replica"),
            None => tracing::info!(%lease, identity = %self.config.identity, "standby: waiting for the leader Lease"),
        }
        loop {
            match self.manager.changed().await {
                Ok(true) => {
                    tracing::info!(%lease, identity = %self.config.identity, "acquired the leader Lease; reconciling");
                    return;
                }
                Ok(false) => {}
                Err(error) => {
                    tracing::warn!(%lease, %error, "leader election: reading or taking the Lease failed; retrying");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
            }
        }
    }

    /// While leading: resolves when the Lease is lost, or when renewals have failed for so long that it
    /// may have expired (then another replica may take over, so this one must stop).
    pub async fn lost(&self) -> LeaseLoss {
        let window = self.config.retry_window();
        let mut failing_since: Option<Instant> = None;
        loop {
            let started = Instant::now();
            let result = self.manager.changed().await;
            // A call that lasted longer than a retry renewed (or waited) successfully before it failed:
            // a new run of failures begins.
            if started.elapsed() > window {
                failing_since = None;
            }
            match result {
                Ok(false) => return LeaseLoss::TakenOver,
                Ok(true) => failing_since = None,
                Err(error) => {
                    let since = *failing_since.get_or_insert_with(Instant::now);
                    if since.elapsed() >= window {
                        return LeaseLoss::RenewalFailed(error.to_string());
                    }
                    tracing::warn!(%error, "renewing the leader Lease failed; retrying");
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
            }
        }
    }

    /// Gives the Lease up (on a clean shutdown), so that a standby takes over at once.
    pub async fn release(&self) {
        match self.manager.release().await {
            Ok(()) => tracing::info!(lease = %self.config.lease_name, "released the leader Lease"),
            Err(error) => tracing::warn!(%error, "releasing the leader Lease failed; it expires by itself"),
        }
    }
}

/// This process's identity in the Lease: the Pod name when running in a Pod (`POD_NAME`, from the
/// downward API), else the host name and process id.
pub fn default_identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/etc/hostname").ok())
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "kacme".into());
    format!("{host}-{}", std::process::id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(seconds: u64) -> LeaderElectionConfig {
        LeaderElectionConfig {
            namespace: "kacme".into(),
            lease_name: LEASE_NAME.into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(seconds),
        }
    }

    #[test]
    fn the_leader_renews_two_thirds_of_the_lease_before_it_expires() {
        assert_eq!(config(15).renew_before(), Duration::from_secs(10));
        assert_eq!(config(3).renew_before(), Duration::from_secs(2));
        assert_eq!(config(1).renew_before(), Duration::from_secs(1), "never under a second");
    }

    #[test]
    fn failing_renewals_are_retried_only_while_the_lease_is_surely_still_held() {
        for seconds in [3, 6, 15, 30, 60, 300] {
            let config = config(seconds);
            let (renew_before, timeout, window) =
                (config.renew_before(), config.request_timeout(), config.retry_window());
            // The first failure comes at most one timeout after the renewal began; the Lease expires
            // renew_before after that beginning.
            assert!(timeout + window < renew_before, "{seconds}s: {timeout:?} + {window:?} < {renew_before:?}");
            assert!(window >= Duration::from_millis(250), "{seconds}s: some retries");
        }
        let config = config(15);
        assert_eq!(
            (config.request_timeout(), config.retry_window()),
            (Duration::from_millis(2500), Duration::from_millis(6500))
        );
    }
}

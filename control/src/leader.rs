//! Leader election through a `coordination.k8s.io/v1` Lease, as client-go's
//! `leaderelection` package does it, so that several control planes can share one etcd
//! while only one of them schedules and only one runs the controllers.
//!
//! A candidate reads the Lease and takes it when it does not exist (create), when it
//! already holds it (renew), or when the holder let it expire (`renewTime +
//! leaseDurationSeconds` in the past, or no holder at all: takeover, which bumps
//! `leaseTransitions`). Every write carries the resourceVersion it read, so of two
//! candidates racing for an expired Lease exactly one wins; the other gets a 409.
//!
//! The leader renews every `retry_period`. If it cannot renew for `renew_deadline`
//! (shorter than `lease_duration`, so it stops before anyone else may take over) it
//! stops its work and becomes a candidate again. On shutdown it releases the Lease
//! (client-go's `ReleaseOnCancel`), so a standby takes over at once instead of after a
//! lease duration.
//!
//! Expiry compares the holder's `renewTime` with this host's clock, so the candidates'
//! clocks must roughly agree (as they do for several control planes on NTP-synced
//! hosts; the renew deadline's margin of `lease_duration - renew_deadline` absorbs
//! small skew).

use std::future::Future;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::time::Instant;

/// The namespace kube-scheduler and kube-controller-manager keep their Leases in.
pub const LEASE_NAMESPACE: &str = "kube-system";
/// The scheduler's Lease.
pub const SCHEDULER_LEASE: &str = "kube-scheduler";
/// The controller manager's Lease.
pub const CONTROLLER_MANAGER_LEASE: &str = "kube-controller-manager";

/// How one candidate takes part in one election.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Lease's name.
    pub lease_name: String,
    /// The Lease's namespace.
    pub namespace: String,
    /// Who this candidate is; written to `spec.holderIdentity`. Unique per process.
    pub identity: String,
    /// How long a Lease stays valid after its last renewal (`leaseDurationSeconds`).
    pub lease_duration: Duration,
    /// How long the leader keeps working without a successful renewal.
    pub renew_deadline: Duration,
    /// How often candidates try to acquire and the leader renews.
    pub retry_period: Duration,
}

impl Config {
    /// Kubernetes' defaults (15 s / 10 s / 2 s) for `lease_name` in `kube-system`, with
    /// this process's [`default_identity`].
    pub fn new(lease_name: impl Into<String>) -> Config {
        Config {
            lease_name: lease_name.into(),
            namespace: LEASE_NAMESPACE.to_string(),
            identity: default_identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// `<hostname>_<pid>_<random>`: the host and process say who holds a Lease, the random
/// part keeps two hosts with the same name (or two containers with pid 1) apart.
pub fn default_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_string());
    let random = uuid::Uuid::new_v4().simple().to_string();
    format!("{host}_{}_{}", std::process::id(), &random[..8])
}

/// Why one attempt to acquire or renew did not leave us holding the Lease.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The API server refused or failed the request.
    #[error("lease request failed: {0}")]
    Api(#[from] kube::Error),
    /// Another candidate wrote the Lease between our read and our write.
    #[error("another candidate updated the lease first")]
    Conflict,
    /// Someone else holds the Lease and it has not expired.
    #[error("the lease is held by {0}")]
    HeldBy(String),
}

/// Whether a candidate may take the Lease described by `spec` at `now`: nobody holds
/// it, or its holder did not renew it within its duration.
pub fn is_expired(spec: &LeaseSpec, now: Timestamp) -> bool {
    if spec.holder_identity.as_deref().unwrap_or("").is_empty() {
        return true;
    }
    let Some(renewed) = spec.renew_time.as_ref().or(spec.acquire_time.as_ref()) else {
        return true;
    };
    let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0).max(0));
    renewed.0.as_microsecond() + duration * 1_000_000 <= now.as_microsecond()
}

/// The spec `identity` writes when it creates, renews or takes over a Lease whose
/// current spec is `old` (`None`: the Lease does not exist yet).
pub fn acquired_spec(
    old: Option<&LeaseSpec>,
    identity: &str,
    lease_duration: Duration,
    now: Timestamp,
) -> LeaseSpec {
    let seconds = i32::try_from(lease_duration.as_secs())
        .unwrap_or(i32::MAX)
        .max(1);
    let now = MicroTime(now);
    match old {
        None => LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(0),
            ..LeaseSpec::default()
        },
        Some(old) if old.holder_identity.as_deref() == Some(identity) => LeaseSpec {
            lease_duration_seconds: Some(seconds),
            acquire_time: old.acquire_time.clone().or_else(|| Some(now.clone())),
            renew_time: Some(now),
            ..old.clone()
        },
        Some(old) => LeaseSpec {
            holder_identity: Some(identity.to_string()),
            lease_duration_seconds: Some(seconds),
            acquire_time: Some(now.clone()),
            renew_time: Some(now),
            lease_transitions: Some(old.lease_transitions.unwrap_or(0).saturating_add(1)),
            ..old.clone()
        },
    }
}

/// The spec a leader leaves behind when it steps down: no holder, so the next candidate
/// takes over at once (what client-go writes on `ReleaseOnCancel`).
pub fn released_spec(old: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    let now = MicroTime(now);
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: Some(now.clone()),
        renew_time: Some(now),
        ..old.clone()
    }
}

/// One candidate's view of its Lease.
struct Elector {
    api: Api<Lease>,
    config: Config,
}

impl Elector {
    /// One attempt: create, renew or take over the Lease. `Ok` means we hold it now.
    async fn try_acquire_or_renew(&self) -> Result<(), Error> {
        let name = &self.config.lease_name;
        let identity = &self.config.identity;
        let now = Timestamp::now();
        let Some(mut lease) = self.api.get_opt(name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(self.config.namespace.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(acquired_spec(
                    None,
                    identity,
                    self.config.lease_duration,
                    now,
                )),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(()),
                Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict),
                Err(e) => Err(e.into()),
            };
        };
        let old = lease.spec.clone().unwrap_or_default();
        let ours = old.holder_identity.as_deref() == Some(identity.as_str());
        if !ours && !is_expired(&old, now) {
            return Err(Error::HeldBy(old.holder_identity.unwrap_or_default()));
        }
        lease.spec = Some(acquired_spec(
            Some(&old),
            identity,
            self.config.lease_duration,
            now,
        ));
        // The object still carries the resourceVersion we read: the write is a CAS.
        self.replace(&lease).await
    }

    /// Gives the Lease up if we still hold it; errors are only logged, since the Lease
    /// expires by itself anyway.
    async fn release(&self) {
        let name = &self.config.lease_name;
        let result = async {
            let Some(mut lease) = self.api.get_opt(name).await? else {
                return Ok(());
            };
            let old = lease.spec.clone().unwrap_or_default();
            if old.holder_identity.as_deref() != Some(self.config.identity.as_str()) {
                return Ok(());
            }
            lease.spec = Some(released_spec(&old, Timestamp::now()));
            self.replace(&lease).await
        };
        match tokio::time::timeout(self.config.retry_period, result).await {
            Ok(Ok(())) => tracing::info!(
                lease = %name,
                identity = %self.config.identity,
                "released the leader lease"
            ),
            Ok(Err(e)) => tracing::warn!(
                lease = %name,
                error = %e,
                "could not release the leader lease; it will expire"
            ),
            Err(_) => tracing::warn!(
                lease = %name,
                "releasing the leader lease timed out; it will expire"
            ),
        }
    }

    async fn replace(&self, lease: &Lease) -> Result<(), Error> {
        match self
            .api
            .replace(&self.config.lease_name, &PostParams::default(), lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 409 => Err(Error::Conflict),
            Err(e) => Err(e.into()),
        }
    }
}

/// Resolves once `shutdown` is true (or its sender is gone).
async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|stop| *stop).await;
}

/// `retry_period` stretched by up to 20 %, so candidates that started together do not
/// keep hitting the API server in lockstep.
fn jittered(retry_period: Duration) -> Duration {
    retry_period.mul_f64(1.0 + 0.2 * rand::random::<f64>())
}

/// Runs `work()` whenever this process holds the Lease `config` names, until `shutdown`
/// turns true: acquires (retrying every `retry_period`), spawns `work()`, renews every
/// `retry_period`, and aborts the work when it cannot renew for `renew_deadline` (then
/// competes again, with a fresh `work()` if it wins). On shutdown the work is aborted
/// and the Lease released. Returns early, releasing the Lease, if the work itself ends.
pub async fn run_while_leader<F, Fut>(
    client: kube::Client,
    config: Config,
    mut shutdown: watch::Receiver<bool>,
    mut work: F,
) where
    F: FnMut() -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let elector = Elector {
        api: Api::namespaced(client, &config.namespace),
        config,
    };
    let lease = elector.config.lease_name.clone();
    let identity = elector.config.identity.clone();
    let retry = elector.config.retry_period;
    let renew_deadline = elector.config.renew_deadline;
    tracing::info!(%lease, %identity, "attempting to acquire the leader lease");
    loop {
        // Candidate: try until we hold the Lease.
        let mut last_holder = String::new();
        loop {
            if *shutdown.borrow() {
                return;
            }
            match tokio::time::timeout(renew_deadline, elector.try_acquire_or_renew()).await {
                Ok(Ok(())) => break,
                Ok(Err(Error::HeldBy(holder))) => {
                    if holder != last_holder {
                        tracing::info!(%lease, %identity, %holder, "another candidate leads");
                        last_holder = holder;
                    }
                }
                Ok(Err(Error::Conflict)) => {
                    tracing::debug!(%lease, "lost a race for the leader lease");
                }
                Ok(Err(e)) => {
                    tracing::warn!(%lease, error = %e, "acquiring the leader lease failed");
                }
                Err(_) => tracing::warn!(%lease, "acquiring the leader lease timed out"),
            }
            tokio::select! {
                _ = stopped(&mut shutdown) => return,
                _ = tokio::time::sleep(jittered(retry)) => {}
            }
        }

        // Leader: work, and renew until we cannot.
        tracing::info!(%lease, %identity, "acquired the leader lease; starting work");
        let mut task = tokio::spawn(work());
        let mut renewed = Instant::now();
        let why = loop {
            tokio::select! {
                biased;
                _ = stopped(&mut shutdown) => {
                    task.abort();
                    let _ = (&mut task).await;
                    elector.release().await;
                    return;
                }
                _ = &mut task => {
                    tracing::warn!(%lease, %identity, "work ended while leading; stepping down");
                    elector.release().await;
                    return;
                }
                _ = tokio::time::sleep(retry) => {}
            }
            let deadline = renewed + renew_deadline;
            match tokio::time::timeout_at(deadline, elector.try_acquire_or_renew()).await {
                Ok(Ok(())) => renewed = Instant::now(),
                Ok(Err(Error::HeldBy(holder))) => {
                    break format!("the lease is now held by {holder}");
                }
                Ok(Err(e)) if Instant::now() >= deadline => {
                    break format!("no renewal within the renew deadline: {e}");
                }
                Ok(Err(e)) => {
                    tracing::warn!(%lease, error = %e, "renewing the leader lease failed; retrying");
                }
                Err(_) => break "no renewal within the renew deadline".to_string(),
            }
        };
        task.abort();
        let _ = task.await;
        tracing::warn!(%lease, %identity, reason = %why, "lost the leader lease; work stopped");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + seconds).expect("a valid timestamp")
    }

    fn held(holder: &str, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_string()),
            lease_duration_seconds: Some(duration),
            acquire_time: Some(MicroTime(at(0))),
            renew_time: Some(MicroTime(at(renewed))),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn a_lease_expires_a_duration_after_its_last_renewal() {
        let spec = held("a", 100, 15);
        assert!(!is_expired(&spec, at(100)));
        assert!(!is_expired(&spec, at(114)));
        assert!(is_expired(&spec, at(115)));
        assert!(is_expired(&spec, at(1000)));
        // A clock behind the holder's: the lease looks fresh, never expired.
        assert!(!is_expired(&spec, at(50)));
    }

    #[test]
    fn a_lease_without_holder_or_times_is_free() {
        let mut spec = held("a", 100, 15);
        spec.holder_identity = Some(String::new());
        assert!(is_expired(&spec, at(100)));
        spec.holder_identity = None;
        assert!(is_expired(&spec, at(100)));

        let mut spec = held("a", 100, 15);
        spec.renew_time = None;
        // Falls back to the acquire time (0 here).
        assert!(is_expired(&spec, at(15)));
        assert!(!is_expired(&spec, at(14)));
        spec.acquire_time = None;
        assert!(is_expired(&spec, at(0)));
    }

    #[test]
    fn creating_starts_with_zero_transitions() {
        let spec = acquired_spec(None, "me", Duration::from_secs(15), at(5));
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.lease_duration_seconds, Some(15));
        assert_eq!(spec.lease_transitions, Some(0));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(5))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(5))));
    }

    #[test]
    fn renewing_keeps_acquire_time_and_transitions() {
        let old = held("me", 100, 15);
        let spec = acquired_spec(Some(&old), "me", Duration::from_secs(15), at(102));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(0))));
        assert_eq!(spec.renew_time, Some(MicroTime(at(102))));
        assert_eq!(spec.lease_transitions, Some(3));
        assert!(!is_expired(&spec, at(116)));
    }

    #[test]
    fn taking_over_counts_a_transition() {
        let old = held("other", 100, 15);
        let spec = acquired_spec(Some(&old), "me", Duration::from_secs(15), at(120));
        assert_eq!(spec.holder_identity.as_deref(), Some("me"));
        assert_eq!(spec.acquire_time, Some(MicroTime(at(120))));
        assert_eq!(spec.lease_transitions, Some(4));
    }

    #[test]
    fn a_released_lease_is_free_at_once() {
        let old = held("me", 100, 15);
        let spec = released_spec(&old, at(101));
        assert!(spec.holder_identity.is_none());
        assert_eq!(spec.lease_transitions, Some(3));
        assert!(is_expired(&spec, at(101)));
        let next = acquired_spec(Some(&spec), "other", Duration::from_secs(15), at(101));
        assert_eq!(next.lease_transitions, Some(4));
    }

    #[test]
    fn identities_differ_per_call_and_name_the_process() {
        let a = default_identity();
        let b = default_identity();
        assert_ne!(a, b);
        let pid = std::process::id().to_string();
        assert_eq!(a.rsplit('_').nth(1), Some(pid.as_str()), "{a}");
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(2));
            assert!(d >= Duration::from_secs(2) && d <= Duration::from_millis(2400));
        }
    }
}

//! A `coordination.k8s.io/v1` Lease that keeps two runs from copying at the same time
//! (`--lease NAME`): the initial-sync Job and the CronJob's runs, whose own
//! `concurrencyPolicy: Forbid` only keeps the CronJob's Jobs apart.
//!
//! The holder is a run, not a pod: every shard of one Indexed Job names the same holder
//! (the Job's uid, `IMAGE_SYNC_LEASE_HOLDER` from the downward API), so the shards work in
//! parallel while another Job's run finds the lease held. A holder renews the lease while
//! it runs; a crashed run's lease expires after its duration, so nothing deadlocks. Writes
//! are optimistic (the Lease's `resourceVersion`): of two runs racing for a free lease, the
//! apiserver accepts one update and answers the other 409, which reads as "held".

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};

/// How long a lease stays held without a renewal.
pub const DURATION_SECS: i32 = 60;
/// How often a holder renews (a third of the duration: two renewals may fail in a row).
pub const RENEW_SECS: u64 = 20;

/// Checks a Lease name (a DNS-1123 subdomain: lowercase letters, digits, `-` and `.`,
/// starting and ending with a letter or digit, at most 253 characters).
pub fn parse_name(raw: &str) -> Result<String, String> {
    let valid = !raw.is_empty()
        && raw.len() <= 253
        && raw
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && raw.starts_with(|c: char| c.is_ascii_alphanumeric())
        && raw.ends_with(|c: char| c.is_ascii_alphanumeric());
    if valid {
        Ok(raw.to_owned())
    } else {
        Err("a Lease name is lowercase letters, digits, `-` and `.`, starting and ending with a letter or digit (at most 253 characters)".to_owned())
    }
}

/// The lease as one run sees it when it asks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// This run holds it now (it was free, expired, or already ours).
    Acquired,
    /// Another run holds it until it expires.
    Held {
        /// The other run.
        holder: String,
        /// Seconds until it expires unless renewed.
        expires_in_secs: i64,
    },
}

/// Why the lease could not be read or written (no permission, no API server, ...).
#[derive(Debug)]
pub struct LeaseError {
    /// The HTTP status the API server answered, if it answered.
    pub status: Option<u16>,
    /// What went wrong, for the log.
    pub message: String,
}

impl std::fmt::Display for LeaseError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.status {
            Some(status) => write!(f, "the API server answered {status}: {}", self.message),
            None => write!(f, "{}", self.message),
        }
    }
}

impl From<kube::Error> for LeaseError {
    fn from(err: kube::Error) -> Self {
        match err {
            kube::Error::Api(status) => Self {
                status: Some(status.code),
                message: status.message.clone(),
            },
            other => Self {
                status: None,
                message: other.to_string(),
            },
        }
    }
}

/// Whether HOLDER may take a lease in state SPEC at NOW (milliseconds since the epoch):
/// `Ok(())` when it is free, expired or already HOLDER's; else who holds it for how long.
pub fn decide(spec: Option<&LeaseSpec>, holder: &str, now_ms: i64) -> Result<(), Outcome> {
    let Some(spec) = spec else { return Ok(()) };
    let current = spec.holder_identity.as_deref().unwrap_or_default();
    if current.is_empty() || current == holder {
        return Ok(());
    }
    let duration_ms = i64::from(spec.lease_duration_seconds.unwrap_or(DURATION_SECS)) * 1000;
    let renewed_ms = spec
        .renew_time
        .as_ref()
        .or(spec.acquire_time.as_ref())
        .map_or(0, |time| time.0.as_millisecond());
    let expires_ms = renewed_ms.saturating_add(duration_ms);
    if expires_ms <= now_ms {
        return Ok(());
    }
    Err(Outcome::Held {
        holder: current.to_owned(),
        expires_in_secs: (expires_ms - now_ms + 999) / 1000,
    })
}

/// The lease NAME in the client's namespace.
pub struct LeaseHandle {
    api: Api<Lease>,
    name: String,
    holder: String,
}

impl LeaseHandle {
    /// In-cluster (the pod's ServiceAccount and namespace) or from the kubeconfig.
    pub async fn connect(name: &str, holder: &str) -> Result<Self, LeaseError> {
        let client = kube::Client::try_default().await?;
        let namespace = client.default_namespace().to_owned();
        Ok(Self {
            api: Api::namespaced(client, &namespace),
            name: name.to_owned(),
            holder: holder.to_owned(),
        })
    }

    /// Takes or renews the lease, or says who holds it.
    pub async fn acquire(&self) -> Result<Outcome, LeaseError> {
        let now = Timestamp::now();
        let existing = self.api.get_opt(&self.name).await?;
        if let Some(existing) = &existing
            && let Err(held) = decide(existing.spec.as_ref(), &self.holder, now.as_millisecond())
        {
            return Ok(held);
        }
        let ours = existing
            .as_ref()
            .and_then(|lease| lease.spec.as_ref())
            .is_some_and(|spec| spec.holder_identity.as_deref() == Some(self.holder.as_str()));
        let previous = existing.as_ref().and_then(|lease| lease.spec.clone());
        let spec = LeaseSpec {
            holder_identity: Some(self.holder.clone()),
            lease_duration_seconds: Some(DURATION_SECS),
            acquire_time: if ours {
                previous.as_ref().and_then(|spec| spec.acquire_time.clone())
            } else {
                Some(MicroTime(now))
            },
            renew_time: Some(MicroTime(now)),
            lease_transitions: Some(
                previous
                    .as_ref()
                    .and_then(|spec| spec.lease_transitions)
                    .unwrap_or(0)
                    + i32::from(!ours && existing.is_some()),
            ),
            ..LeaseSpec::default()
        };
        let written = match existing {
            None => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(spec),
                };
                self.api.create(&PostParams::default(), &lease).await
            }
            Some(mut lease) => {
                lease.spec = Some(spec);
                self.api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
            }
        };
        match written {
            Ok(_) => Ok(Outcome::Acquired),
            // Another run wrote first (409 on update, already exists on create): re-read it.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                let lease = self.api.get(&self.name).await?;
                Ok(decide(
                    lease.spec.as_ref(),
                    &self.holder,
                    Timestamp::now().as_millisecond(),
                )
                .err()
                .unwrap_or(Outcome::Acquired))
            }
            Err(err) => Err(err.into()),
        }
    }
}

impl LeaseHandle {
    /// Gives the lease up if this run still holds it (an unsharded run at its end: the next
    /// run need not wait for the expiry). A conflict means someone else took it: fine.
    pub async fn release(&self) -> Result<(), LeaseError> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        let Some(spec) = lease.spec.as_mut() else {
            return Ok(());
        };
        if spec.holder_identity.as_deref() != Some(self.holder.as_str()) {
            return Ok(());
        }
        spec.holder_identity = None;
        match self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(()),
            Err(err) => Err(err.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(holder: &str, renewed_ms: i64, secs: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: Some(holder.to_owned()),
            lease_duration_seconds: Some(secs),
            renew_time: Some(MicroTime(
                Timestamp::from_millisecond(renewed_ms).expect("valid time"),
            )),
            ..LeaseSpec::default()
        }
    }

    #[test]
    fn lease_names_are_dns_subdomains() {
        assert!(parse_name("image-sync").is_ok());
        for bad in ["", "Image-Sync", "-x", "x-", "a/b", "a b", &"a".repeat(254)] {
            assert!(parse_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_free_an_expired_or_an_own_lease_is_taken_another_runs_is_not() {
        let now = 1_800_000_000_000;
        assert_eq!(decide(None, "job-a", now), Ok(()));
        assert_eq!(decide(Some(&LeaseSpec::default()), "job-a", now), Ok(()));
        assert_eq!(
            decide(Some(&spec("job-a", now - 1000, 60)), "job-a", now),
            Ok(())
        );
        // A crashed run's lease: expired, so the next run is not blocked forever.
        assert_eq!(
            decide(Some(&spec("job-b", now - 61_000, 60)), "job-a", now),
            Ok(())
        );
        assert_eq!(
            decide(Some(&spec("job-b", now - 1000, 60)), "job-a", now),
            Err(Outcome::Held {
                holder: "job-b".to_owned(),
                expires_in_secs: 59
            })
        );
    }
}

//! Phase 2: start an order. The private key is stored before status names the order, so before any pass
//! can finalize it.

use super::failure::IssuanceError;
use super::{NEXT_STEP, Pass};
use crate::acme::{OrderOptions, OrderSession};
use crate::api::names::{ANNOTATION_RENEW_REQUESTED_AT, TLS_KEY};
use crate::api::{IssuanceReason, RotationPolicy};
use crate::controller::ReconcileError;
use crate::controller::context::KeptOrder;
use crate::controller::context::SecretCreation;
use crate::decision::{SecretOwnership, next_key_ownership, replaced_certificate, secret_ownership};
use crate::desired::{EventNote, EventReason, build_next_key_secret, select_solver};
use crate::pki::{KeySpec, PrivateKey, generate_private_key, parse_private_key};
use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::runtime::controller::Action;

impl Pass<'_> {
    pub(super) async fn start_order(
        &mut self,
        reason: IssuanceReason,
        message: &str,
        secret: Option<&Secret>,
    ) -> Result<Action, ReconcileError> {
        let (issuer, account) = match self.issuer_and_account().await {
            Ok(found) => found,
            Err(wait) => return self.wait_for_issuer(&wait).await,
        };
        let labels = self.certificate.labels().clone();
        let spec = &self.certificate.spec;
        if let Some(unsolvable) = spec
            .dns_names
            .iter()
            .chain(&spec.ip_addresses)
            .find(|id| select_solver(&issuer.acme, &labels, id).is_none())
        {
            let error = IssuanceError::NoSolver { identifier: unsolvable.clone(), issuer: issuer.describe() };
            return self.fail(error).await;
        }
        let ips = match self.ip_addresses() {
            Ok(ips) => ips,
            Err(error) => return self.fail(error).await,
        };
        let profile = spec.profile.clone().or_else(|| issuer.acme.profile.clone());
        if let Some(profile) = &profile
            && let Err(message) = account.check_profile(profile)
        {
            return self.fail(IssuanceError::ProfileNotOffered(format!("{}: {message}", issuer.describe()))).await;
        }
        // A keystore that could not be written would waste the order: its password must be readable first.
        if let Err(error) = self.keystore_password().await {
            return self.fail(error).await;
        }
        let not_after = lifetime_to_send(spec.duration, issuer.acme.send_lifetime, self.now);
        let replaces = replaced_certificate(self.certificate, secret, reason);
        let options = OrderOptions { not_after, profile, replaces };
        let created = match OrderSession::create(&account, &spec.dns_names, &ips, &options).await {
            // A CA may refuse `replaces` (the certificate was replaced already, by another account, or the CA
            // forgot it): the renewal matters more than the hint, so order once more without it.
            Err(error) if options.replaces.is_some() => {
                tracing::warn!(%error, "the CA refused the order naming the certificate it replaces; ordering without");
                let without = OrderOptions { replaces: None, ..options.clone() };
                (OrderSession::create(&account, &spec.dns_names, &ips, &without).await, None)
            }
            created => (created, options.replaces.clone()),
        };
        let (created, replaced) = created;
        let session = match created {
            Ok(session) => session,
            Err(error) if not_after.is_some() && error.refuses_lifetime() => {
                let error = IssuanceError::DurationNotAllowed {
                    duration: spec.duration.map(|d| d.to_string()).unwrap_or_default(),
                    detail: format!("notAfter {}", not_after.map(crate::acme::rfc3339).unwrap_or_default()),
                    error: Box::new(error),
                };
                return self.fail(error).await;
            }
            Err(error) => return self.acme_failure(error, None, &account, &issuer).await,
        };
        // The key only once the order exists: an attempt the CA refuses or asks to retry costs no key
        // (an RSA 4096 key takes a while to generate).
        let key = match self.next_private_key(secret, reason) {
            Ok(key) => key,
            Err(error) => return self.fail(error).await,
        };
        // Storing the key only once the order exists means that while the CA is unreachable no attempt
        // writes a key: each such write (a watched Secret) would start the next attempt at once instead of
        // after the retry delay.
        let key_secret = build_next_key_secret(self.certificate, key.pem());
        let key_secret_name = key_secret.name_any();
        if let Err(message) = self.store_next_key(&key_secret).await? {
            return self.fail(IssuanceError::SecretNotOwned(message)).await;
        }
        let order = self.order_status(session.progress(), &account);
        let renewal_request = self.certificate.annotations().get(ANNOTATION_RENEW_REQUESTED_AT).cloned();
        self.transition().order_created(reason, message, order, key_secret_name, renewal_request);
        let url = session.progress().url.clone();
        let version = self.certificate.metadata.resource_version.as_deref().unwrap_or_default();
        tracing::info!(reason = reason.as_str(), order = %url, replaces = ?replaced, version, "created an ACME order");
        let replacing = replaced.map(|id| format!("; replaces certificate {id}")).unwrap_or_default();
        self.publish(EventNote::normal(
            EventReason::OrderCreated,
            format!("Created ACME order {url} ({message}{replacing})"),
        ))
        .await;
        let issuer = self.certificate.spec.issuer_ref.clone();
        self.ctx.keep_order(self.certificate, KeptOrder { session, key, issuer });
        Ok(Action::requeue(NEXT_STEP))
    }

    /// Stores the next-key Secret: created (a POST never overwrites); one that exists already is replaced
    /// only when it records this Certificate's UID (a leftover of an earlier attempt), else it is someone
    /// else's and stays as it is (the message says so).
    async fn store_next_key(&self, key_secret: &Secret) -> Result<Result<(), String>, ReconcileError> {
        let name = key_secret.name_any();
        let storing = |e| ReconcileError::kube(format!("storing the next private key in Secret {name}"), e);
        if self.ctx.create_secret(&self.namespace, key_secret).await.map_err(storing)? == SecretCreation::Created {
            return Ok(Ok(()));
        }
        let current = self
            .ctx
            .read_secret_afresh(&self.namespace, &name)
            .await
            .map_err(|e| ReconcileError::kube(format!("reading Secret {name}"), e))?;
        let Some(current) = current else {
            // Deleted since: the next pass creates it.
            return Err(ReconcileError::SecretVanished(name));
        };
        match next_key_ownership(&current, self.certificate) {
            SecretOwnership::Ours => {
                self.ctx.replace_secret(&self.namespace, key_secret, &current).await.map_err(storing)?;
                Ok(Ok(()))
            }
            SecretOwnership::Foreign(message) | SecretOwnership::OfEarlierCertificate(message) => Ok(Err(message)),
            SecretOwnership::WrittenBeforeUpgrade => Ok(Err(format!("Secret {name} is not this Certificate's"))),
        }
    }

    /// The key of the next certificate: the current one when the spec says never to rotate and it still
    /// fits (and its certificate was not revoked), else a new one.
    fn next_private_key(&self, secret: Option<&Secret>, reason: IssuanceReason) -> Result<PrivateKey, IssuanceError> {
        let spec = &self.certificate.spec;
        let wanted = KeySpec::from_spec(spec.private_key.as_ref());
        let never_rotate = spec.private_key.as_ref().and_then(|k| k.rotation_policy) == Some(RotationPolicy::Never)
            && reason != IssuanceReason::Revoked;
        if never_rotate
            && let Some(secret) = secret.filter(|s| secret_ownership(s, self.certificate).may_read())
            && let Some(value) = secret.data.as_ref().and_then(|d| d.get(TLS_KEY))
            && let Ok(current) = parse_private_key(&value.0)
            && current.spec() == wanted
        {
            return Ok(current);
        }
        generate_private_key(&wanted).map_err(IssuanceError::GenerateKey)
    }
}

/// When the certificate should end, to send to the CA as the order's `notAfter`: `duration` from now,
/// unless the spec asks for no duration or the issuer turned sending it off.
fn lifetime_to_send(
    duration: Option<crate::api::duration::GoDuration>,
    send_lifetime: Option<bool>,
    now: jiff::Timestamp,
) -> Option<std::time::SystemTime> {
    let duration = std::time::Duration::from(duration?);
    (send_lifetime != Some(false)).then(|| std::time::SystemTime::from(now) + duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, SystemTime};

    #[test]
    fn the_lifetime_is_sent_only_when_asked_for_and_not_turned_off() {
        let now = jiff::Timestamp::from_second(1_800_000_000).unwrap();
        let two_hours = Some(crate::api::duration::GoDuration::from(Duration::from_secs(7200)));
        let ends = SystemTime::from(now) + Duration::from_secs(7200);
        // (case, duration, sendLifetime, sent)
        let cases = [
            ("a duration is sent by default", two_hours, None, Some(ends)),
            ("a duration is sent when sending is on", two_hours, Some(true), Some(ends)),
            ("nothing is sent when sending is off", two_hours, Some(false), None),
            ("nothing is sent without a duration", None, None, None),
        ];
        for (case, duration, send, sent) in cases {
            assert_eq!(lifetime_to_send(duration, send, now), sent, "{case}");
        }
    }
}

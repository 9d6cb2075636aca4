//! Phase 4: the CA issued a chain. Check it and store it in the Certificate's Secret.

use super::Pass;
use super::failure::IssuanceError;
use crate::controller::ReconcileError;
use crate::controller::accounts::IssuerInfo;
use crate::controller::context::SecretCreation;
use crate::decision::{
    SecretOwnership, issued_differs_from_spec, renewal_schedule, secret_ownership, usages_annotation,
};
use crate::desired::{EventNote, EventReason, Validity, build_certificate_secret};
use crate::pki::{CsrRequest, PrivateKey, key_matches_certificate, parse_chain};
use jiff::Timestamp;
use kube::runtime::controller::Action;

impl Pass<'_> {
    pub(super) async fn store_certificate(
        &mut self,
        issuer: &IssuerInfo,
        account: &crate::acme::AcmeAccount,
        chain_pem: &str,
        key: &PrivateKey,
        request: &CsrRequest,
    ) -> Result<Action, ReconcileError> {
        let chain = match parse_chain(chain_pem.as_bytes()) {
            Ok(chain) => chain,
            Err(error) => return self.fail(IssuanceError::UnreadableChain(error)).await,
        };
        if !key_matches_certificate(key, &chain.leaf) {
            return self.fail(IssuanceError::CertificateForAnotherKey).await;
        }
        if let Some(difference) = issued_differs_from_spec(&self.certificate.spec, &chain.leaf) {
            return self.fail(IssuanceError::CertificateDiffers(difference)).await;
        }
        // The question is whether the chain leads to the issuing roots, so verify it at a moment it is valid:
        // the pass started before the CA signed, and a CA that does not backdate signs from "now".
        let verify_at = Timestamp::now().max(chain.leaf.not_before);
        let ca_crt = match issuer.issuing_trust().ca_crt_for(&chain, verify_at) {
            Ok(ca_crt) => ca_crt,
            Err(message) => return self.fail(IssuanceError::ChainNotTrusted(message)).await,
        };
        // Never take over a Secret that appeared meanwhile (the cache sees only kacme's own Secrets). One the
        // cache does not hold is created (a POST never overwrites: it fails when the Secret exists), and only
        // then read to learn whose it is; one the cache holds is looked at once more at the apiserver.
        let name = self.certificate.spec.secret_name.clone();
        let reading = |e| ReconcileError::kube(format!("reading Secret {name}"), e);
        let mut current = match self.ctx.cached_secret(&self.namespace, &name) {
            Some(Some(_)) => self.ctx.read_secret_afresh(&self.namespace, &name).await.map_err(reading)?,
            Some(None) | None => None,
        };
        if let Some(current) = &current
            && let SecretOwnership::Foreign(message) = secret_ownership(current, self.certificate)
        {
            return self.fail(IssuanceError::SecretNotOwned(message)).await;
        }
        let outputs = match self.outputs(chain_pem, key, ca_crt.as_deref()).await {
            Ok(outputs) => outputs,
            Err(error) => return self.fail(error).await,
        };
        let usages = usages_annotation(&request.usages);
        let secret = build_certificate_secret(
            self.certificate,
            &self.certificate.spec.issuer_ref,
            chain_pem,
            key.pem(),
            ca_crt.as_deref(),
            &usages,
            outputs,
        );
        // A new Secret is created (a POST never overwrites: one that appeared since is looked at and is either
        // someone else's or ours from an earlier pass); an existing one of ours is replaced only while it is the
        // very Secret just read.
        let writing = |e| ReconcileError::kube(format!("writing Secret {name}"), e);
        if current.is_none()
            && self.ctx.create_secret(&self.namespace, &secret).await.map_err(writing)? == SecretCreation::AlreadyExists
        {
            current = self.ctx.read_secret_afresh(&self.namespace, &name).await.map_err(reading)?;
            match &current {
                // Deleted again since: the next pass creates it.
                None => return Err(ReconcileError::SecretVanished(name)),
                Some(existing) => {
                    if let SecretOwnership::Foreign(message) = secret_ownership(existing, self.certificate) {
                        return self.fail(IssuanceError::SecretNotOwned(message)).await;
                    }
                }
            }
        }
        if let Some(existing) = &current {
            self.ctx.replace_secret(&self.namespace, &secret, existing).await.map_err(writing)?;
        }
        let replaced = current
            .as_ref()
            .filter(|c| secret_ownership(c, self.certificate).may_read())
            .and_then(|c| parse_chain(&c.data.as_ref()?.get(crate::api::names::TLS_CRT)?.0).ok());
        self.revoke_replaced(issuer, account, replaced.as_ref(), &chain).await;
        self.delete_next_key().await?;
        self.ctx.forget_order(self.certificate);
        self.clean_up_leftover_solver_objects().await;
        // RFC 9773: ask for the new certificate's renewal window at once, so that the status write of this
        // pass carries it and the renewal time it sets (rather than two more writes in the passes after).
        let next_check = self.check_renewal_info(chain.leaf.renewal_id.as_deref()).await;
        let renewal_info = self.status.renewal_info.as_ref();
        let validity = Validity {
            not_before: chain.leaf.not_before,
            not_after: chain.leaf.not_after,
            renewal_time: renewal_schedule(&self.certificate.spec, renewal_info, &chain.leaf),
        };
        self.transition().issued(validity);
        tracing::info!(
            serial = %chain.leaf.serial,
            not_after = %chain.leaf.not_after,
            secret = %name,
            "issued; the certificate is stored in its Secret"
        );
        let message = format!(
            "Issued certificate serial {} valid until {} into Secret {name}",
            chain.leaf.serial, chain.leaf.not_after
        );
        self.publish(EventNote::normal(EventReason::Issued, message)).await;
        Ok(self.requeue_at_renewal(validity.renewal_time, next_check))
    }
}

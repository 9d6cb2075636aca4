//! The Secret's additional outputs (combined PEM, DER, PKCS#12 keystores): the keystore password, and
//! writing the Secret again when the spec asks for other outputs or secretTemplate, without a new certificate.

use super::failure::IssuanceError;
use super::{NEXT_STEP, Pass};
use crate::api::names::{ANNOTATION_USAGES, CA_CRT, TLS_CRT, TLS_KEY};
use crate::controller::ReconcileError;
use crate::desired::{
    EventNote, EventReason, additional_outputs, build_certificate_secret, keystore_password, keystore_password_key,
    pkcs12_wanted,
};
use crate::pki::{PrivateKey, parse_private_key};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::runtime::controller::Action;
use std::collections::BTreeMap;
use std::time::Duration;

/// How soon to try again to write a Secret whose keystore password cannot be read.
const REWRITE_RETRY: Duration = Duration::from_secs(60);

impl Pass<'_> {
    /// The keystore password, when the spec asks for a PKCS#12 keystore: read from its Secret in the
    /// Certificate's namespace at the apiserver (kacme does not watch such Secrets). The error names the
    /// Secret and key, never the value.
    pub(super) async fn keystore_password(&self) -> Result<Option<String>, IssuanceError> {
        let Some(keystore) = pkcs12_wanted(&self.certificate.spec) else { return Ok(None) };
        let name = &keystore.password_secret_ref.name;
        let key = keystore_password_key(keystore);
        let refuse = |why: &str| {
            Err(IssuanceError::KeystorePassword(format!(
                "the keystore password (keystores.pkcs12.passwordSecretRef: key {key:?} of Secret {name:?}) {why}"
            )))
        };
        let api: Api<Secret> = Api::namespaced(self.ctx.client.clone(), &self.namespace);
        let secret = match api.get_opt(name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => return refuse("cannot be read: the Secret does not exist"),
            Err(error) => return refuse(&format!("cannot be read: {error}")),
        };
        match keystore_password(secret.data.as_ref().and_then(|d| d.get(key)).map(|v| v.0.as_slice())) {
            Ok(password) => Ok(Some(password)),
            Err(why) => refuse(&why),
        }
    }

    /// The data of the additional outputs the spec asks for.
    pub(super) async fn outputs(
        &self,
        chain_pem: &str,
        key: &PrivateKey,
        ca_pem: Option<&str>,
    ) -> Result<BTreeMap<String, ByteString>, IssuanceError> {
        let password = self.keystore_password().await?;
        additional_outputs(&self.certificate.spec, chain_pem, key, ca_pem, password.as_deref())
            .map_err(IssuanceError::EncodeOutputs)
    }

    /// Writes `secret` (kacme's, with an up-to-date certificate) again from its own chain, key and CA with
    /// the outputs and secretTemplate the spec asks for now: no order, the certificate is unchanged. On a
    /// problem the certificate stays Ready and an Event says what is wrong; it is tried again later.
    /// `None` when the Secret was written (go on as usual).
    pub(super) async fn rewrite_secret(
        &mut self,
        secret: &Secret,
        why: &str,
    ) -> Result<Option<Action>, ReconcileError> {
        // The cache keeps only the leaf and the key of a Certificate's Secret: read all of it.
        let name = &self.certificate.spec.secret_name;
        let fresh = self
            .ctx
            .read_secret_afresh(&self.namespace, name)
            .await
            .map_err(|e| ReconcileError::kube(format!("reading Secret {name}"), e))?;
        let Some(secret) = fresh.as_deref().filter(|fresh| fresh.metadata.uid == secret.metadata.uid) else {
            // Gone or replaced since the cache saw it: the next pass decides again.
            return Ok(Some(Action::requeue(NEXT_STEP)));
        };
        let text =
            |key: &str| secret.data.as_ref().and_then(|d| d.get(key)).and_then(|v| String::from_utf8(v.0.clone()).ok());
        let (Some(chain_pem), Some(key_pem)) = (text(TLS_CRT), text(TLS_KEY)) else { return Ok(None) };
        let ca_pem = text(CA_CRT);
        let outputs = match parse_private_key(key_pem.as_bytes()) {
            Ok(key) => self.outputs(&chain_pem, &key, ca_pem.as_deref()).await,
            Err(error) => Err(IssuanceError::EncodeOutputs(error)),
        };
        let outputs = match outputs {
            Ok(outputs) => outputs,
            Err(error) => {
                let message = format!("the Secret was not updated ({why}): {error}");
                tracing::warn!(%message, "rewriting the Secret failed");
                self.publish(EventNote::warning(EventReason::SecretNotUpdated, message)).await;
                return Ok(Some(Action::requeue(REWRITE_RETRY)));
            }
        };
        let usages = secret.metadata.annotations.as_ref().and_then(|a| a.get(ANNOTATION_USAGES)).cloned();
        let rewritten = build_certificate_secret(
            self.certificate,
            &self.certificate.spec.issuer_ref,
            &chain_pem,
            &key_pem,
            ca_pem.as_deref(),
            usages.as_deref().unwrap_or_default(),
            outputs,
        );
        self.ctx
            .replace_secret(&self.namespace, &rewritten, secret)
            .await
            .map_err(|e| ReconcileError::kube(format!("writing Secret {name}"), e))?;
        tracing::info!(secret = %name, %why, "the Secret was written again with the outputs the spec asks for");
        let message = format!("Secret {name} written again without a new certificate: {why}");
        self.publish(EventNote::normal(EventReason::SecretUpdated, message)).await;
        // The next pass sees the written Secret (the cache or, until it catches up, the apiserver).
        Ok(Some(Action::requeue(NEXT_STEP)))
    }
}

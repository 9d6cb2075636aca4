//! The Issuer and ClusterIssuer reconcilers: register or load the ACME account, report it in status.

use super::accounts::{IssuerInfo, ensure_account};
use super::error::ReconcileError;
use super::{Context, apply_status};
use crate::api::{AcmeIssuerStatus, ClusterIssuer, ConditionType, Issuer, IssuerReason, IssuerStatus};
use crate::desired::set_condition;
use jiff::Timestamp;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use std::sync::Arc;
use std::time::Duration;

/// How often a Ready issuer's account is checked again.
const RECHECK_READY: Duration = Duration::from_secs(3600);

/// Reconciles an Issuer.
#[tracing::instrument(skip_all, fields(issuer = %format!("{}/{}", issuer.namespace().unwrap_or_default(), issuer.name_any())))]
pub async fn reconcile_issuer(issuer: Arc<Issuer>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let info = IssuerInfo::from_issuer(&issuer).ok_or(ReconcileError::MissingField("metadata.namespace"))?;
    let api: Api<Issuer> = Api::namespaced(ctx.client.clone(), &info.secret_namespace);
    let key = format!("{}/{}/{}", "Issuer", info.secret_namespace, info.name);
    let wishes = crate::controller::retry::wishes_of(&issuer.metadata);
    if let Some(wait) = ctx.retry_gate.remaining(&key, &wishes, std::time::Instant::now()) {
        return Ok(Action::requeue(wait));
    }
    let (status, action) = account_status(&ctx, &info, issuer.status.clone().unwrap_or_default(), (&key, wishes)).await;
    if Some(&status) != issuer.status.as_ref() {
        apply_status(&api, &issuer.name_any(), "Issuer", &status).await?;
    }
    Ok(action)
}

/// Reconciles a ClusterIssuer.
#[tracing::instrument(skip_all, fields(cluster_issuer = %issuer.name_any()))]
pub async fn reconcile_cluster_issuer(issuer: Arc<ClusterIssuer>, ctx: Arc<Context>) -> Result<Action, ReconcileError> {
    let info = IssuerInfo::from_cluster_issuer(&issuer, &ctx.config.cluster_resource_namespace)
        .ok_or(ReconcileError::MissingField("metadata.name"))?;
    let api: Api<ClusterIssuer> = Api::all(ctx.client.clone());
    let key = format!("{}/{}/{}", "ClusterIssuer", info.secret_namespace, info.name);
    let wishes = crate::controller::retry::wishes_of(&issuer.metadata);
    if let Some(wait) = ctx.retry_gate.remaining(&key, &wishes, std::time::Instant::now()) {
        return Ok(Action::requeue(wait));
    }
    let (status, action) = account_status(&ctx, &info, issuer.status.clone().unwrap_or_default(), (&key, wishes)).await;
    if Some(&status) != issuer.status.as_ref() {
        apply_status(&api, &issuer.name_any(), "ClusterIssuer", &status).await?;
    }
    Ok(action)
}

/// What the issuer's status says of its account and of what the CA's directory offers.
async fn account_status_of(account: &crate::acme::AcmeAccount, info: &IssuerInfo) -> AcmeIssuerStatus {
    // Unknown (absent) when the directory cannot be read now: Certificates then renew on kacme's schedule.
    let renewal_info = match account.offers_renewal_info().await {
        Ok(offered) => Some(offered),
        Err(error) => {
            tracing::info!(%error, "reading the CA's directory for renewalInfo failed");
            None
        }
    };
    let record = account.record();
    AcmeIssuerStatus {
        uri: Some(record.url),
        key_thumbprint: Some(record.key_thumbprint),
        server: Some(record.directory_url),
        last_registered_email: info.acme.email.clone(),
        renewal_info,
        profiles: account.profiles(),
    }
}

/// The issuer's status after ensuring its account; a failure holds the issuer (`held`: its gate key and
/// wishes) in the retry gate until its retry.
async fn account_status(
    ctx: &Context,
    info: &IssuerInfo,
    mut status: IssuerStatus,
    held: (&str, String),
) -> (IssuerStatus, Action) {
    let now = Timestamp::now();
    match ensure_account(ctx, info, &info.own_account()).await {
        Ok(account)
            if let Some(refused) = info.acme.profile.as_deref().and_then(|p| account.check_profile(p).err()) =>
        {
            let message = format!("{}: profile: {refused}", info.describe());
            let reason = IssuerReason::ProfileNotOffered.as_str();
            set_condition(&mut status.conditions, ConditionType::Ready, false, reason, &message, info.generation, now);
            status.acme = Some(account_status_of(&account, info).await);
            (status, Action::requeue(RECHECK_READY))
        }
        Ok(account) => {
            let message = format!("The ACME account is registered with {}", info.acme.server);
            set_condition(
                &mut status.conditions,
                ConditionType::Ready,
                true,
                IssuerReason::AcmeAccountRegistered.as_str(),
                &message,
                info.generation,
                now,
            );
            status.acme = Some(account_status_of(&account, info).await);
            (status, Action::requeue(RECHECK_READY))
        }
        Err(error) => {
            let reason = error.reason().as_str();
            tracing::warn!(reason, %error, "ACME account not ready");
            let message = format!("{}: {error}", info.describe());
            set_condition(&mut status.conditions, ConditionType::Ready, false, reason, &message, info.generation, now);
            let retry = error.retry_after();
            ctx.retry_gate.hold_until(held.0, held.1, std::time::Instant::now() + retry);
            (status, Action::requeue(retry))
        }
    }
}

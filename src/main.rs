//! The `kacme` binary: thin entry points over the library.
#![forbid(unsafe_code)]

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

/// kacme: workload certificates over ACME from a private CA, for Kubernetes.
#[derive(Parser, Debug)]
#[command(name = "kacme", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: reconcile Certificates, Issuers and ClusterIssuers in the cluster of the current
    /// kubeconfig (KUBECONFIG) or, inside a Pod, of its service account.
    Controller(ControllerArgs),
    /// Renew a Certificate now, whatever its renewal time (sets the kacme.dev/renew-requested-at annotation).
    Renew {
        /// Name of the Certificate.
        name: String,
        /// Namespace of the Certificate (default: the kubeconfig's namespace).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD with --dir).
    Crds {
        /// Write `<crd name>.yaml` files into this directory instead of printing to stdout.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Serve one HTTP-01 challenge (what solver Pods run).
    Solver {
        /// Address to listen on.
        #[arg(long, env = "KACME_SOLVER_LISTEN", default_value = "0.0.0.0:8089")]
        listen: SocketAddr,
        /// The identifier being validated (DNS name or IP address); requests for other hosts get 404.
        #[arg(long, env = "KACME_SOLVER_DOMAIN")]
        domain: String,
        /// The challenge token.
        #[arg(long, env = "KACME_SOLVER_TOKEN")]
        token: String,
        /// The key authorization to serve.
        #[arg(long, env = "KACME_SOLVER_KEY_AUTHORIZATION")]
        key_authorization: String,
        /// How long to let requests in flight finish after SIGTERM.
        #[arg(long, default_value = "5s", value_parser = parse_duration)]
        drain: Duration,
    },
}

#[derive(clap::Args, Debug)]
struct ControllerArgs {
    /// Namespace where ClusterIssuers keep their Secrets (ACME account keys, EAB keys).
    #[arg(long, env = "KACME_CLUSTER_RESOURCE_NAMESPACE", default_value = "kacme")]
    cluster_resource_namespace: String,
    /// Image of the HTTP-01 solver Pods: the operator's own image, which runs `kacme solver`.
    #[arg(long, env = "KACME_SOLVER_IMAGE", default_value = concat!("ghcr.io/kacme/kacme:", env!("CARGO_PKG_VERSION")))]
    solver_image: String,
    /// Certificates reconciled at once.
    #[arg(long, env = "KACME_CONCURRENCY", default_value_t = 16)]
    concurrency: u16,
    /// Wait after the first failed issuance; doubled per further failure.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    backoff_initial: Duration,
    /// Longest wait between failed issuances.
    #[arg(long, default_value = "1h", value_parser = parse_duration)]
    backoff_max: Duration,
    /// Spread renewals of certificates issued together over this long.
    #[arg(long, default_value = "60s", value_parser = parse_duration)]
    renewal_jitter: Duration,
    /// Before telling the CA, fetch each challenge over HTTP as the CA will (give up after this long);
    /// off unless set.
    #[arg(long, value_parser = parse_duration)]
    self_check_deadline: Option<Duration>,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    text.parse::<kube::core::Duration>().map(Duration::from).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    match cli.command {
        Command::Controller(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(run_controller(args))
        }
        Command::Renew { name, namespace } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(renew(name, namespace))
        }
        Command::Crds { dir: None } => {
            print!("{}", kacme::api::crds_yaml()?);
            Ok(())
        }
        Command::Crds { dir: Some(dir) } => write_crds(&dir),
        Command::Solver { listen, domain, token, key_authorization, drain } => {
            let challenge = kacme::solver::Challenge { domain, token, key_authorization };
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                let listener =
                    tokio::net::TcpListener::bind(listen).await.with_context(|| format!("listening on {listen}"))?;
                tracing::info!(address = %listener.local_addr()?, domain = %challenge.domain, "solver listening");
                kacme::solver::serve(listener, challenge, kacme::solver::termination_signal(), drain).await?;
                tracing::info!("solver stopped");
                Ok(())
            })
        }
    }
}

fn write_crds(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    for crd in kacme::api::crds() {
        let path = dir.join(kacme::api::crd_file_name(&crd));
        std::fs::write(&path, kacme::api::crd_yaml(&crd)?).with_context(|| format!("writing {}", path.display()))?;
        println!("wrote {}", path.display());
    }
    Ok(())
}

async fn run_controller(args: ControllerArgs) -> anyhow::Result<()> {
    let client =
        kube::Client::try_default().await.context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let mut config = kacme::controller::ControllerConfig::new(args.cluster_resource_namespace, args.solver_image);
    config.concurrency = args.concurrency.max(1);
    config.backoff = kacme::decision::BackoffPolicy { initial: args.backoff_initial, max: args.backoff_max };
    config.renewal_jitter = args.renewal_jitter;
    config.self_check =
        args.self_check_deadline.map(|deadline| kacme::acme::SelfCheck { deadline, ..Default::default() });
    let observer = std::sync::Arc::new(kacme::acme::RequestCounter::default());
    kacme::controller::run(client, config, observer, kacme::solver::termination_signal()).await?;
    Ok(())
}

async fn renew(name: String, namespace: Option<String>) -> anyhow::Result<()> {
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let api: kube::Api<kacme::api::Certificate> = kube::Api::namespaced(client, &namespace);
    let requested_at = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {kacme::api::names::ANNOTATION_RENEW_REQUESTED_AT: requested_at}}});
    api.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .with_context(|| format!("requesting renewal of Certificate {namespace}/{name}"))?;
    println!("Renewal of Certificate {namespace}/{name} requested at {requested_at}");
    Ok(())
}

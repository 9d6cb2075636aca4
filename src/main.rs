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
    /// Log format: `text` for people, `json` (one object per line, with the span fields such as the
    /// Certificate's namespace/name) for log collectors.
    #[arg(long, global = true, env = "KACME_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    /// What to log: a level (error, warn, info, debug, trace) or tracing directives such as
    /// `info,kacme=debug`. RUST_LOG, when set, wins.
    #[arg(long, global = true, default_value = "info")]
    log_level: String,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the operator: reconcile Certificates, Issuers and ClusterIssuers in the cluster of the current
    /// kubeconfig (KUBECONFIG) or, inside a Pod, of its service account.
    Controller(Box<ControllerArgs>),
    /// Renew a Certificate now, whatever its renewal time (sets the kacme.dev/renew-requested-at annotation).
    Renew {
        /// Name of the Certificate.
        name: String,
        /// Namespace of the Certificate (default: the kubeconfig's namespace).
        #[arg(short, long)]
        namespace: Option<String>,
    },
    /// Revoke the certificate a Certificate holds now; kacme then issues a new one with a new key (sets the
    /// kacme.dev/revoke-requested-at and kacme.dev/revocation-reason annotations; the operator revokes with the
    /// issuer's ACME account and reports in status.revocation and an Event).
    Revoke {
        /// Name of the Certificate.
        name: String,
        /// Namespace of the Certificate (default: the kubeconfig's namespace).
        #[arg(short, long)]
        namespace: Option<String>,
        /// The RFC 5280 reason: unspecified, keyCompromise, affiliationChanged, superseded or
        /// cessationOfOperation.
        #[arg(long, default_value = "unspecified", value_parser = parse_revocation_reason)]
        reason: kacme::acme::RevocationReason,
    },
    /// Show a Certificate's story on one screen: conditions, the current certificate in its Secret, the
    /// renewal time and why, the order in flight, recent Events and the solver objects that exist. Reads
    /// with your kubeconfig and rights; never prints a private key.
    Status {
        /// Name of the Certificate.
        name: String,
        #[command(flatten)]
        target: TargetArgs,
        /// `text` for people (coloured on a terminal unless NO_COLOR is set), `json` for scripts (the shape
        /// is documented in the README).
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
    },
    /// Convert cert-manager ACME Issuers, ClusterIssuers, Certificates and the ingress-shim and gateway-shim
    /// annotations of Ingresses and Gateways to kacme's, from files (-f) or from the cluster (--from-cluster); prints the kacme manifests
    /// on stdout, with what could not be converted, and why, as comments at the top (and on stderr).
    /// Nothing is applied: review, then `kubectl apply -f`.
    Import {
        /// Files or directories of YAML manifests (`-` for stdin); repeatable.
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// Read cert-manager's objects and annotated Ingresses and Gateways from the cluster (with your kubeconfig).
        #[arg(long)]
        from_cluster: bool,
        /// With --from-cluster: every namespace instead of one.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[command(flatten)]
        target: TargetArgs,
        /// Exit with status 1 when anything was skipped or dropped.
        #[arg(long)]
        strict: bool,
    },
    /// Decode objects the way cmctl does.
    Inspect {
        #[command(subcommand)]
        what: InspectCommand,
    },
    /// Print the CustomResourceDefinitions as YAML (or write one file per CRD with --dir).
    Crds {
        /// Write `<crd name>.yaml` files into these directories instead of printing to stdout
        /// (`--dir crds --dir charts/kacme/crds` regenerates both checked-in copies).
        #[arg(long)]
        dir: Vec<PathBuf>,
    },
    /// Keep this Pod's own certificate: generate the key here, send only a CSR to the operator, write
    /// tls.crt, tls.key and ca.crt atomically, renew at two thirds of the lifetime (the per-Pod sidecar).
    Agent(Box<AgentArgs>),
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

/// Which cluster and namespace a user command reads.
#[derive(clap::Args, Debug)]
struct TargetArgs {
    /// Namespace (default: the kubeconfig context's namespace).
    #[arg(short, long)]
    namespace: Option<String>,
    /// The kubeconfig file (default: the one kubectl uses: KUBECONFIG, else kubectl's default file).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context (default: its current context).
    #[arg(long)]
    context: Option<String>,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
enum OutputFormat {
    Text,
    Json,
}

#[derive(Subcommand, Debug)]
enum InspectCommand {
    /// Decode a kubernetes.io/tls Secret: each certificate of tls.crt (subject, names, issuer, validity,
    /// serial, key usages, fingerprint), whether tls.key matches the leaf (the key is never printed), the
    /// certificates of ca.crt, and whether the chain verifies to ca.crt.
    Secret {
        /// Name of the Secret.
        name: String,
        #[command(flatten)]
        target: TargetArgs,
        /// `text` or `json`.
        #[arg(short, long, value_enum, default_value_t = OutputFormat::Text)]
        output: OutputFormat,
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
    /// Of those, how many may work with one issuer at once (default: three quarters of --concurrency,
    /// rounded, at least 1), so that a slow CA cannot hold every worker. A Certificate that finds its
    /// issuer's slots taken waits in line without a worker and is reconciled as soon as one frees.
    #[arg(long, env = "KACME_ISSUER_CONCURRENCY")]
    issuer_concurrency: Option<u16>,
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
    /// With `--self-check-deadline`: dial this `IP:PORT` (the ingress controller's Service or load balancer)
    /// instead of resolving each name, for operators that cannot resolve the names they issue for (split-horizon
    /// DNS, names only the CA's resolver knows). The request still carries the name as its Host.
    #[arg(long, requires = "self_check_deadline")]
    self_check_address: Option<std::net::SocketAddr>,
    /// How long each authorization of an order may take, from the first presentation of its challenge, to
    /// become valid: its solver objects (Pod, Service, Ingress) serving the challenge, and the CA validating
    /// it (a CA that cannot reach the route yet is asked again on the same order, after 1 s, 2 s, 4 s ... up
    /// to 10 s). After this long the order is given up, naming the identifier, how long it waited and what
    /// the solver or the CA last said, and the attempt backs off. `--solver-deadline` is an alias.
    #[arg(long, alias = "solver-deadline", default_value = "5m", value_parser = parse_duration)]
    authorization_deadline: Duration,
    /// At CAs that offer ACME Renewal Information (RFC 9773), ask for each certificate's renewal window
    /// when the CA's Retry-After says, but at least this often (and at most once a minute). A CA that moves
    /// a window (after an incident, say) is noticed within this long.
    #[arg(long, default_value = "24h", value_parser = parse_duration)]
    renewal_info_max_interval: Duration,
    /// /healthz fails (and the kubelet restarts the operator) when a controller loop with reconciles in
    /// flight has finished none for this long. Keep it well above the longest reconcile (ACME requests
    /// time out after 30 s; a pass makes a few). An idle operator, or a standby, is always healthy.
    #[arg(long, env = "KACME_STALL_THRESHOLD", default_value = "10m", value_parser = parse_duration)]
    stall_threshold: Duration,
    /// Address of the HTTP endpoints: /metrics (Prometheus), /healthz and /readyz.
    #[arg(long, env = "KACME_METRICS_ADDRESS", default_value = "0.0.0.0:9402")]
    metrics_address: SocketAddr,
    /// Run only while holding the leader Lease, so that several replicas can run (one reconciles, the
    /// others wait to take over). `--leader-elect=false` for a single replica.
    #[arg(long, env = "KACME_LEADER_ELECT", default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    leader_elect: bool,
    /// Namespace of the leader Lease (default: the Pod's namespace, POD_NAMESPACE, else the cluster
    /// resource namespace).
    #[arg(long, env = "POD_NAMESPACE")]
    leader_election_namespace: Option<String>,
    /// How long the Lease lasts after its last renewal: a crashed leader is replaced within about this long.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_election_lease_duration: Duration,
    /// Create Certificates for Ingresses annotated kacme.dev/issuer or kacme.dev/cluster-issuer.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    ingress_certificates: bool,
    /// Create Certificates for Gateways (and XListenerSets) annotated kacme.dev/issuer or
    /// kacme.dev/cluster-issuer: one per Secret their HTTPS listeners name. Only where the Gateway API CRDs are
    /// installed when kacme starts.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    gateway_certificates: bool,
    /// Keep one Certificate per workload whose Pods the admission webhook marked (kacme.dev/workload), in the
    /// namespaces the webhook selects (only with --webhook-address).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    workload_certificates: bool,
    /// Serve the Pod admission webhook (HTTPS) on this address, for example 0.0.0.0:9443; off unless set.
    /// Every replica serves it, leader or not.
    #[arg(long, env = "KACME_WEBHOOK_ADDRESS")]
    webhook_address: Option<SocketAddr>,
    /// How the apiserver reaches the webhook: a URL such as https://10.0.0.5:9443/mutate-pods (path
    /// /mutate-pods)...
    #[arg(long, conflicts_with = "webhook_service")]
    webhook_url: Option<String>,
    /// ...or a Service in the webhook namespace (the default: `kacme-webhook`), on --webhook-service-port.
    #[arg(long, env = "KACME_WEBHOOK_SERVICE")]
    webhook_service: Option<String>,
    /// Port of the webhook Service.
    #[arg(long, default_value_t = 443)]
    webhook_service_port: i32,
    /// Namespace of the operator: holds the webhook's serving Secret and is never mutated (default: the
    /// cluster resource namespace).
    #[arg(long, env = "KACME_WEBHOOK_NAMESPACE")]
    webhook_namespace: Option<String>,
    /// Secret with the webhook's serving CA and certificate (created and rotated by kacme).
    #[arg(long, default_value = "kacme-webhook-tls")]
    webhook_secret: String,
    /// The MutatingWebhookConfiguration whose caBundle kacme keeps current.
    #[arg(long, default_value = "kacme")]
    webhook_configuration: String,
    /// Create and own the whole MutatingWebhookConfiguration (true), or only patch the caBundle of an
    /// existing one, for example installed by the Helm chart (false).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    webhook_manage_configuration: bool,
    /// failurePolicy of a managed configuration: Fail (Pods in selected namespaces wait for kacme) or Ignore.
    #[arg(long, default_value = "Fail", value_parser = ["Fail", "Ignore"])]
    webhook_failure_policy: String,
    /// Namespaces whose Pods go through the webhook (key=value, key!=value, key, !key; comma-separated;
    /// empty for all). kacme's own namespace and kube-system are always left out.
    #[arg(long, default_value = "kacme.dev/webhook=enabled")]
    webhook_namespace_selector: String,
    /// Publish the issuers' CA bundles as a ConfigMap in every namespace this label selector picks
    /// (kubectl syntax; empty string for every namespace); off unless set.
    #[arg(long)]
    ca_bundle_namespace_selector: Option<String>,
    /// Name of the CA bundle ConfigMaps.
    #[arg(long, default_value = "kacme-ca-bundle")]
    ca_bundle_config_map: String,
    /// Label and annotation keys that issuers' solver pod and ingress templates may set on the solver
    /// objects kacme creates with its own rights (comma-separated; `*` stands for any characters but `/`,
    /// so `*` allows unprefixed keys and `*/*` every key). An issuer using another key gets Ready=False,
    /// SolverTemplateNotAllowed.
    #[arg(long, env = "KACME_SOLVER_TEMPLATE_ALLOWED_KEYS", default_value = kacme::decision::solver_template::DEFAULT_ALLOWED_KEYS)]
    solver_template_allowed_keys: String,
    /// Words that refuse a solver template key even when an allowed pattern matches it (comma-separated,
    /// compared without case): ingress controllers' snippets, configuration and authentication hooks.
    /// An empty string refuses no word.
    #[arg(long, env = "KACME_SOLVER_TEMPLATE_REFUSED_WORDS", default_value = kacme::decision::solver_template::DEFAULT_REFUSED_WORDS)]
    solver_template_refused_words: String,
    /// ACME servers that namespaced Issuers may use (comma-separated): `https://` URL prefixes of the
    /// directory URL, hosts, or `*.zone` for a zone's hosts. Empty (the default): any server.
    /// ClusterIssuers are not restricted. A refused Issuer gets Ready=False, ServerNotAllowed.
    #[arg(long, env = "KACME_ISSUER_ALLOWED_SERVERS", default_value = "")]
    issuer_allowed_servers: String,
    /// Let namespaced Issuers set skipTLSVerify (ClusterIssuers always may). Off: such an Issuer gets
    /// Ready=False, SkipTLSVerifyNotAllowed.
    #[arg(long, env = "KACME_ISSUER_ALLOW_SKIP_TLS_VERIFY", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    issuer_allow_skip_tls_verify: bool,
    /// Per-Pod certificates (pod templates annotated kacme.dev/per-pod: "true"): the webhook adds the
    /// `kacme agent` sidecar and serves POST /pod-certificate to agents. Only with --webhook-address; needs
    /// the rights to create TokenReviews and read Pods.
    #[arg(long, env = "KACME_POD_CERTIFICATES", default_value_t = false, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
    pod_certificates: bool,
    /// The audience of the agents' projected ServiceAccount tokens.
    #[arg(long, default_value = kacme::pod_certificate::sidecar::DEFAULT_AUDIENCE)]
    pod_certificate_audience: String,
    /// The agents' image (default: --solver-image, the operator's own).
    #[arg(long)]
    agent_image: Option<String>,
    /// imagePullPolicy of the agents' container (default: the cluster's).
    #[arg(long)]
    agent_image_pull_policy: Option<String>,
}

/// `kacme agent`: what the per-Pod sidecar runs (the webhook sets its environment).
#[derive(clap::Args, Debug)]
struct AgentArgs {
    /// Only check that the files hold a certificate that has not expired (exit 0) or not (exit 1): the
    /// sidecar's startup and readiness probe.
    #[arg(long)]
    check: bool,
    /// Where to write tls.crt, tls.key and ca.crt.
    #[arg(long, env = "KACME_AGENT_DIR", default_value = "/var/run/kacme")]
    dir: PathBuf,
    /// The operator's endpoint, https://<host>:<port>/pod-certificate.
    #[arg(long, env = "KACME_AGENT_URL")]
    url: Option<String>,
    /// Connect here (ip:port) instead of resolving the URL's host.
    #[arg(long, env = "KACME_AGENT_CONNECT")]
    connect: Option<String>,
    /// The CA (PEM text) of the endpoint's serving certificate.
    #[arg(long, env = "KACME_AGENT_CA", hide_env_values = true)]
    ca: Option<String>,
    /// The projected ServiceAccount token (bound to this Pod, for kacme's audience).
    #[arg(long, env = "KACME_AGENT_TOKEN", default_value = "/var/run/secrets/kacme.dev/token")]
    token: PathBuf,
    /// ECDSA (default), RSA or Ed25519.
    #[arg(long, env = "KACME_AGENT_KEY_ALGORITHM", default_value = "ECDSA")]
    key_algorithm: String,
}

/// The agent's configuration from its arguments, or what is missing.
fn agent_config(args: AgentArgs) -> anyhow::Result<kacme::pod_certificate::agent::AgentConfig> {
    let missing = |what: &str| anyhow::anyhow!("kacme agent: {what} is not set (the webhook sets it)");
    let algorithm = kacme::api::validation::key_algorithm(&args.key_algorithm)
        .map_err(|e| anyhow::anyhow!("KACME_AGENT_KEY_ALGORITHM: {}", e.0))?;
    Ok(kacme::pod_certificate::agent::AgentConfig {
        url: args.url.ok_or_else(|| missing("KACME_AGENT_URL"))?,
        connect: args.connect.filter(|c| !c.is_empty()),
        ca_pem: args.ca.ok_or_else(|| missing("KACME_AGENT_CA"))?,
        token_path: args.token,
        dir: args.dir,
        algorithm,
    })
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    kacme::api::duration::parse_go_duration(text).map_err(|e| e.to_string())
}

/// Logs to stderr in `format`, filtered by RUST_LOG when set, else by `level`.
fn init_logging(format: LogFormat, level: &str) -> anyhow::Result<()> {
    let filter = match tracing_subscriber::EnvFilter::try_from_default_env() {
        Ok(filter) => filter,
        Err(_) => tracing_subscriber::EnvFilter::try_new(level).with_context(|| format!("--log-level {level:?}"))?,
    };
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = parse_cli();
    init_logging(cli.log_format, &cli.log_level)?;
    match cli.command {
        Command::Controller(args) => {
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(run_controller(*args))
        }
        Command::Renew { name, namespace } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(renew(name, namespace))
        }
        Command::Revoke { name, namespace, reason } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(revoke(name, namespace, reason))
        }
        Command::Status { name, target, output } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(status(name, target, output))
        }
        Command::Import { files, from_cluster, all_namespaces, target, strict } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(import(files, from_cluster, all_namespaces, target, strict))
        }
        Command::Inspect { what: InspectCommand::Secret { name, target, output } } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(inspect_secret(name, target, output))
        }
        Command::Crds { dir } if dir.is_empty() => {
            print!("{}", kacme::api::crds_yaml()?);
            Ok(())
        }
        Command::Crds { dir } => dir.iter().try_for_each(|dir| write_crds(dir)),
        Command::Agent(args) if args.check => {
            if kacme::pod_certificate::agent::files_are_current(&args.dir) {
                Ok(())
            } else {
                std::process::exit(1)
            }
        }
        Command::Agent(args) => {
            let config = agent_config(*args)?;
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(async {
                tracing::info!(url = %config.url, "agent started");
                kacme::pod_certificate::agent::run(config, kacme::solver::termination_signal()).await?;
                tracing::info!("agent stopped");
                Ok(())
            })
        }
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

/// The command line; run as `kubectl-kacme` (a symlink or copy on PATH), the binary is the kubectl plugin
/// and its help says `kubectl kacme`.
fn parse_cli() -> Cli {
    use clap::{CommandFactory as _, FromArgMatches as _};
    let as_plugin = std::env::args_os().next().is_some_and(|argv0| kacme::cli::invoked_as_kubectl_plugin(&argv0));
    if !as_plugin {
        return Cli::parse();
    }
    let command = Cli::command().name("kubectl kacme").bin_name("kubectl kacme");
    Cli::from_arg_matches(&command.get_matches()).unwrap_or_else(|e| e.exit())
}

/// A client for the user's kubeconfig, and the namespace to read (the flag, else the context's).
async fn user_client(target: &TargetArgs) -> anyhow::Result<(kube::Client, String)> {
    let connection =
        kacme::cli::read::Connection { kubeconfig: target.kubeconfig.clone(), context: target.context.clone() };
    let client = kacme::cli::read::connect(&connection).await?;
    let namespace = target.namespace.clone().unwrap_or_else(|| client.default_namespace().to_string());
    Ok((client, namespace))
}

async fn status(name: String, target: TargetArgs, output: OutputFormat) -> anyhow::Result<()> {
    let (client, namespace) = user_client(&target).await?;
    let input = kacme::cli::read::read_status_input(&client, &namespace, &name).await?;
    let now = jiff::Timestamp::now();
    let report = kacme::cli::status::status_report(&input, now);
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => {
            print!("{}", kacme::cli::status::render_status(&report, kacme::cli::Style::for_stdout(), now))
        }
    }
    Ok(())
}

async fn inspect_secret(name: String, target: TargetArgs, output: OutputFormat) -> anyhow::Result<()> {
    let (client, namespace) = user_client(&target).await?;
    let secret = kacme::cli::read::read_secret(&client, &namespace, &name).await?;
    let now = jiff::Timestamp::now();
    let report = kacme::cli::inspect::inspect_secret(&secret, now);
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => {
            print!("{}", kacme::cli::inspect::render_secret(&report, kacme::cli::Style::for_stdout(), now))
        }
    }
    Ok(())
}

async fn import(
    files: Vec<PathBuf>,
    from_cluster: bool,
    all_namespaces: bool,
    target: TargetArgs,
    strict: bool,
) -> anyhow::Result<()> {
    use kacme::cli::import::{Outcome, convert, parse_manifests, render_yaml};
    anyhow::ensure!(from_cluster || !files.is_empty(), "name files with -f, or read the cluster with --from-cluster");
    let mut manifests = Vec::new();
    for path in &files {
        for text in read_manifest_texts(path)? {
            manifests.extend(parse_manifests(&text).with_context(|| format!("reading {}", path.display()))?);
        }
    }
    if from_cluster {
        let (client, namespace) = user_client(&target).await?;
        let namespace = (!all_namespaces).then_some(namespace);
        manifests.extend(kacme::cli::read::read_cert_manager_objects(&client, namespace.as_deref()).await?);
    }
    let conversion = convert(&manifests);
    print!("{}", render_yaml(&conversion)?);
    for note in &conversion.notes {
        eprintln!("kacme import: {} {:?}: {}", note.object, note.outcome, note.message);
    }
    eprintln!("kacme import: {} objects written, {} notes", conversion.objects.len(), conversion.notes.len());
    let lossy = conversion.notes.iter().any(|n| n.outcome != Outcome::Changed);
    if strict && lossy {
        anyhow::bail!("--strict: some objects or fields were not converted (see above)");
    }
    Ok(())
}

/// The texts of a manifest file, of the .yaml/.yml/.json files of a directory (sorted), or of stdin (`-`).
fn read_manifest_texts(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    if path.as_os_str() == "-" {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text)?;
        return Ok(vec![text]);
    }
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)
            .with_context(|| format!("reading {}", path.display()))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml" || e == "json"))
            .collect();
        entries.sort();
        return entries
            .iter()
            .map(|p| std::fs::read_to_string(p).with_context(|| format!("reading {}", p.display())))
            .collect();
    }
    Ok(vec![std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?])
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
    use kacme::endpoints::{Role, Telemetry};
    use std::sync::Arc;
    // The operator's rules for issuers, read before anything connects: a typo stops the start.
    let solver_templates = kacme::decision::solver_template::SolverTemplateRules {
        allowed_keys: kacme::decision::solver_template::parse_key_patterns(&args.solver_template_allowed_keys)
            .map_err(|e| anyhow::anyhow!("--solver-template-allowed-keys: {e}"))?,
        refused_words: kacme::decision::solver_template::parse_key_patterns(&args.solver_template_refused_words)
            .map_err(|e| anyhow::anyhow!("--solver-template-refused-words: {e}"))?,
    };
    let namespaced_issuers = kacme::decision::issuer_restrictions::NamespacedIssuerRules {
        allowed_servers: kacme::decision::issuer_restrictions::parse_allowed_servers(&args.issuer_allowed_servers)
            .map_err(|e| anyhow::anyhow!("--issuer-allowed-servers: {e}"))?,
        allow_skip_tls_verify: args.issuer_allow_skip_tls_verify,
    };
    let kube_config =
        kube::Config::infer().await.context("connecting to the Kubernetes API (KUBECONFIG or in-cluster)")?;
    let client = kube::Client::try_from(kube_config.clone()).context("building the Kubernetes client")?;
    let lease_namespace =
        args.leader_election_namespace.clone().unwrap_or_else(|| args.cluster_resource_namespace.clone());
    let webhook = webhook_config(&args)?;
    let automation = kacme::controller::AutomationConfig {
        ingresses: args.ingress_certificates,
        gateways: args.gateway_certificates,
        // Only with the webhook: the workload controller acts in the namespaces it selects.
        workloads: webhook.as_ref().filter(|_| args.workload_certificates).map(|webhook| {
            kacme::controller::WorkloadConfig {
                namespace_selector: args.webhook_namespace_selector.clone(),
                excluded_namespaces: webhook.policy.excluded_namespaces.clone(),
            }
        }),
        ca_bundle: args.ca_bundle_namespace_selector.clone().map(|namespace_selector| {
            kacme::controller::CaBundleConfig { config_map_name: args.ca_bundle_config_map.clone(), namespace_selector }
        }),
    };
    let mut config = kacme::controller::ControllerConfig::new(args.cluster_resource_namespace, args.solver_image);
    config.concurrency = args.concurrency.max(1);
    config.per_issuer_concurrency = args.issuer_concurrency;
    config.backoff = kacme::decision::BackoffPolicy { initial: args.backoff_initial, max: args.backoff_max };
    config.renewal_jitter = args.renewal_jitter;
    config.renewal_info_max_interval = args.renewal_info_max_interval.max(Duration::from_secs(1));
    config.authorization_deadline = args.authorization_deadline;
    config.self_check = args.self_check_deadline.map(|deadline| kacme::acme::SelfCheck {
        deadline,
        connect_to: args.self_check_address,
        ..Default::default()
    });
    config.solver_templates = solver_templates;
    config.namespaced_issuers = namespaced_issuers;

    // One stop signal for everything: the endpoints, the wait for the Lease, and the reconcilers.
    let shutdown = kacme::shutdown::Shutdown::on(async {
        kacme::solver::termination_signal().await;
        tracing::info!("stopping (signal received)");
    });
    let stopped = || shutdown.stopped();

    let telemetry = Arc::new(Telemetry::new(args.stall_threshold));
    let listener = tokio::net::TcpListener::bind(args.metrics_address)
        .await
        .with_context(|| format!("listening on {} (--metrics-address)", args.metrics_address))?;
    tracing::info!(address = %listener.local_addr()?, "serving /metrics, /healthz and /readyz");
    let endpoints = tokio::spawn(kacme::endpoints::serve(listener, telemetry.clone(), stopped()));
    let observers = kacme::controller::Observers { acme: telemetry.clone(), reconcile: telemetry.clone() };
    let mut webhook = webhook;
    if let Some(webhook) = webhook.as_mut()
        && args.pod_certificates
    {
        let agent = kacme::pod_certificate::endpoint::AgentRun {
            image: args.agent_image.clone().unwrap_or_else(|| config.solver_image.clone()),
            image_pull_policy: args.agent_image_pull_policy.clone(),
            audience: args.pod_certificate_audience.clone(),
        };
        let observers = kacme::controller::Observers { acme: telemetry.clone(), reconcile: telemetry.clone() };
        let scope = kacme::pod_certificate::endpoint::NamespaceScope {
            selector: webhook.policy.namespace_selector.clone(),
            excluded: webhook.policy.excluded_namespaces.clone(),
        };
        webhook.pod_certificates = Some(Arc::new(kacme::pod_certificate::endpoint::PodCertificates::new(
            client.clone(),
            config.clone(),
            observers,
            agent,
            scope,
        )));
    }
    let webhook = match webhook {
        Some(config) => {
            let listener = kacme::webhook::bind(&config).await?;
            Some(tokio::spawn(kacme::webhook::run_on(listener, client.clone(), config, stopped())))
        }
        None => None,
    };

    if !args.leader_elect {
        telemetry.set_role(Role::Leading { caches_synced: false });
        run_reconcilers(client, config, observers, automation, stopped).await?;
        endpoints.abort();
        stop_webhook(webhook).await?;
        return Ok(());
    }
    let election = kacme::leader::LeaderElection::join(
        kube_config,
        kacme::leader::LeaderElectionConfig {
            namespace: lease_namespace,
            lease_name: kacme::leader::LEASE_NAME.into(),
            identity: kacme::leader::default_identity(),
            lease_duration: args.leader_election_lease_duration,
        },
    )
    .await?;
    telemetry.set_role(Role::Standby);
    tokio::select! {
        () = election.acquire() => {}
        () = stopped() => {
            endpoints.abort();
            return Ok(());
        }
    }
    telemetry.set_role(Role::Leading { caches_synced: false });
    tokio::select! {
        result = run_reconcilers(client, config, observers, automation, stopped) => {
            election.release().await;
            endpoints.abort();
            result?;
            stop_webhook(webhook).await

        }
        loss = election.lost() => {
            telemetry.set_role(Role::Starting);
            // Exiting is the simplest way never to reconcile without the Lease: the Pod restarts as a standby.
            tracing::error!(reason = %loss, "lost the leader Lease; exiting so that a restart rejoins as a standby");
            // Still the holder when renewals failed: hand the Lease over at once if the API lets us.
            election.release().await;
            anyhow::bail!("lost the leader Lease: {loss}")
        }
    }
}

/// The Certificate reconcilers and the automatic certificates (Ingresses, workloads, CA bundles), together.
async fn run_reconcilers<F, Fut>(
    client: kube::Client,
    config: kacme::controller::ControllerConfig,
    observers: kacme::controller::Observers,
    automation: kacme::controller::AutomationConfig,
    stopped: F,
) -> anyhow::Result<()>
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = ()> + Send + Sync + 'static,
{
    let (certificates, automatic) = tokio::join!(
        kacme::controller::run_observed(client.clone(), config, observers, stopped()),
        kacme::controller::run_automation(client, automation, stopped()),
    );
    certificates?;
    automatic?;
    Ok(())
}

/// Waits for the webhook (stopping with the same signal) and reports how it ended.
async fn stop_webhook(
    webhook: Option<tokio::task::JoinHandle<Result<(), kacme::webhook::WebhookError>>>,
) -> anyhow::Result<()> {
    if let Some(webhook) = webhook {
        webhook.await.context("the webhook task")??;
    }
    Ok(())
}

/// The webhook's configuration from the flags; `None` without --webhook-address.
fn webhook_config(args: &ControllerArgs) -> anyhow::Result<Option<kacme::webhook::WebhookConfig>> {
    use kacme::webhook::configuration::{WebhookEndpoint, WebhookPolicy, parse_label_selector};
    let Some(listen) = args.webhook_address else { return Ok(None) };
    let namespace = args.webhook_namespace.clone().unwrap_or_else(|| args.cluster_resource_namespace.clone());
    let endpoint = match &args.webhook_url {
        Some(url) => WebhookEndpoint::Url(url.clone()),
        None => WebhookEndpoint::Service {
            namespace: namespace.clone(),
            name: args.webhook_service.clone().unwrap_or_else(|| "kacme-webhook".into()),
            port: args.webhook_service_port,
        },
    };
    let namespace_selector = parse_label_selector(&args.webhook_namespace_selector)
        .map_err(|e| anyhow::anyhow!("--webhook-namespace-selector: {e}"))?;
    Ok(Some(kacme::webhook::WebhookConfig {
        listen,
        endpoint,
        namespace: namespace.clone(),
        secret_name: args.webhook_secret.clone(),
        configuration_name: args.webhook_configuration.clone(),
        manage_configuration: args.webhook_manage_configuration,
        policy: WebhookPolicy {
            failure_policy: args.webhook_failure_policy.clone(),
            excluded_namespaces: vec![namespace, "kube-system".into()],
            namespace_selector,
            timeout_seconds: 5,
        },
        serving: kacme::webhook::serving::ServingPolicy::default(),
        pod_certificates: None,
    }))
}

fn parse_revocation_reason(text: &str) -> Result<kacme::acme::RevocationReason, String> {
    kacme::acme::RevocationReason::parse(text)
}

async fn revoke(name: String, namespace: Option<String>, reason: kacme::acme::RevocationReason) -> anyhow::Result<()> {
    use kacme::api::names::{ANNOTATION_REVOCATION_REASON, ANNOTATION_REVOKE_REQUESTED_AT};
    let client = kube::Client::try_default().await.context("connecting to the Kubernetes API")?;
    let namespace = namespace.unwrap_or_else(|| client.default_namespace().to_string());
    let api: kube::Api<kacme::api::Certificate> = kube::Api::namespaced(client, &namespace);
    let requested_at = jiff::Timestamp::now().to_string();
    let patch = serde_json::json!({"metadata": {"annotations": {
        ANNOTATION_REVOKE_REQUESTED_AT: requested_at,
        ANNOTATION_REVOCATION_REASON: reason.as_str(),
    }}});
    api.patch(&name, &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
        .await
        .with_context(|| format!("requesting revocation of the certificate of Certificate {namespace}/{name}"))?;
    println!(
        "Revocation of the certificate of Certificate {namespace}/{name} (reason {reason}) requested at {requested_at}; \
         see its status.revocation and Events"
    );
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

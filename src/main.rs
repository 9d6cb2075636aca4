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

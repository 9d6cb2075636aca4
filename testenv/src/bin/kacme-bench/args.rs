//! The command line of kacme-bench.

use anyhow::{Context as _, Result, bail};
use std::path::PathBuf;
use std::time::Duration;

pub const USAGE: &str = "\
usage: kacme-bench [options]

Starts a local control plane, an ACME CA and `kacme controller` (a separate process), creates N
Certificates and reports apply->Ready latency, throughput, the operator's memory and CPU time, and the
ACME and apiserver requests it made per issuance. Everything runs on loopback addresses of this machine.
With --against cert-manager, the same with cert-manager's controller, CRDs, ClusterIssuer and Certificates.

scenarios:
  issue    N Certificates, measured from the first apply until all are Ready (default)
  memory   the issue run twice, on fresh environments: without and then with unrelated objects
           (--noise-secrets Secrets of --noise-secret-bytes each, --noise-pods Pods) created before
           the operator starts; compares the operator's memory
  idle     the issue run, then --idle-duration with nothing due: the operator's requests and CPU time
  storm    the issue run, then every Certificate's renewBefore set so that all renew at one moment T
           (Pebble only): time until all are renewed, ACME and apiserver requests per second from T,
           and the apply->Ready latency of a new Certificate applied --storm-new-after T

options:
  -n, --certificates N      Certificates to create (default 100)
  --namespaces K            spread them over K namespaces (default: min(N, 10))
  --ca pebble|step-ca       the ACME CA (default pebble; step-ca dials HTTP-01 on port 80: needs root)
  --node                    on a real node (root, tests/env/install node): solver Pods run in containers
                            and Traefik routes the CA's HTTP-01 requests; the CA listens on the node's
                            address; the operator stays a local process (kacme's image is only the
                            solver Pods')
  --scenario NAME           issue | memory | idle | storm (default issue)
  --rate R                  create R Certificates per second instead of all at once
  --concurrency C           the operator's --concurrency (default: the operator's own default)
  --idle-duration D         idle scenario: how long to watch (default 3m; 90s, 5m, ...)
  --storm-lead D            storm scenario: from the first renewBefore patch to T (default 30s plus
                            10ms per Certificate)
  --storm-new-after D       storm scenario: when the new Certificate is applied after T (default 20s)
  --noise-secrets N         memory scenario: unrelated Secrets (default 10000)
  --noise-secret-bytes B    memory scenario: size of each (default 2048)
  --noise-pods N            memory scenario: unrelated Pods (default 1000)
  --timeout D               give up when not all are Ready after this long (default 30m)
  --out DIR                 where the JSON report and the SVG plot (and a PNG, with rsvg-convert) go
                            (default bench-results)
  --kacme PATH              the kacme binary (default target/release/kacme)
  --crds DIR                the CRDs (default crds)
  --operator-arg ARG        one more argument for the operator (repeatable)
  --against cert-manager    measure cert-manager's controller instead of kacme (also: --operator
                            cert-manager; scenarios issue, memory and idle; not --node, not
                            --concurrency): tests/env/install cert-manager builds it; the solver
                            stand-in serves its solver Pods with `kacme solver` (--kacme)
  --cert-manager PATH       cert-manager's controller (default: cert-manager-controller in the bin dir
                            of tests/env/install)
  --cert-manager-crds DIR   its CRDs (default: cert-manager-crds in that bin dir)
  -h, --help                this text
";

/// Which measurement to make.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scenario {
    Issue,
    Memory,
    Idle,
    Storm,
}

impl Scenario {
    pub fn as_str(self) -> &'static str {
        match self {
            Scenario::Issue => "issue",
            Scenario::Memory => "memory",
            Scenario::Idle => "idle",
            Scenario::Storm => "storm",
        }
    }
}

/// Which operator issues the Certificates.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperatorKind {
    Kacme,
    CertManager,
}

impl OperatorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            OperatorKind::Kacme => "kacme",
            OperatorKind::CertManager => "cert-manager",
        }
    }
}

/// Which CA to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CaKind {
    Pebble,
    StepCa,
}

impl CaKind {
    pub fn as_str(self) -> &'static str {
        match self {
            CaKind::Pebble => "pebble",
            CaKind::StepCa => "step-ca",
        }
    }
}

#[derive(Clone, Debug)]
pub struct Args {
    pub certificates: usize,
    pub namespaces: usize,
    pub ca: CaKind,
    pub node: bool,
    pub scenario: Scenario,
    pub rate: Option<f64>,
    pub concurrency: Option<u16>,
    pub idle_duration: Duration,
    pub storm_lead: Option<Duration>,
    pub storm_new_after: Duration,
    pub noise_secrets: usize,
    pub noise_secret_bytes: usize,
    pub noise_pods: usize,
    pub timeout: Duration,
    pub out: PathBuf,
    pub kacme: PathBuf,
    pub crds: PathBuf,
    pub operator_args: Vec<String>,
    pub operator: OperatorKind,
    /// cert-manager's controller binary and CRDs (`None`: tests/env/install's bin dir).
    pub cert_manager: Option<PathBuf>,
    pub cert_manager_crds: Option<PathBuf>,
}

impl Args {
    /// The file name stem of this run's outputs: `issue-pebble-n100`, on a real node `issue-pebble-node-n100`,
    /// with cert-manager `issue-pebble-cert-manager-n100`.
    pub fn stem(&self) -> String {
        let node = if self.node { "-node" } else { "" };
        let operator = match self.operator {
            OperatorKind::Kacme => "",
            OperatorKind::CertManager => "-cert-manager",
        };
        format!("{}-{}{operator}{node}-n{}", self.scenario.as_str(), self.ca.as_str(), self.certificates)
    }
}

fn parse_duration(text: &str) -> Result<Duration> {
    let (number, unit) = text.split_at(text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len()));
    let value: f64 = number.parse().with_context(|| format!("{text:?} is not a duration (like 90s, 3m, 1h)"))?;
    let seconds = match unit {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => bail!("{text:?}: unknown unit {unit:?} (use ms, s, m or h)"),
    };
    Ok(Duration::from_secs_f64(seconds))
}

pub fn parse(mut raw: impl Iterator<Item = String>) -> Result<Option<Args>> {
    let mut args = Args {
        certificates: 100,
        namespaces: 0,
        ca: CaKind::Pebble,
        node: false,
        scenario: Scenario::Issue,
        rate: None,
        concurrency: None,
        idle_duration: Duration::from_secs(180),
        storm_lead: None,
        storm_new_after: Duration::from_secs(20),
        noise_secrets: 10_000,
        noise_secret_bytes: 2048,
        noise_pods: 1000,
        timeout: Duration::from_secs(1800),
        out: PathBuf::from("bench-results"),
        kacme: PathBuf::from("target/release/kacme"),
        crds: PathBuf::from("crds"),
        operator_args: Vec::new(),
        operator: OperatorKind::Kacme,
        cert_manager: None,
        cert_manager_crds: None,
    };
    while let Some(arg) = raw.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name.to_string(), Some(value.to_string())),
            _ => (arg.clone(), None),
        };
        let mut value = || inline.clone().or_else(|| raw.next()).with_context(|| format!("{name} needs a value"));
        match name.as_str() {
            "-n" | "--certificates" => args.certificates = value()?.parse().context("--certificates")?,
            "--namespaces" => args.namespaces = value()?.parse().context("--namespaces")?,
            "--ca" => {
                args.ca = match value()?.as_str() {
                    "pebble" => CaKind::Pebble,
                    "step-ca" => CaKind::StepCa,
                    other => bail!("--ca {other:?}: pebble or step-ca"),
                }
            }
            "--node" => args.node = true,
            "--scenario" => {
                args.scenario = match value()?.as_str() {
                    "issue" => Scenario::Issue,
                    "memory" => Scenario::Memory,
                    "idle" => Scenario::Idle,
                    "storm" => Scenario::Storm,
                    other => bail!("--scenario {other:?}: issue, memory, idle or storm"),
                }
            }
            "--rate" => args.rate = Some(value()?.parse().context("--rate")?).filter(|r: &f64| *r > 0.0),
            "--concurrency" => args.concurrency = Some(value()?.parse().context("--concurrency")?),
            "--idle-duration" => args.idle_duration = parse_duration(&value()?)?,
            "--storm-lead" => args.storm_lead = Some(parse_duration(&value()?)?),
            "--storm-new-after" => args.storm_new_after = parse_duration(&value()?)?,
            "--noise-secrets" => args.noise_secrets = value()?.parse().context("--noise-secrets")?,
            "--noise-secret-bytes" => args.noise_secret_bytes = value()?.parse().context("--noise-secret-bytes")?,
            "--noise-pods" => args.noise_pods = value()?.parse().context("--noise-pods")?,
            "--timeout" => args.timeout = parse_duration(&value()?)?,
            "--out" => args.out = value()?.into(),
            "--kacme" => args.kacme = value()?.into(),
            "--crds" => args.crds = value()?.into(),
            "--operator-arg" => args.operator_args.push(value()?),
            "--against" | "--operator" => {
                args.operator = match value()?.as_str() {
                    "kacme" => OperatorKind::Kacme,
                    "cert-manager" => OperatorKind::CertManager,
                    other => bail!("{name} {other:?}: kacme or cert-manager"),
                }
            }
            "--cert-manager" => args.cert_manager = Some(value()?.into()),
            "--cert-manager-crds" => args.cert_manager_crds = Some(value()?.into()),
            "-h" | "--help" => return Ok(None),
            other => bail!("unknown argument {other:?} (try --help)"),
        }
    }
    if args.certificates == 0 {
        bail!("--certificates must be at least 1");
    }
    if args.namespaces == 0 {
        args.namespaces = args.certificates.min(10);
    }
    args.namespaces = args.namespaces.min(args.certificates);
    if args.operator == OperatorKind::CertManager {
        if args.node {
            bail!(
                "--against cert-manager runs on the solver stand-in only (no cert-manager acmesolver image for --node)"
            );
        }
        if args.scenario == Scenario::Storm {
            bail!("--against cert-manager: the storm scenario moves kacme's renewBefore; use issue, memory or idle");
        }
        if args.concurrency.is_some() {
            bail!(
                "--concurrency is kacme's; for cert-manager pass its own flags, e.g. \
                 --operator-arg=--concurrent-workers=N or --operator-arg=--max-concurrent-challenges=N"
            );
        }
    }
    Ok(Some(args))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(line: &str) -> Args {
        parse(line.split_whitespace().map(String::from)).unwrap().unwrap()
    }

    #[test]
    fn defaults_and_options_are_read() {
        let args = parsed("");
        assert_eq!((args.certificates, args.namespaces, args.scenario), (100, 10, Scenario::Issue));
        let args = parsed("-n 1000 --namespaces=20 --ca step-ca --scenario idle --idle-duration 90s --rate 2.5");
        assert_eq!((args.certificates, args.namespaces, args.ca), (1000, 20, CaKind::StepCa));
        assert_eq!((args.idle_duration, args.rate), (Duration::from_secs(90), Some(2.5)));
        assert_eq!(parsed("-n 1").namespaces, 1);
        assert_eq!(parsed("-n 3 --namespaces 8").namespaces, 3);
        assert_eq!(parsed("--scenario memory -n 5").stem(), "memory-pebble-n5");
        assert_eq!(parsed("--node -n 20").stem(), "issue-pebble-node-n20");
        let against = parsed("--against cert-manager -n 100");
        assert_eq!(
            (against.operator, against.stem().as_str()),
            (OperatorKind::CertManager, "issue-pebble-cert-manager-n100")
        );
        assert_eq!(parsed("--operator=cert-manager").operator, OperatorKind::CertManager);
        assert!(parse("--against cert-manager --node".split_whitespace().map(String::from)).is_err());
        assert!(parse("--against cert-manager --scenario storm".split_whitespace().map(String::from)).is_err());
        assert!(parse("--against nginx".split_whitespace().map(String::from)).is_err());
        let storm = parsed("--scenario storm -n 10000 --namespaces 100 --storm-new-after 30s");
        assert_eq!((storm.stem().as_str(), storm.storm_new_after), ("storm-pebble-n10000", Duration::from_secs(30)));
    }

    #[test]
    fn durations_take_a_unit() {
        assert_eq!(parse_duration("3m").unwrap(), Duration::from_secs(180));
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("1.5h").unwrap(), Duration::from_secs(5400));
        assert_eq!(parse_duration("42").unwrap(), Duration::from_secs(42));
        assert!(parse_duration("3 days").is_err());
        assert!(parse(["--bogus".to_string()].into_iter()).is_err());
    }
}

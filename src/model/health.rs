//! Active health checks of a rule's address backends (issue 21): what the
//! rule asks (`BackendCheck`), what happens when every backend fails it
//! (`WhenAllUnhealthy`), and which backends fail it now (`RuleHealth::down`,
//! written by the agent's prober, src/health/). A backend that fails its
//! check leaves the rule's slots as a removed backend does (affinity and
//! stale sockets follow) and comes back after `rise` successes.

use std::{fmt, net::SocketAddr, time::Duration};

use serde::{Deserialize, Serialize};

use super::{FrontendRule, Protocol};

/// How a backend is probed.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Probe {
    /// A TCP connect that completes.
    Tcp,
    /// An HTTP/1.1 `GET path` answered with `status`.
    Http { path: String, status: u16 },
    /// A DNS query (type A, over UDP) for `name` answered with NOERROR or
    /// NXDOMAIN: a server that answers at all is up.
    Dns { name: String },
}

impl Probe {
    /// Its kind's name, as inputs spell it (`type`).
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Tcp => "tcp",
            Self::Http { .. } => "http",
            Self::Dns { .. } => "dns",
        }
    }
}

/// `tcp`, `http GET /healthz -> 200`, `dns example.org`.
impl fmt::Display for Probe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp => f.write_str("tcp"),
            Self::Http { path, status } => write!(f, "http GET {path} -> {status}"),
            Self::Dns { name } => write!(f, "dns {name}"),
        }
    }
}

/// A rule's health check: how and how often each backend is probed, and
/// how many results in a row change its state.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct BackendCheck {
    pub probe: Probe,
    /// The port probed; None: the backend's own.
    pub port: Option<u16>,
    pub interval_ms: u32,
    pub timeout_ms: u32,
    /// Successes in a row that bring a failed backend back.
    pub rise: u32,
    /// Failures in a row that take a healthy backend out.
    pub fall: u32,
}

impl BackendCheck {
    pub const DEFAULT_INTERVAL: Duration = Duration::from_secs(5);
    pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(2);
    pub const DEFAULT_RISE: u32 = 2;
    pub const DEFAULT_FALL: u32 = 3;
    /// Bounds of what inputs may ask: probing more often than every 100 ms
    /// is load, not health; a day is the longest sensible wait.
    pub const MIN_INTERVAL: Duration = Duration::from_millis(100);
    pub const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
    pub const MIN_TIMEOUT: Duration = Duration::from_millis(10);
    pub const MAX_COUNT: u32 = 100;

    /// A check of `probe` with the default timing.
    pub fn of(probe: Probe) -> Self {
        Self {
            probe,
            port: None,
            interval_ms: Self::DEFAULT_INTERVAL.as_millis() as u32,
            timeout_ms: Self::DEFAULT_TIMEOUT.as_millis() as u32,
            rise: Self::DEFAULT_RISE,
            fall: Self::DEFAULT_FALL,
        }
    }

    pub fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.into())
    }

    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms.into())
    }

    /// Where `backend` is probed.
    pub fn address_of(&self, backend: SocketAddr) -> SocketAddr {
        SocketAddr::new(backend.ip(), self.port.unwrap_or(backend.port()))
    }

    /// Whether the check can probe the backends of a rule of `protocol`:
    /// a UDP port answers no TCP connect or HTTP request, so those need
    /// `port` (a DNS query needs none).
    pub fn fits(&self, protocol: Protocol) -> Result<(), CheckError> {
        if protocol == Protocol::Udp && self.port.is_none() && !matches!(self.probe, Probe::Dns { .. }) {
            return Err(CheckError::new(
                "type",
                format!(
                    "a {} check of a UDP port needs `port` (a UDP port answers no TCP connect); \
                     give the port to probe, or use type dns",
                    self.probe.kind()
                ),
            ));
        }
        Ok(())
    }
}

/// A health check as an input spells it, field by field (a state file's
/// `health_check` table, a BalancingPolicy's `spec.healthCheck`, `policy
/// add --health-check...`): one reading and one set of rules for all.
#[derive(Clone, Debug, Default)]
pub struct CheckSpec<'a> {
    pub kind: &'a str,
    pub path: Option<&'a str>,
    pub expected_status: Option<u16>,
    pub query: Option<&'a str>,
    pub port: Option<u16>,
    pub interval: Option<&'a str>,
    pub timeout: Option<&'a str>,
    pub rise: Option<u32>,
    pub fall: Option<u32>,
    pub when_all_unhealthy: Option<&'a str>,
}

/// What is wrong with a `CheckSpec`: the field (by its state-file name,
/// `CheckSpec`'s: each input names it its own way) and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckError {
    pub field: &'static str,
    pub message: String,
}

impl CheckError {
    fn new(field: &'static str, message: impl Into<String>) -> Self {
        Self { field, message: message.into() }
    }
}

impl CheckSpec<'_> {
    /// The check and what its rule does when every backend fails it,
    /// every field checked; fields of another probe kind are refused.
    pub fn build(&self) -> Result<(BackendCheck, WhenAllUnhealthy), CheckError> {
        let unused = |field: &'static str, given: bool, kinds: &str| {
            if given {
                Err(CheckError::new(field, format!("only a {kinds} check has `{field}`")))
            } else {
                Ok(())
            }
        };
        let probe = match self.kind {
            "tcp" => Probe::Tcp,
            "http" => Probe::Http {
                path: self.path.unwrap_or("/").to_owned(),
                status: self.expected_status.unwrap_or(200),
            },
            "dns" => Probe::Dns {
                name: self
                    .query
                    .ok_or_else(|| {
                        CheckError::new("query", "a dns check needs `query`, the name to ask for")
                    })?
                    .to_owned(),
            },
            other => {
                return Err(CheckError::new(
                    "type",
                    format!(
                        "unknown check type `{}` (expected tcp, http or dns)",
                        crate::error::excerpt(other)
                    ),
                ));
            }
        };
        unused("path", self.path.is_some() && self.kind != "http", "http")?;
        unused("expected_status", self.expected_status.is_some() && self.kind != "http", "http")?;
        unused("query", self.query.is_some() && self.kind != "dns", "dns")?;
        let duration = |field: &'static str, text: Option<&str>, default: Duration| match text {
            None => Ok(default),
            Some(text) => humantime::parse_duration(text).map_err(|e| {
                CheckError::new(
                    field,
                    format!("`{}` is not a duration (as 2s or 500ms): {e}", crate::error::excerpt(text)),
                )
            }),
        };
        let interval = duration("interval", self.interval, BackendCheck::DEFAULT_INTERVAL)?;
        let timeout = duration("timeout", self.timeout, BackendCheck::DEFAULT_TIMEOUT.min(interval))?;
        let when_all_unhealthy = match self.when_all_unhealthy {
            None => WhenAllUnhealthy::default(),
            Some(name) => WhenAllUnhealthy::from_name(name).ok_or_else(|| {
                CheckError::new(
                    "when_all_unhealthy",
                    format!("`{}` is not fail-open or refuse", crate::error::excerpt(name)),
                )
            })?,
        };
        let millis = |field: &'static str, duration: Duration| {
            u32::try_from(duration.as_millis()).map_err(|_| CheckError::new(field, "is too long"))
        };
        let check = BackendCheck {
            probe,
            port: self.port,
            interval_ms: millis("interval", interval)?,
            timeout_ms: millis("timeout", timeout)?,
            rise: self.rise.unwrap_or(BackendCheck::DEFAULT_RISE),
            fall: self.fall.unwrap_or(BackendCheck::DEFAULT_FALL),
        };
        check.validate()?;
        Ok((check, when_all_unhealthy))
    }
}

impl BackendCheck {
    /// What the fields' types do not check.
    fn validate(&self) -> Result<(), CheckError> {
        let (interval, timeout) = (self.interval(), self.timeout());
        if !(Self::MIN_INTERVAL..=Self::MAX_INTERVAL).contains(&interval) {
            return Err(CheckError::new(
                "interval",
                format!(
                    "{} is out of range ({} to {})",
                    humantime::format_duration(interval),
                    humantime::format_duration(Self::MIN_INTERVAL),
                    humantime::format_duration(Self::MAX_INTERVAL),
                ),
            ));
        }
        if timeout < Self::MIN_TIMEOUT || timeout > interval {
            return Err(CheckError::new(
                "timeout",
                format!(
                    "{} is out of range ({} to the interval, {})",
                    humantime::format_duration(timeout),
                    humantime::format_duration(Self::MIN_TIMEOUT),
                    humantime::format_duration(interval),
                ),
            ));
        }
        for (field, count) in [("rise", self.rise), ("fall", self.fall)] {
            if !(1..=Self::MAX_COUNT).contains(&count) {
                return Err(CheckError::new(
                    field,
                    format!("{count} is out of range (1-{})", Self::MAX_COUNT),
                ));
            }
        }
        if self.port == Some(0) {
            return Err(CheckError::new("port", "port 0 is out of range (1-65535)"));
        }
        match &self.probe {
            Probe::Http { path, status } => {
                if !path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' ') {
                    return Err(CheckError::new(
                        "path",
                        format!(
                            "`{}` is not an absolute HTTP path (it starts with '/' and has no spaces)",
                            crate::error::excerpt(path)
                        ),
                    ));
                }
                if !(100..=599).contains(status) {
                    return Err(CheckError::new(
                        "expected_status",
                        format!("{status} is not an HTTP status (100-599)"),
                    ));
                }
            }
            Probe::Dns { name } => check_dns_name(name).map_err(|e| CheckError::new("query", e))?,
            Probe::Tcp => {}
        }
        Ok(())
    }
}

/// A DNS name a query can carry: labels of 1-63 letters, digits, '-' or
/// '_', at most 253 characters, an optional final dot.
fn check_dns_name(name: &str) -> Result<(), String> {
    let trimmed = name.strip_suffix('.').unwrap_or(name);
    let valid = !trimmed.is_empty()
        && trimmed.len() <= 253
        && trimmed.split('.').all(|label| {
            (1..=63).contains(&label.len())
                && label.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        });
    if valid { Ok(()) } else { Err(format!("`{}` is not a DNS name", crate::error::excerpt(name))) }
}

/// What a rule does while every one of its backends fails its check.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WhenAllUnhealthy {
    /// Keeps them all: a check that fails everywhere is more likely wrong
    /// (or the network) than every backend dead (Envoy's panic threshold,
    /// HAProxy's behaviour without a backup server).
    #[default]
    FailOpen,
    /// Has no backend: connections are refused at once.
    Refuse,
}

impl WhenAllUnhealthy {
    pub const NAMES: [&str; 2] = ["fail-open", "refuse"];

    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "fail-open" => Some(Self::FailOpen),
            "refuse" => Some(Self::Refuse),
            _ => None,
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Self::FailOpen => "fail-open",
            Self::Refuse => "refuse",
        }
    }
}

/// A rule's health check and its backends that fail it now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleHealth {
    pub check: BackendCheck,
    #[serde(default)]
    pub when_all_unhealthy: WhenAllUnhealthy,
    /// The rule's backends that failed the check `fall` times in a row and
    /// have not passed it `rise` times since, sorted. Written by the
    /// agent's prober; a new backend starts healthy. (Never skipped when
    /// empty: the state's encoding, postcard, is not self-describing.)
    #[serde(default)]
    pub down: Vec<SocketAddr>,
}

impl RuleHealth {
    pub fn new(check: BackendCheck, when_all_unhealthy: WhenAllUnhealthy) -> Self {
        Self { check, when_all_unhealthy, down: Vec::new() }
    }

    pub fn is_down(&self, backend: &SocketAddr) -> bool {
        self.down.binary_search(backend).is_ok()
    }
}

/// How a rule stands with its health check.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// No check, or some backend passes it.
    Serving,
    /// Every backend fails it; the rule keeps them all.
    FailingOpen,
    /// Every backend fails it; the rule refuses connections.
    Refusing,
}

impl FrontendRule {
    /// How the rule stands with its health check.
    pub fn standing(&self) -> Standing {
        match &self.health {
            Some(health) if !self.backends.is_empty() && self.backends.iter().all(|b| health.is_down(b)) => {
                match health.when_all_unhealthy {
                    WhenAllUnhealthy::FailOpen => Standing::FailingOpen,
                    WhenAllUnhealthy::Refuse => Standing::Refusing,
                }
            }
            _ => Standing::Serving,
        }
    }

    /// The backends that take connections, in order: all of them without
    /// a health check, else those that pass it; when none does, all of
    /// them (fail open) or none (refuse).
    pub fn serving(&self) -> impl Iterator<Item = &SocketAddr> + Clone + '_ {
        self.serving_at().map(|(_, backend)| backend)
    }

    /// `serving`, each with its index in `backends`.
    pub fn serving_at(&self) -> impl Iterator<Item = (usize, &SocketAddr)> + Clone + '_ {
        let health = self.health.as_deref().filter(|health| !health.down.is_empty());
        let standing = if health.is_some() { self.standing() } else { Standing::Serving };
        self.backends.iter().enumerate().filter(move |(_, backend)| match standing {
            Standing::Serving => health.is_none_or(|health| !health.is_down(backend)),
            Standing::FailingOpen => true,
            Standing::Refusing => false,
        })
    }

    /// The frontend's slots: each serving backend as many times as its
    /// weight (`weights`; 1 without), in order. A random slot then picks a
    /// backend in proportion to its weight.
    pub fn slots(&self) -> impl Iterator<Item = &SocketAddr> + Clone + '_ {
        self.serving_at().flat_map(move |(index, backend)| std::iter::repeat_n(backend, self.weight(index)))
    }

    /// The weight of `backends[index]`.
    pub fn weight(&self, index: usize) -> usize {
        self.weights.get(index).map_or(1, |&weight| usize::from(weight))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rule(when: WhenAllUnhealthy, down: &[&str]) -> FrontendRule {
        let mut rule =
            FrontendRule::plain("198.18.0.1:80", &["192.0.2.1:80", "192.0.2.2:80", "192.0.2.3:80"]);
        let mut health = RuleHealth::new(BackendCheck::of(Probe::Tcp), when);
        health.down = down.iter().map(|b| b.parse().unwrap()).collect();
        health.down.sort_unstable();
        rule.health = Some(Box::new(health));
        rule
    }

    fn serving(rule: &FrontendRule) -> Vec<String> {
        rule.serving().map(ToString::to_string).collect()
    }

    #[test]
    fn failed_backends_leave_and_all_failed_follow_the_rule_s_choice() {
        let some = rule(WhenAllUnhealthy::Refuse, &["192.0.2.2:80"]);
        assert_eq!(serving(&some), ["192.0.2.1:80", "192.0.2.3:80"]);
        assert_eq!(some.standing(), Standing::Serving);
        let all = ["192.0.2.1:80", "192.0.2.2:80", "192.0.2.3:80"];
        let open = rule(WhenAllUnhealthy::FailOpen, &all);
        assert_eq!((serving(&open).len(), open.standing()), (3, Standing::FailingOpen));
        let refusing = rule(WhenAllUnhealthy::Refuse, &all);
        assert_eq!((serving(&refusing).len(), refusing.standing()), (0, Standing::Refusing));
        assert_eq!(serving(&rule(WhenAllUnhealthy::Refuse, &[])).len(), 3);
    }

    #[test]
    fn checks_are_read_with_the_field_at_fault() {
        let build = |spec: CheckSpec| spec.build().map_err(|e| e.field);
        let http = CheckSpec { kind: "http", path: Some("/healthz"), ..CheckSpec::default() };
        let (check, when) = build(http.clone()).unwrap();
        assert_eq!(check.probe, Probe::Http { path: "/healthz".into(), status: 200 });
        assert_eq!((check.interval_ms, check.timeout_ms, check.rise, check.fall), (5_000, 2_000, 2, 3));
        assert_eq!(when, WhenAllUnhealthy::FailOpen);
        let timed = CheckSpec { interval: Some("1s"), timeout: Some("250ms"), ..http.clone() };
        assert_eq!(build(timed).unwrap().0.timeout_ms, 250);
        // A short interval without a timeout: the timeout is the interval.
        let short = CheckSpec { interval: Some("500ms"), ..http.clone() };
        assert_eq!(build(short).unwrap().0.timeout_ms, 500);
        let wrong = [
            (CheckSpec { kind: "icmp", ..CheckSpec::default() }, "type"),
            (CheckSpec { interval: Some("50ms"), ..http.clone() }, "interval"),
            (CheckSpec { interval: Some("often"), ..http.clone() }, "interval"),
            (CheckSpec { timeout: Some("6s"), ..http.clone() }, "timeout"),
            (CheckSpec { rise: Some(0), ..http.clone() }, "rise"),
            (CheckSpec { fall: Some(101), ..http.clone() }, "fall"),
            (CheckSpec { port: Some(0), ..http.clone() }, "port"),
            (CheckSpec { path: Some("healthz"), ..http.clone() }, "path"),
            (CheckSpec { expected_status: Some(99), ..http.clone() }, "expected_status"),
            (CheckSpec { when_all_unhealthy: Some("panic"), ..http.clone() }, "when_all_unhealthy"),
            (CheckSpec { kind: "tcp", path: Some("/"), ..CheckSpec::default() }, "path"),
            (CheckSpec { kind: "dns", ..CheckSpec::default() }, "query"),
            (CheckSpec { kind: "dns", query: Some("bad..name"), ..CheckSpec::default() }, "query"),
        ];
        for (spec, field) in wrong {
            assert_eq!(build(spec.clone()), Err(field), "{spec:?}");
        }
        let tcp = build(CheckSpec { kind: "tcp", ..CheckSpec::default() }).unwrap().0;
        assert_eq!(tcp.fits(Protocol::Udp).unwrap_err().field, "type");
        assert!(BackendCheck { port: Some(8080), ..tcp.clone() }.fits(Protocol::Udp).is_ok());
        assert!(tcp.fits(Protocol::Tcp).is_ok());
        let dns = build(CheckSpec { kind: "dns", query: Some("example.org"), ..CheckSpec::default() });
        assert!(dns.unwrap().0.fits(Protocol::Udp).is_ok());
    }
}

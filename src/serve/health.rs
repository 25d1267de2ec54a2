//! `/healthz`, `/livez` and `/readyz`: the agent's state (src/agent.rs) as
//! JSON, with 200 when the probe's condition holds and 503 when it does not.
//! The body is the same on both, and for all three: kube-proxy's
//! `lastUpdated` and `currentTime`, and why it is not healthy.

use http_body_util::Full;
use hyper::{Response, StatusCode, body::Bytes};

use crate::agent::Agent;

pub const PATHS: [&str; 3] = ["/healthz", "/livez", "/readyz"];

#[derive(Clone, Copy)]
pub enum Probe {
    /// The applied state is current.
    Healthz,
    /// The watch loop is not wedged in a sync.
    Livez,
    /// The first complete sync is applied.
    Readyz,
}

impl Probe {
    pub fn of(path: &str) -> Option<Self> {
        match path {
            "/healthz" => Some(Self::Healthz),
            "/livez" => Some(Self::Livez),
            "/readyz" => Some(Self::Readyz),
            _ => None,
        }
    }
}

pub fn answer(agent: &Agent, probe: Probe) -> Response<Full<Bytes>> {
    let health = agent.health();
    let holds = match probe {
        Probe::Healthz => health.healthy,
        Probe::Livez => health.live,
        Probe::Readyz => health.ready,
    };
    let status = if holds { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    let mut body = serde_json::to_string(&health).expect("the health report serialises");
    body.push('\n');
    super::response(status, "application/json", body)
}

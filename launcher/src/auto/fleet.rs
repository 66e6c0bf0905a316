//! One automatic upgrade at a time across a fleet (`[update] fleet_lock`):
//! Zincati's FleetLock protocol, spoken to a lock server (airlock,
//! fleetlock, or any server that follows it).
//!
//! - `POST <base>/v1/pre-reboot` asks for a slot of the group; `200` gives
//!   it (again, to a node that holds it already), anything else refuses,
//!   with a `{"kind", "value"}` body.
//! - `POST <base>/v1/steady-state` gives the slot back.
//!
//! Both carry the header `fleet-lock-protocol: true` and the body
//! `{"client_params": {"id", "group"}}`; the id is this installation's.
//!
//! The slot is taken before an automatic upgrade starts and recorded in
//! `auto-upgrade.json` beside the attempt, so whichever launcher sees the
//! end (after a handover, the new one; after a kill, the next start) knows
//! what it owes the fleet ([`duty`]): give the slot back once the new
//! release has served for `fleet_settle`, or keep it when the upgrade
//! rolled back — then the fleet stops at this node until an operator
//! releases it (`waiaas-launcher upgrade --fleet-release`).

use std::time::Duration;

use semver::Version;
use serde::{Deserialize, Serialize};

pub use super::state::FleetSlot;
use super::state::{AttemptOutcome, AutoState};

/// Longest wait for the lock server's answer.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// The first pause after a refusal; it doubles up to [`retry_cap`].
const FIRST_RETRY: Duration = Duration::from_secs(5);

/// What the holder of a slot owes the fleet now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Duty {
    /// No slot held.
    Nothing,
    /// The upgrade it was taken for runs (or is about to).
    Upgrading(Version),
    /// Committed: give it back once `version` has served for the settle time.
    Settle(Version),
    /// The upgrade did not hold: keep the slot, so the fleet stops here.
    Hold { version: Version, why: String },
    /// Taken, but nothing changed: give it back now.
    Release,
}

/// What `state` says is owed, with `current` the release installed now.
pub fn duty(state: &AutoState, current: &Version) -> Duty {
    let Some(slot) = &state.fleet else {
        return Duty::Nothing;
    };
    let Some(attempt) = state.attempt.as_ref().filter(|a| a.to == slot.version) else {
        // Taken for an upgrade that never started (it was deferred, or the
        // launcher ended in between).
        return Duty::Release;
    };
    let version = slot.version.clone();
    match attempt.outcome {
        None => Duty::Upgrading(version),
        Some(AttemptOutcome::Failed) => Duty::Release,
        Some(AttemptOutcome::Upgraded) if *current == version => Duty::Settle(version),
        Some(AttemptOutcome::Upgraded) => Duty::Hold {
            why: format!("{version} was committed, but {current} runs now (rolled back by hand?)"),
            version,
        },
        Some(outcome) => Duty::Hold {
            why: format!(
                "the automatic upgrade to {version} ended {outcome}: {}",
                attempt.message.as_deref().unwrap_or("no message")
            ),
            version,
        },
    }
}

/// The pause before asking again after the `failures`-th refusal in a row:
/// doubling from 5 s, never longer than the check interval or 5 minutes.
pub fn retry_after(failures: u32, check_interval: Duration) -> Duration {
    let cap = retry_cap(check_interval);
    FIRST_RETRY
        .checked_mul(1 << failures.saturating_sub(1).min(16))
        .unwrap_or(cap)
        .min(cap)
}

fn retry_cap(check_interval: Duration) -> Duration {
    check_interval.min(Duration::from_secs(300))
}

/// Why the lock server did not do what was asked.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LockError {
    /// A FleetLock refusal: no slot free, or the server's own reason.
    #[error("the fleet lock refused: {kind}: {value}")]
    Refused { kind: String, value: String },
    #[error("the fleet lock cannot be reached: {0}")]
    Unreachable(String),
    #[error("the fleet lock answered HTTP {status}, not as FleetLock does: {body}")]
    BadAnswer { status: u16, body: String },
}

/// A FleetLock client for one server, group and node id.
#[derive(Debug, Clone)]
pub struct FleetLock {
    base: String,
    group: String,
    id: String,
}

#[derive(Serialize)]
struct Request<'a> {
    client_params: ClientParams<'a>,
}

#[derive(Serialize)]
struct ClientParams<'a> {
    id: &'a str,
    group: &'a str,
}

#[derive(Deserialize)]
struct Refusal {
    kind: String,
    value: String,
}

impl FleetLock {
    pub fn new(base: &str, group: &str, id: &str) -> Self {
        Self {
            base: base.trim_end_matches('/').to_string(),
            group: group.to_string(),
            id: id.to_string(),
        }
    }

    /// The lock configured in `update`, if any.
    pub fn configured(update: &waiaas_shared::config::UpdateConfig, id: &str) -> Option<Self> {
        let base = update.fleet_lock.as_deref()?;
        Some(Self::new(base, &update.fleet_group, id))
    }

    /// The base URL, without credentials (for logs and `status`).
    pub fn shown(&self) -> String {
        waiaas_shared::registry::redact(&self.base)
    }

    pub fn group(&self) -> &str {
        &self.group
    }

    /// The record of a slot taken now for `version`.
    pub fn slot(&self, version: Version, taken_at: String) -> FleetSlot {
        FleetSlot {
            url: self.base.clone(),
            group: self.group.clone(),
            version,
            taken_at,
        }
    }

    /// Asks for a slot (`/v1/pre-reboot`).
    pub async fn take(&self) -> Result<(), LockError> {
        self.call("pre-reboot").await
    }

    /// Gives the slot back (`/v1/steady-state`).
    pub async fn give_back(&self) -> Result<(), LockError> {
        self.call("steady-state").await
    }

    async fn call(&self, what: &str) -> Result<(), LockError> {
        let describe = |e: &reqwest::Error| waiaas_shared::registry::describe(e);
        let client = waiaas_shared::registry::client_builder()
            .timeout(REQUEST_TIMEOUT)
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(format!("waiaas/{}", waiaas_shared::version::VERSION))
            .build()
            .map_err(|e| LockError::Unreachable(describe(&e)))?;
        let response = client
            .post(format!("{}/v1/{what}", self.base))
            .header("fleet-lock-protocol", "true")
            .json(&Request {
                client_params: ClientParams {
                    id: &self.id,
                    group: &self.group,
                },
            })
            .send()
            .await
            .map_err(|e| LockError::Unreachable(describe(&e)))?;
        let status = response.status();
        if status == reqwest::StatusCode::OK {
            return Ok(());
        }
        let body = response
            .text()
            .await
            .map_err(|e| LockError::Unreachable(describe(&e)))?;
        match serde_json::from_str::<Refusal>(&body) {
            Ok(r) => Err(LockError::Refused {
                kind: r.kind,
                value: r.value,
            }),
            Err(_) => Err(LockError::BadAnswer {
                status: status.as_u16(),
                body: body.chars().take(200).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn v(text: &str) -> Version {
        Version::parse(text).unwrap()
    }

    fn holding(version: &str, outcome: Option<AttemptOutcome>, to: &str) -> AutoState {
        let mut state = AutoState::default();
        let now = Timestamp::UNIX_EPOCH;
        state.begin(v("1.0.0"), v(to), now);
        if let Some(outcome) = outcome {
            state.end(outcome, "why".into(), now);
        }
        state.fleet =
            Some(FleetLock::new("http://l/", "g", "id").slot(v(version), now.to_string()));
        state
    }

    #[test]
    fn what_a_slot_holder_owes_follows_the_attempt() {
        let current = v("1.0.0");
        assert_eq!(duty(&AutoState::default(), &current), Duty::Nothing);
        assert_eq!(
            duty(&holding("1.1.0", None, "1.1.0"), &current),
            Duty::Upgrading(v("1.1.0"))
        );
        // Taken for another release than the attempt's: nothing started.
        assert_eq!(
            duty(&holding("1.2.0", None, "1.1.0"), &current),
            Duty::Release
        );
        assert_eq!(
            duty(
                &holding("1.1.0", Some(AttemptOutcome::Failed), "1.1.0"),
                &current
            ),
            Duty::Release
        );
        assert_eq!(
            duty(
                &holding("1.1.0", Some(AttemptOutcome::Upgraded), "1.1.0"),
                &v("1.1.0")
            ),
            Duty::Settle(v("1.1.0"))
        );
        for bad in [
            AttemptOutcome::RolledBack,
            AttemptOutcome::RollbackFailed,
            AttemptOutcome::Interrupted,
        ] {
            let duty = duty(&holding("1.1.0", Some(bad), "1.1.0"), &current);
            assert!(
                matches!(&duty, Duty::Hold { version, why } if *version == v("1.1.0") && why.contains(&bad.to_string())),
                "{bad}: {duty:?}"
            );
        }
        // Committed, then rolled back by hand: the fleet stops here too.
        assert!(matches!(
            duty(
                &holding("1.1.0", Some(AttemptOutcome::Upgraded), "1.1.0"),
                &current
            ),
            Duty::Hold { .. }
        ));
    }

    #[test]
    fn the_configured_lock_is_shown_without_its_credentials() {
        let mut update = waiaas_shared::config::Config::default().update;
        assert!(
            FleetLock::configured(&update, "id").is_none(),
            "no lock by default"
        );
        update.fleet_lock = Some("https://ops:s3cret@lock.internal:4443/fleet".into());
        update.fleet_group = "tenants".into();
        let lock = FleetLock::configured(&update, "id").expect("configured");
        assert_eq!(lock.group(), "tenants");
        assert_eq!(lock.shown(), "https://lock.internal:4443");
        let slot = lock.slot(v("1.2.3"), "t".into());
        assert_eq!(slot.url, "https://ops:s3cret@lock.internal:4443/fleet");
        assert_eq!(slot.group, "tenants");
    }

    #[test]
    fn a_refused_node_asks_again_doubling_within_the_check_interval() {
        let pauses: Vec<u64> = (1..=9)
            .map(|n| retry_after(n, Duration::from_secs(6 * 3600)).as_secs())
            .collect();
        assert_eq!(pauses, [5, 10, 20, 40, 80, 160, 300, 300, 300]);
        assert_eq!(retry_after(4, Duration::from_secs(5)), FIRST_RETRY);
        assert_eq!(retry_after(u32::MAX, Duration::from_secs(60)).as_secs(), 60);
    }

    /// A server on 127.0.0.1 that answers each request with `answer` and
    /// hands back what it was sent.
    fn server(answer: &'static str) -> (String, std::sync::mpsc::Receiver<String>) {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/", listener.local_addr().unwrap());
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let (mut stream, _) = listener.accept().unwrap();
            stream
                .set_read_timeout(Some(Duration::from_millis(500)))
                .unwrap();
            let mut request = Vec::new();
            let mut buf = [0; 4096];
            // Until the body has come (the client sends it at once).
            while let Ok(n) = stream.read(&mut buf) {
                request.extend_from_slice(&buf[..n]);
                if n == 0 || String::from_utf8_lossy(&request).ends_with('}') {
                    break;
                }
            }
            let _ = tx.send(String::from_utf8_lossy(&request).into_owned());
            let _ = stream.write_all(answer.as_bytes());
        });
        (url, rx)
    }

    fn block_on<T>(future: impl std::future::Future<Output = T>) -> T {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(future)
    }

    #[test]
    fn the_client_speaks_fleetlock_and_tells_a_refusal_from_a_stranger() {
        let (url, sent) = server("HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n");
        let lock = FleetLock::new(&url, "tenants", "0123abcd");
        block_on(lock.take()).unwrap();
        let request = sent
            .recv_timeout(Duration::from_secs(10))
            .expect("the request reached the server");
        assert!(request.starts_with("POST /v1/pre-reboot "), "{request}");
        assert!(request.contains("fleet-lock-protocol: true"), "{request}");
        assert!(
            request.ends_with(r#"{"client_params":{"id":"0123abcd","group":"tenants"}}"#),
            "{request}"
        );

        let refusal = "HTTP/1.1 409 Conflict\r\nContent-Length: 44\r\n\r\n\
                       {\"kind\":\"failed_lock\",\"value\":\"all 1 taken\"}";
        let (url, sent) = server(refusal);
        let err = block_on(FleetLock::new(&url, "g", "id").give_back()).unwrap_err();
        assert!(
            sent.recv_timeout(Duration::from_secs(10))
                .expect("the request reached the server")
                .starts_with("POST /v1/steady-state ")
        );
        assert_eq!(
            err,
            LockError::Refused {
                kind: "failed_lock".into(),
                value: "all 1 taken".into()
            }
        );

        let (url, _) = server("HTTP/1.1 502 Bad Gateway\r\nContent-Length: 9\r\n\r\n<html>oh!");
        let err = block_on(FleetLock::new(&url, "g", "id").take()).unwrap_err();
        assert_eq!(
            err,
            LockError::BadAnswer {
                status: 502,
                body: "<html>oh!".into()
            }
        );

        // Nothing listens there any more.
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let err = block_on(FleetLock::new(&format!("http://127.0.0.1:{port}"), "g", "id").take())
            .unwrap_err();
        assert!(matches!(err, LockError::Unreachable(_)), "{err}");
    }
}

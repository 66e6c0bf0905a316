//! A word to the operator: each automatic upgrade, rollback or quarantine is
//! one JSON event POSTed to `[update] notify_url`.
//!
//! Events wait in an outbox file in the data dir until the receiver answers
//! 2xx, so one survives a restart and the exec of a handover (a rollback is
//! reported by the launcher that rolled back, which then becomes the old
//! release's launcher at once). Delivery is retried with a bounded backoff
//! and gives up after [`ATTEMPTS`] tries, with a log line; it never blocks the
//! supervisor, which polls it beside everything else.

use std::io;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use waiaas_shared::fsutil::write_atomic;
use waiaas_shared::layout::DataDir;

/// Tries per event, and the pause before the second (doubled after each).
pub const ATTEMPTS: u32 = 5;
pub const FIRST_PAUSE: Duration = Duration::from_secs(1);
/// One POST, connection to answer.
const POST_TIMEOUT: Duration = Duration::from_secs(5);

/// What happened, in the event's `event` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// An automatic upgrade was committed.
    Upgraded,
    /// An automatic upgrade failed and the installation is back where it
    /// was; the version is quarantined.
    RolledBack,
    /// An automatic upgrade failed and so did its rollback: manual steps.
    RollbackFailed,
    /// An automatic upgrade was interrupted (the launcher died) and the
    /// next start rolled it back; the version is quarantined.
    Interrupted,
}

/// One event, as POSTed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Unique per installation: a receiver can drop a repeat.
    pub id: String,
    pub event: Kind,
    pub from: String,
    pub to: String,
    pub message: String,
    /// Whether `to` is now quarantined (never tried again by itself).
    pub quarantined: bool,
    /// RFC 3339, UTC.
    pub at: String,
    pub install_id: String,
}

/// Events not yet delivered, oldest first, with the tries each has had.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outbox {
    pub pending: Vec<Pending>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pending {
    pub event: Event,
    pub tries: u32,
}

fn path(dir: &DataDir) -> PathBuf {
    dir.root().join("notify-outbox.json")
}

impl Outbox {
    /// The outbox on disk; an unreadable one is logged and treated as empty
    /// (a notice lost is better than a supervisor that cannot start).
    pub fn load(dir: &DataDir) -> Outbox {
        let path = path(dir);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).unwrap_or_else(|e| {
                tracing::warn!(
                    "{} is not a notification outbox ({e}); its events are dropped",
                    path.display()
                );
                Outbox::default()
            }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Outbox::default(),
            Err(e) => {
                tracing::warn!(
                    "cannot read {} ({e}); its events are dropped",
                    path.display()
                );
                Outbox::default()
            }
        }
    }

    pub fn save(&self, dir: &DataDir) -> io::Result<()> {
        let bytes = serde_json::to_vec_pretty(self).map_err(io::Error::other)?;
        write_atomic(&path(dir), &bytes, 0o600)
    }

    /// Adds `event` and saves the outbox before anything is sent.
    pub fn push(dir: &DataDir, event: Event) -> io::Result<()> {
        let mut outbox = Outbox::load(dir);
        outbox.pending.push(Pending { event, tries: 0 });
        outbox.save(dir)
    }

    /// Records the outcome of a try of the oldest event: delivered, or
    /// failed (given up after [`ATTEMPTS`]). Returns the pause before the
    /// next try of the (new) oldest event, if any is left.
    pub fn settle(dir: &DataDir, id: &str, delivered: bool) -> io::Result<Option<Duration>> {
        let mut outbox = Outbox::load(dir);
        let Some(at) = outbox.pending.iter().position(|p| p.event.id == id) else {
            return Ok(outbox.next_pause());
        };
        let done = {
            let pending = &mut outbox.pending[at];
            pending.tries += 1;
            if !delivered && pending.tries >= ATTEMPTS {
                tracing::warn!(
                    "gave up telling {} about the {:?} event of {} after {ATTEMPTS} tries",
                    "notify_url",
                    pending.event.event,
                    pending.event.to
                );
            }
            delivered || pending.tries >= ATTEMPTS
        };
        if done {
            outbox.pending.remove(at);
        }
        outbox.save(dir)?;
        Ok(outbox.next_pause())
    }

    /// The pause before the oldest event's next try: none before its first,
    /// then [`FIRST_PAUSE`] doubled per failed try.
    pub fn next_pause(&self) -> Option<Duration> {
        let first = self.pending.first()?;
        Some(match first.tries {
            0 => Duration::ZERO,
            n => FIRST_PAUSE * 2u32.pow(n - 1),
        })
    }
}

/// Why a POST was not delivered.
#[derive(Debug, thiserror::Error)]
pub enum PostError {
    #[error("the request failed: {0}")]
    Request(String),
    #[error("the receiver answered HTTP {0}")]
    Status(u16),
}

/// POSTs one event to `url`, bounded by [`POST_TIMEOUT`].
pub async fn post(url: &str, event: &Event) -> Result<(), PostError> {
    let client = waiaas_shared::registry::client_builder()
        .timeout(POST_TIMEOUT)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(format!("waiaas/{}", waiaas_shared::version::VERSION))
        .build()
        .map_err(|e| PostError::Request(waiaas_shared::registry::describe(&e)))?;
    let response = client
        .post(url)
        .json(event)
        .send()
        .await
        .map_err(|e| PostError::Request(waiaas_shared::registry::describe(&e)))?;
    if response.status().is_success() {
        Ok(())
    } else {
        Err(PostError::Status(response.status().as_u16()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: &str) -> Event {
        Event {
            id: id.into(),
            event: Kind::RolledBack,
            from: "1.0.0".into(),
            to: "1.1.0".into(),
            message: "health".into(),
            quarantined: true,
            at: "2026-12-06T00:00:00.000Z".into(),
            install_id: "x".into(),
        }
    }

    #[test]
    fn an_event_stays_until_delivered_or_given_up_with_a_doubling_pause() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        Outbox::push(&dir, event("a")).unwrap();
        Outbox::push(&dir, event("b")).unwrap();
        assert_eq!(Outbox::load(&dir).next_pause(), Some(Duration::ZERO));
        let mut pauses = Vec::new();
        for _ in 0..ATTEMPTS - 1 {
            pauses.push(Outbox::settle(&dir, "a", false).unwrap().unwrap());
        }
        assert_eq!(
            pauses,
            [1, 2, 4, 8].map(Duration::from_secs).to_vec(),
            "bounded, doubling"
        );
        // The last try fails too: given up, and "b" is next at once.
        assert_eq!(
            Outbox::settle(&dir, "a", false).unwrap(),
            Some(Duration::ZERO)
        );
        assert_eq!(Outbox::settle(&dir, "b", true).unwrap(), None);
        assert!(Outbox::load(&dir).pending.is_empty());
    }

    #[test]
    fn a_garbled_outbox_is_dropped_not_fatal() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = DataDir::new(tmp.path());
        std::fs::write(path(&dir), b"{not json").unwrap();
        assert_eq!(Outbox::load(&dir), Outbox::default());
        Outbox::push(&dir, event("a")).unwrap();
        assert_eq!(Outbox::load(&dir).pending.len(), 1);
    }
}

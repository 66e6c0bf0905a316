//! [`Site`]: an installation under test as its operator and its clients see
//! it — a data dir, the `HOME` its commands run with, the launcher that
//! manages it, and the daemon's API on a loopback port — with the one set of
//! HTTP helpers (token, `/health`, wallets) every test file and bench uses.
//! A test's own site (with its registry, releases or container) holds one and
//! derefs to it.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

use waiaas_shared::health::HealthResponse;
use waiaas_shared::layout::DataDir;

use crate::{create_wallet, hermetic, http, launcher_binary, wallets};

/// An installation under test.
pub struct Site {
    /// `HOME` for every command run on it (a temp folder: no real `~/.waiaas`).
    pub home: PathBuf,
    pub dir: DataDir,
    /// The daemon's port on 127.0.0.1 (`[daemon] port`).
    pub port: u16,
    /// The `waiaas-launcher` its commands run.
    pub launcher: PathBuf,
}

impl Site {
    /// An installation at `dir` managed by the launcher under test.
    pub fn new(home: PathBuf, dir: DataDir, port: u16) -> Self {
        Self {
            home,
            dir,
            port,
            launcher: launcher_binary(),
        }
    }

    /// `waiaas-launcher <args> --data-dir <dir>`, hermetic.
    pub fn launcher(&self, args: &[&str]) -> Command {
        let mut command = hermetic(Command::new(&self.launcher), &self.home);
        command.args(args).arg("--data-dir").arg(self.dir.root());
        command
    }

    /// The master token, written at the daemon's first start.
    pub fn token(&self) -> String {
        token(&self.dir)
    }

    /// `/health`'s answer, if it is a 200.
    pub fn health(&self) -> Option<HealthResponse> {
        health(self.port)
    }

    /// Creates a wallet through the API (asserting the 201); returns its id.
    pub fn create_wallet(&self, name: &str) -> String {
        create_wallet(self.port, &self.token(), name)
    }

    /// The wallets the API lists: id → name.
    pub fn wallets(&self) -> BTreeMap<String, String> {
        wallets(self.port, &self.token())
    }

    /// Creates `names` as wallets; returns all wallets the API then lists.
    pub fn seed(&self, names: &[&str]) -> BTreeMap<String, String> {
        for name in names {
            self.create_wallet(name);
        }
        let wallets = self.wallets();
        assert!(wallets.len() >= names.len());
        wallets
    }
}

/// The master token in `dir`, written at the daemon's first start.
pub fn token(dir: &DataDir) -> String {
    fs::read_to_string(dir.master_token())
        .expect("data/master.token (written at the daemon's first start)")
        .trim()
        .to_string()
}

/// `/health` of the daemon on `port`, if it answers 200 with a
/// `HealthResponse`.
pub fn health(port: u16) -> Option<HealthResponse> {
    let (status, body) = http(port, "GET", "/health", None, None)?;
    (status == 200).then(|| serde_json::from_str(&body).ok())?
}

/// `/health` of the daemon on `port`, asserting a 200 with a `HealthResponse`.
pub fn expect_health(port: u16) -> HealthResponse {
    let (status, body) = http(port, "GET", "/health", None, None).expect("/health answers");
    assert_eq!(status, 200, "/health: {body}");
    serde_json::from_str(&body).expect("a HealthResponse")
}

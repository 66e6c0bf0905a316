//! `versions/<v>/installed.json`: what `init` installed from a local build
//! that has no signed `release.json` — each file's sha256 — so a rollback
//! can check such a folder before it runs anything from it.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use waiaas_shared::fsutil::{sha256_file, write_atomic};

pub const RECORD: &str = "installed.json";

#[derive(Debug, Serialize, Deserialize)]
struct Record {
    version: String,
    /// File name → sha256 (hex).
    files: BTreeMap<String, String>,
}

/// Records `names` in `folder` as installed for `version`.
pub fn write(folder: &Path, version: &str, names: &[&str]) -> std::io::Result<()> {
    let mut files = BTreeMap::new();
    for name in names {
        files.insert(name.to_string(), sha256_file(&folder.join(name))?);
    }
    let record = Record {
        version: version.to_string(),
        files,
    };
    let json = serde_json::to_vec_pretty(&record).expect("a record serialises");
    write_atomic(&folder.join(RECORD), &json, 0o644)
}

/// Whether `folder` still holds what `init` recorded for `version`:
/// `Ok(false)` when there is no record (installed before records existed).
pub fn verify(folder: &Path, version: &str) -> Result<bool, String> {
    let bytes = match std::fs::read(folder.join(RECORD)) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(format!("cannot read {RECORD}: {e}")),
    };
    let record: Record =
        serde_json::from_slice(&bytes).map_err(|e| format!("{RECORD} is unreadable: {e}"))?;
    if record.version != version {
        return Err(format!(
            "{RECORD} records {}, not {version}",
            record.version
        ));
    }
    for (name, sha) in &record.files {
        let actual = sha256_file(&folder.join(name)).map_err(|e| format!("{name}: {e}"))?;
        if actual != *sha {
            return Err(format!(
                "{name} is not the file init installed (its sha256 changed)"
            ));
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_changed_file_is_caught_and_no_record_is_not_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        assert_eq!(verify(tmp.path(), "1.8.1"), Ok(false));
        std::fs::write(tmp.path().join("waiaas-daemon"), b"real").unwrap();
        write(tmp.path(), "1.8.1", &["waiaas-daemon"]).unwrap();
        assert_eq!(verify(tmp.path(), "1.8.1"), Ok(true));
        assert!(
            verify(tmp.path(), "1.9.0")
                .unwrap_err()
                .contains("records 1.8.1")
        );
        std::fs::write(tmp.path().join("waiaas-daemon"), b"evil").unwrap();
        assert!(
            verify(tmp.path(), "1.8.1")
                .unwrap_err()
                .contains("sha256 changed")
        );
    }
}

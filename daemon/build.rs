//! Embeds `../migrations` in the daemon: checks the numbered SQL files form a
//! contiguous chain, generates the static migration list (from which
//! `LATEST_SCHEMA_VERSION` follows) and the release → schema table of
//! `compat.toml`. Anything malformed fails the build, so a broken chain can
//! never ship.

use std::collections::BTreeMap;
use std::env;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use semver::Version;
use serde::Deserialize;

fn main() {
    if let Err(message) = run() {
        // `cargo::error` (Cargo 1.84+, below our rust-version) fails the build
        // with just this message, no panic backtrace around it.
        println!("cargo::error={}", message.replace('\n', " "));
    }
}

fn run() -> Result<(), String> {
    let manifest_dir = PathBuf::from(env_var("CARGO_MANIFEST_DIR")?);
    let out_dir = PathBuf::from(env_var("OUT_DIR")?);
    let dir = manifest_dir.join("..").join("migrations");
    let dir = dir
        .canonicalize()
        .map_err(|e| format!("migrations folder {}: {e}", dir.display()))?;
    // A directory makes cargo rescan it, so an added or removed file reruns us.
    println!("cargo::rerun-if-changed={}", dir.display());

    let migrations = scan(&dir)?;
    let latest = migrations.last().map_or(0, |m| m.version);
    fs::write(
        out_dir.join("migrations.rs"),
        render_migrations(&migrations),
    )
    .map_err(|e| format!("writing migrations.rs: {e}"))?;

    let compat = dir.join("compat.toml");
    println!("cargo::rerun-if-changed={}", compat.display());
    let releases = read_compat(&compat, latest)?;
    let package = env_var("CARGO_PKG_VERSION")?;
    let package = Version::parse(&package)
        .map_err(|e| format!("package version {package:?} is not semver: {e}"))?;
    fs::write(
        out_dir.join("compat_table.rs"),
        render_compat(&releases, &package),
    )
    .map_err(|e| format!("writing compat_table.rs: {e}"))?;
    Ok(())
}

fn env_var(name: &str) -> Result<String, String> {
    env::var(name).map_err(|_| format!("{name} is not set (build.rs runs under cargo)"))
}

struct File {
    version: u32,
    description: String,
    path: PathBuf,
}

/// The `NNNN_snake_case.sql` files of `dir`, in order, checked to number 1..=N.
fn scan(dir: &Path) -> Result<Vec<File>, String> {
    let entries = fs::read_dir(dir).map_err(|e| format!("reading {}: {e}", dir.display()))?;
    let mut files: Vec<File> = Vec::new();
    for entry in entries {
        let path = entry
            .map_err(|e| format!("reading {}: {e}", dir.display()))?
            .path();
        if path.extension().and_then(|e| e.to_str()) != Some("sql") {
            continue;
        }
        println!("cargo::rerun-if-changed={}", path.display());
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .ok_or_else(|| format!("{}: file name is not UTF-8", path.display()))?;
        let (version, description) = parse_name(name)?;
        files.push(File {
            version,
            description,
            path,
        });
    }
    files.sort_by(|a, b| a.version.cmp(&b.version).then(a.path.cmp(&b.path)));
    if files.is_empty() {
        return Err(format!(
            "no migrations (NNNN_description.sql) in {}",
            dir.display()
        ));
    }
    for (index, file) in files.iter().enumerate() {
        let expected = u32::try_from(index + 1).map_err(|_| "too many migrations".to_string())?;
        if file.version == expected {
            continue;
        }
        let name = |f: &File| f.path.file_name().map(|n| n.to_string_lossy().into_owned());
        return Err(if file.version < expected {
            format!(
                "migrations {:?} and {:?} share number {}; give each migration its own number",
                name(&files[index - 1]).unwrap_or_default(),
                name(file).unwrap_or_default(),
                file.version
            )
        } else {
            format!(
                "migration number {expected} is missing (the next file is {:?}); \
                 migrations must be numbered 1, 2, 3, … without gaps",
                name(file).unwrap_or_default()
            )
        });
    }
    Ok(files)
}

/// `0007_rebuild_transactions_status_check.sql` → (7, "rebuild_transactions_status_check").
fn parse_name(name: &str) -> Result<(u32, String), String> {
    let bad = || {
        format!(
            "migration file {name:?} is not named NNNN_description.sql \
             (four digits, an underscore, lower-case snake_case)"
        )
    };
    let stem = name.strip_suffix(".sql").ok_or_else(bad)?;
    let (number, description) = stem.split_once('_').ok_or_else(bad)?;
    let well_formed = number.len() == 4
        && number.bytes().all(|b| b.is_ascii_digit())
        && !description.is_empty()
        && !description.starts_with('_')
        && !description.ends_with('_')
        && description
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
    if !well_formed {
        return Err(bad());
    }
    let version: u32 = number.parse().map_err(|_| bad())?;
    if version == 0 {
        return Err(format!("migration file {name:?}: numbering starts at 0001"));
    }
    Ok((version, description.to_string()))
}

fn render_migrations(files: &[File]) -> String {
    let mut out =
        String::from("// Generated by daemon/build.rs from ../migrations. Do not edit.\n\n");
    out.push_str("/// Every migration, in order; `MIGRATIONS[i].version == i + 1`.\n");
    out.push_str("pub static MIGRATIONS: &[Migration] = &[\n");
    for file in files {
        // `{:?}` of a str is a valid Rust string literal, whatever the path holds.
        let _ = writeln!(
            out,
            "    Migration {{ version: {}, description: {:?}, sql: include_str!({:?}) }},",
            file.version,
            file.description,
            file.path.display().to_string()
        );
    }
    out.push_str("];\n\n");
    out.push_str("/// The newest schema this daemon knows: the highest migration number.\n");
    let latest = files.last().map_or(0, |f| f.version);
    let _ = writeln!(out, "pub const LATEST_SCHEMA_VERSION: u32 = {latest};");
    out
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CompatFile {
    releases: BTreeMap<String, u32>,
}

/// compat.toml's releases, sorted by semver and checked for sense.
fn read_compat(path: &Path, latest: u32) -> Result<Vec<(Version, u32)>, String> {
    let text = fs::read_to_string(path).map_err(|e| format!("reading {}: {e}", path.display()))?;
    let file: CompatFile = toml::from_str(&text).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut releases = Vec::with_capacity(file.releases.len());
    for (name, schema) in file.releases {
        let version = Version::parse(&name)
            .map_err(|e| format!("{}: {name:?} is not a semver version: {e}", path.display()))?;
        if !version.pre.is_empty() || !version.build.is_empty() {
            return Err(format!(
                "{}: {name:?}: list final releases only (a prerelease ships its final's schema)",
                path.display()
            ));
        }
        if schema == 0 || schema > latest {
            return Err(format!(
                "{}: release {name} names schema {schema}, but the migrations go from 1 to {latest}",
                path.display()
            ));
        }
        releases.push((version, schema));
    }
    releases.sort();
    for pair in releases.windows(2) {
        let ((older, older_schema), (newer, newer_schema)) = (&pair[0], &pair[1]);
        if newer_schema < older_schema {
            return Err(format!(
                "{}: release {newer} has schema {newer_schema}, older than {older}'s {older_schema}; \
                 a later release never ships an older schema",
                path.display()
            ));
        }
    }
    Ok(releases)
}

fn render_compat(releases: &[(Version, u32)], package: &Version) -> String {
    let mut out = String::from(
        "// Generated by daemon/build.rs from ../migrations/compat.toml. Do not edit.\n\n",
    );
    out.push_str("/// Every published release and its schema, in semver order.\n");
    out.push_str("pub static RELEASES: &[Release] = &[\n");
    for (version, schema) in releases {
        let _ = writeln!(
            out,
            "    Release {{ version: semver::Version::new({}, {}, {}), schema: {schema} }},",
            version.major, version.minor, version.patch
        );
    }
    out.push_str("];\n\n");
    out.push_str("/// The release being built, without any prerelease tag: a prerelease\n");
    out.push_str("/// ships its final's schema and follows its final's compatibility window.\n");
    let _ = writeln!(
        out,
        "pub static THIS_RELEASE: semver::Version = semver::Version::new({}, {}, {});",
        package.major, package.minor, package.patch
    );
    out
}

//! `config.toml` (SPEC §3): flat `[daemon]` and `[update]` sections, every key
//! overridable by `WAIAAS_{SECTION}_{KEY}`. Unknown keys and out-of-range values
//! are errors naming the key and what is allowed: a typo must never silently
//! fall back to a default.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::window::Window;

/// The daemon's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DaemonConfig {
    pub port: u16,
    pub hostname: String,
    pub log_level: String,
    /// Seconds a graceful stop may take before the process is killed.
    pub shutdown_timeout: u64,
    pub update_check: bool,
    /// Seconds between version checks.
    pub update_check_interval: u64,
}

/// The updater's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpdateConfig {
    /// Registry base URL; `None` means "ask npm's configuration" (see `registry`).
    pub registry: Option<String>,
    /// The dist-tag followed.
    pub channel: String,
    pub keep_backups: u32,
    /// Seconds a new daemon has to become healthy.
    pub health_timeout: u64,
    /// Seconds `waiaas-daemon migrate` may take in an upgrade before it is
    /// killed and the upgrade rolled back.
    pub migrate_timeout: u64,
    /// Minisign public keys trusted in addition to the built-in release keys.
    pub trusted_keys: Vec<String>,
    /// Accept a plain `http://` registry on a non-loopback host.
    pub allow_insecure_registry: bool,
    /// Automatic upgrades (SPEC §13): how far the supervisor goes by itself.
    pub auto: AutoLevel,
    /// How often the supervisor looks for a release.
    pub check_interval: Duration,
    /// When an automatic upgrade may start.
    pub window: Window,
    /// Soak: how long a release must have been published.
    pub min_release_age: Duration,
    /// The largest random delay inside the window.
    pub jitter: Duration,
    /// Where each automatic upgrade, rollback or quarantine is POSTed.
    pub notify_url: Option<String>,
    /// Writes per second above which an automatic upgrade waits; 0: never.
    pub busy_write_rate: u32,
    /// A FleetLock server (Zincati's protocol): an automatic upgrade takes
    /// one of its slots first and gives it back once the new release has
    /// served for `fleet_settle`.
    pub fleet_lock: Option<String>,
    /// The FleetLock group this installation belongs to.
    pub fleet_group: String,
    /// How long a new release must serve without a crash before the slot
    /// goes back.
    pub fleet_settle: Duration,
}

/// `[update] auto`: never a new major by itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AutoLevel {
    Off,
    /// Same major.minor.
    Patch,
    /// Same major.
    Minor,
}

impl fmt::Display for AutoLevel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AutoLevel::Off => "off",
            AutoLevel::Patch => "patch",
            AutoLevel::Minor => "minor",
        })
    }
}

/// A duration as the config writes it: `6h`, `1h30m`, `5s`, `2d`, `0s`.
pub fn format_duration(d: Duration) -> String {
    let mut secs = d.as_secs();
    if secs == 0 {
        return "0s".into();
    }
    let mut text = String::new();
    for (unit, size) in [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)] {
        if secs >= size {
            text.push_str(&format!("{}{unit}", secs / size));
            secs %= size;
        }
    }
    text
}

/// Parses [`format_duration`]'s form (units d, h, m, s, each at most once,
/// largest first); `None` if it is not one.
pub fn parse_duration(text: &str) -> Option<Duration> {
    let mut rest = text.trim();
    if rest.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut last_size = u64::MAX;
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !c.is_ascii_digit())?;
        if digits == 0 {
            return None;
        }
        let n: u64 = rest[..digits].parse().ok()?;
        let unit = rest[digits..].chars().next()?;
        let size = match unit {
            'd' => 86_400,
            'h' => 3_600,
            'm' => 60,
            's' => 1,
            _ => return None,
        };
        if size >= last_size {
            return None;
        }
        last_size = size;
        total = total.checked_add(n.checked_mul(size)?)?;
        rest = &rest[digits + 1..];
    }
    Some(Duration::from_secs(total))
}

/// A whole configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    pub daemon: DaemonConfig,
    pub update: UpdateConfig,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            daemon: DaemonConfig {
                port: 3100,
                hostname: "127.0.0.1".into(),
                log_level: "info".into(),
                shutdown_timeout: 30,
                update_check: true,
                update_check_interval: 86_400,
            },
            update: UpdateConfig {
                registry: None,
                channel: "latest".into(),
                keep_backups: 5,
                health_timeout: 30,
                migrate_timeout: 1800,
                trusted_keys: Vec::new(),
                allow_insecure_registry: false,
                auto: AutoLevel::Off,
                check_interval: Duration::from_secs(6 * 3600),
                window: Window::always(),
                min_release_age: Duration::from_secs(24 * 3600),
                jitter: Duration::from_secs(30 * 60),
                notify_url: None,
                busy_write_rate: 20,
                fleet_lock: None,
                fleet_group: "default".into(),
                fleet_settle: Duration::from_secs(10 * 60),
            },
        }
    }
}

/// Every key, as `section.key`, in the order the default file lists them.
pub const KEYS: &[&str] = &[
    "daemon.port",
    "daemon.hostname",
    "daemon.log_level",
    "daemon.shutdown_timeout",
    "daemon.update_check",
    "daemon.update_check_interval",
    "update.registry",
    "update.channel",
    "update.keep_backups",
    "update.health_timeout",
    "update.migrate_timeout",
    "update.trusted_keys",
    "update.allow_insecure_registry",
    "update.auto",
    "update.check_interval",
    "update.window",
    "update.min_release_age",
    "update.jitter",
    "update.notify_url",
    "update.busy_write_rate",
    "update.fleet_lock",
    "update.fleet_group",
    "update.fleet_settle",
];

const LOG_LEVELS: &[&str] = &["error", "warn", "info", "debug", "trace"];

/// Where a bad value came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File(PathBuf),
    Env(String),
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Origin::File(path) => write!(f, "{}", path.display()),
            Origin::Env(var) => write!(f, "environment variable {var}"),
        }
    }
}

/// Why a configuration was refused. The message names the key and what is allowed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {reason}")]
    Unreadable { path: PathBuf, reason: String },
    #[error("{origin}: not valid TOML: {reason}")]
    Syntax { origin: Origin, reason: String },
    #[error("{origin}: unknown key `{key}`; known keys are: {}", KEYS.join(", "))]
    UnknownKey { origin: Origin, key: String },
    #[error("{origin}: `{key}` {expected} (got {got})")]
    Invalid {
        origin: Origin,
        key: String,
        expected: String,
        got: String,
    },
}

impl ConfigError {
    /// The `section.key` this error is about, if it is about one.
    pub fn key(&self) -> Option<&str> {
        match self {
            ConfigError::UnknownKey { key, .. } | ConfigError::Invalid { key, .. } => Some(key),
            _ => None,
        }
    }
}

/// A value before it is typed: from the file, or a string from the environment.
enum Raw<'a> {
    Toml(&'a toml::Value),
    Env(&'a str),
}

impl Raw<'_> {
    fn shown(&self) -> String {
        match self {
            Raw::Toml(v) => v.to_string(),
            Raw::Env(s) => format!("{s:?}"),
        }
    }
}

struct Setter<'a> {
    origin: &'a Origin,
    key: &'a str,
    raw: Raw<'a>,
}

impl Setter<'_> {
    fn invalid(&self, expected: impl Into<String>) -> ConfigError {
        ConfigError::Invalid {
            origin: self.origin.clone(),
            key: self.key.to_string(),
            expected: expected.into(),
            got: self.raw.shown(),
        }
    }

    fn int(&self, min: u64, max: u64) -> Result<u64, ConfigError> {
        let expected = format!("must be a whole number from {min} to {max}");
        let n = match self.raw {
            Raw::Toml(toml::Value::Integer(n)) => u64::try_from(*n).ok(),
            Raw::Env(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        n.filter(|n| (min..=max).contains(n))
            .ok_or_else(|| self.invalid(expected))
    }

    fn boolean(&self) -> Result<bool, ConfigError> {
        match self.raw {
            Raw::Toml(toml::Value::Boolean(b)) => Ok(*b),
            Raw::Env(s) => match s.trim() {
                "true" | "1" => Ok(true),
                "false" | "0" => Ok(false),
                _ => Err(self.invalid("must be true or false")),
            },
            _ => Err(self.invalid("must be true or false")),
        }
    }

    fn string(&self) -> Result<String, ConfigError> {
        let s = match self.raw {
            Raw::Toml(toml::Value::String(s)) => s.as_str(),
            Raw::Env(s) => s,
            _ => return Err(self.invalid("must be a string")),
        };
        if s.trim().is_empty() {
            return Err(self.invalid("must not be empty"));
        }
        Ok(s.to_string())
    }

    fn http_url(&self) -> Result<String, ConfigError> {
        let url = self.string()?;
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(self.invalid("must be an http:// or https:// URL"));
        }
        Ok(url)
    }

    fn one_of(&self, allowed: &[&str]) -> Result<String, ConfigError> {
        let s = self.string()?;
        if allowed.contains(&s.as_str()) {
            Ok(s)
        } else {
            Err(self.invalid(format!("must be one of {}", allowed.join(", "))))
        }
    }

    /// A duration (`6h`, `1h30m`, `5s`; a bare number is seconds) from
    /// `min` to `max`.
    fn duration(&self, min: Duration, max: Duration) -> Result<Duration, ConfigError> {
        let expected = format!(
            "must be a duration such as \"30s\", \"15m\", \"6h\", \"1d\" or \"1h30m\", \
             from {} to {}",
            format_duration(min),
            format_duration(max)
        );
        let d = match self.raw {
            Raw::Toml(toml::Value::Integer(n)) => u64::try_from(*n).ok().map(Duration::from_secs),
            Raw::Toml(toml::Value::String(s)) => parse_duration(s),
            Raw::Env(s) => s
                .trim()
                .parse::<u64>()
                .ok()
                .map(Duration::from_secs)
                .or_else(|| parse_duration(s)),
            _ => None,
        };
        d.filter(|d| (min..=max).contains(d))
            .ok_or_else(|| self.invalid(expected))
    }

    fn strings(&self) -> Result<Vec<String>, ConfigError> {
        let expected = "must be a list of strings";
        match self.raw {
            Raw::Toml(toml::Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_string))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| self.invalid(expected)),
            // In the environment the list is comma-separated.
            Raw::Env(s) => Ok(s
                .split(',')
                .map(str::trim)
                .filter(|k| !k.is_empty())
                .map(str::to_string)
                .collect()),
            _ => Err(self.invalid(expected)),
        }
    }
}

impl Config {
    /// Reads `path` (absent means all defaults) and applies the `WAIAAS_*` overrides
    /// found in the process environment.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(text) => Some(text),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => {
                return Err(ConfigError::Unreadable {
                    path: path.to_path_buf(),
                    reason: e.to_string(),
                });
            }
        };
        Self::parse(text.as_deref(), path, std::env::vars())
    }

    /// Parses a file's text (or none) and then the given `(name, value)` environment.
    pub fn parse(
        text: Option<&str>,
        path: &Path,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Self, ConfigError> {
        let mut config = Config::default();
        if let Some(text) = text {
            let origin = Origin::File(path.to_path_buf());
            let table: toml::Table =
                text.parse()
                    .map_err(|e: toml::de::Error| ConfigError::Syntax {
                        origin: origin.clone(),
                        reason: e.message().to_string(),
                    })?;
            for (section, body) in &table {
                let Some(body) = body.as_table() else {
                    return Err(ConfigError::UnknownKey {
                        origin,
                        key: section.clone(),
                    });
                };
                for (name, value) in body {
                    let key = format!("{section}.{name}");
                    config.set(&origin, &key, Raw::Toml(value))?;
                }
            }
        }
        let mut overrides: Vec<(String, String)> = env
            .into_iter()
            .filter(|(name, _)| {
                name.starts_with("WAIAAS_DAEMON_") || name.starts_with("WAIAAS_UPDATE_")
            })
            .collect();
        overrides.sort();
        for (name, value) in overrides {
            let origin = Origin::Env(name.clone());
            let key = KEYS
                .iter()
                .find(|key| env_name(key) == name)
                .ok_or_else(|| ConfigError::UnknownKey {
                    origin: origin.clone(),
                    key: name.clone(),
                })?;
            config.set(&origin, key, Raw::Env(&value))?;
        }
        Ok(config)
    }

    fn set(&mut self, origin: &Origin, key: &str, raw: Raw<'_>) -> Result<(), ConfigError> {
        let s = Setter { origin, key, raw };
        match key {
            "daemon.port" => self.daemon.port = s.int(1, 65_535)? as u16,
            "daemon.hostname" => self.daemon.hostname = s.string()?,
            "daemon.log_level" => self.daemon.log_level = s.one_of(LOG_LEVELS)?,
            "daemon.shutdown_timeout" => self.daemon.shutdown_timeout = s.int(5, 300)?,
            "daemon.update_check" => self.daemon.update_check = s.boolean()?,
            "daemon.update_check_interval" => {
                self.daemon.update_check_interval = s.int(3_600, 604_800)?
            }
            "update.registry" => {
                let url = s.string()?;
                if !(url.starts_with("http://") || url.starts_with("https://")) {
                    return Err(s.invalid("must be an http:// or https:// URL"));
                }
                self.update.registry = Some(url);
            }
            "update.channel" => {
                let tag = s.string()?;
                let ok = tag
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'));
                if !ok {
                    return Err(s.invalid("must be an npm dist-tag (letters, digits, - . _)"));
                }
                self.update.channel = tag;
            }
            "update.keep_backups" => self.update.keep_backups = s.int(1, 100)? as u32,
            "update.health_timeout" => self.update.health_timeout = s.int(1, 600)?,
            "update.migrate_timeout" => self.update.migrate_timeout = s.int(1, 86_400)?,
            "update.trusted_keys" => self.update.trusted_keys = s.strings()?,
            "update.allow_insecure_registry" => {
                self.update.allow_insecure_registry = s.boolean()?
            }
            "update.auto" => {
                self.update.auto = match s.one_of(&["off", "patch", "minor"])?.as_str() {
                    "patch" => AutoLevel::Patch,
                    "minor" => AutoLevel::Minor,
                    _ => AutoLevel::Off,
                }
            }
            "update.check_interval" => {
                self.update.check_interval = s.duration(secs(5), secs(7 * 86_400))?
            }
            "update.window" => {
                self.update.window =
                    Window::parse(&s.string()?).map_err(|e| s.invalid(format!("window {e}")))?
            }
            "update.min_release_age" => {
                self.update.min_release_age = s.duration(secs(0), secs(90 * 86_400))?
            }
            "update.jitter" => self.update.jitter = s.duration(secs(0), secs(86_400))?,
            "update.notify_url" => self.update.notify_url = Some(s.http_url()?),
            "update.busy_write_rate" => self.update.busy_write_rate = s.int(0, 1_000_000)? as u32,
            "update.fleet_lock" => {
                self.update.fleet_lock = Some(s.http_url()?.trim_end_matches('/').to_string())
            }
            "update.fleet_group" => {
                // Zincati's rule for a group name.
                let group = s.string()?;
                let ok = !group.is_empty()
                    && group
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.'));
                if !ok {
                    return Err(s.invalid("must be letters, digits, - and . (FleetLock's rule)"));
                }
                self.update.fleet_group = group;
            }
            "update.fleet_settle" => {
                self.update.fleet_settle = s.duration(secs(0), secs(7 * 86_400))?
            }
            _ => {
                return Err(ConfigError::UnknownKey {
                    origin: origin.clone(),
                    key: key.to_string(),
                });
            }
        }
        Ok(())
    }

    /// The text `init` writes: every key with its default, the optional ones commented.
    pub fn default_file() -> String {
        let d = Config::default();
        format!(
            "[daemon]\n\
             port = {}\n\
             hostname = \"{}\"\n\
             log_level = \"{}\"\n\
             shutdown_timeout = {}          # seconds, 5..300\n\
             update_check = {}\n\
             update_check_interval = {}  # seconds, 3600..604800\n\
             \n\
             [update]\n\
             # registry = \"<url>\"           # default: npm's own configuration\n\
             channel = \"{}\"             # the dist-tag followed\n\
             keep_backups = {}\n\
             health_timeout = {}            # seconds the new daemon has to become healthy\n\
             migrate_timeout = {}         # seconds an upgrade's migration may take, 1..86400\n\
             # trusted_keys = [\"<minisign public key>\"]   # added to the built-in release keys\n\
             # allow_insecure_registry = false   # plain http:// only on loopback unless true\n\
             auto = \"{}\"                 # automatic upgrades: off, patch or minor (never a new major)\n\
             check_interval = \"{}\"         # how often the supervisor looks, 5s..7d\n\
             window = \"{}\"             # or e.g. \"Mon..Fri 02:00-04:00 Europe/Berlin\"\n\
             min_release_age = \"{}\"       # soak: published at least this long ago\n\
             jitter = \"{}\"                # a random delay inside the window\n\
             busy_write_rate = {}          # writes/s above which an automatic upgrade waits; 0 never\n\
             # notify_url = \"<url>\"        # POST a JSON event per automatic upgrade, rollback, quarantine\n\
             # fleet_lock = \"<url>\"        # a FleetLock server: one automatic upgrade at a time per group\n\
             fleet_group = \"{}\"\n\
             fleet_settle = \"{}\"         # how long a new release serves before the slot goes back\n",
            d.daemon.port,
            d.daemon.hostname,
            d.daemon.log_level,
            d.daemon.shutdown_timeout,
            d.daemon.update_check,
            d.daemon.update_check_interval,
            d.update.channel,
            d.update.keep_backups,
            d.update.health_timeout,
            d.update.migrate_timeout,
            d.update.auto,
            format_duration(d.update.check_interval),
            d.update.window,
            format_duration(d.update.min_release_age),
            format_duration(d.update.jitter),
            d.update.busy_write_rate,
            d.update.fleet_group,
            format_duration(d.update.fleet_settle),
        )
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

/// `daemon.port` → `WAIAAS_DAEMON_PORT`.
pub fn env_name(key: &str) -> String {
    format!("WAIAAS_{}", key.replace('.', "_").to_ascii_uppercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(Some(text), Path::new("config.toml"), Vec::new())
    }

    fn env(pairs: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let env = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string()));
        Config::parse(None, Path::new("config.toml"), env)
    }

    #[test]
    fn the_default_file_parses_to_the_defaults() {
        assert_eq!(parse(&Config::default_file()).unwrap(), Config::default());
    }

    #[test]
    fn empty_and_absent_files_give_defaults() {
        assert_eq!(parse("").unwrap(), Config::default());
        assert_eq!(env(&[]).unwrap(), Config::default());
    }

    #[test]
    fn values_are_read() {
        let c = parse(
            "[daemon]\nport = 4000\nupdate_check = false\n[update]\nregistry = \"http://127.0.0.1:9/\"\nchannel = \"rc\"\ntrusted_keys = [\"a\", \"b\"]\n",
        )
        .unwrap();
        assert_eq!(c.daemon.port, 4000);
        assert!(!c.daemon.update_check);
        assert_eq!(c.update.registry.as_deref(), Some("http://127.0.0.1:9/"));
        assert_eq!(c.update.channel, "rc");
        assert_eq!(c.update.trusted_keys, ["a", "b"]);
    }

    /// Each malformed case names the offending key.
    #[test]
    fn malformed_values_name_the_key() {
        let cases = [
            ("[daemon]\nport = 0", "daemon.port", "1 to 65535"),
            ("[daemon]\nport = 70000", "daemon.port", "1 to 65535"),
            ("[daemon]\nport = \"3100\"", "daemon.port", "whole number"),
            (
                "[daemon]\nshutdown_timeout = 4",
                "daemon.shutdown_timeout",
                "5 to 300",
            ),
            (
                "[daemon]\nshutdown_timeout = 301",
                "daemon.shutdown_timeout",
                "5 to 300",
            ),
            (
                "[daemon]\nupdate_check = \"yes\"",
                "daemon.update_check",
                "true or false",
            ),
            (
                "[daemon]\nupdate_check_interval = 60",
                "daemon.update_check_interval",
                "3600 to 604800",
            ),
            (
                "[daemon]\nlog_level = \"loud\"",
                "daemon.log_level",
                "one of",
            ),
            (
                "[daemon]\nhostname = \"\"",
                "daemon.hostname",
                "not be empty",
            ),
            (
                "[update]\nregistry = \"ftp://x\"",
                "update.registry",
                "http",
            ),
            ("[update]\nchannel = \"a b\"", "update.channel", "dist-tag"),
            (
                "[update]\nkeep_backups = 0",
                "update.keep_backups",
                "1 to 100",
            ),
            (
                "[update]\ntrusted_keys = \"k\"",
                "update.trusted_keys",
                "list",
            ),
            ("[daemon]\nprot = 1", "daemon.prot", "known keys"),
            ("[deamon]\nport = 1", "deamon.port", "known keys"),
            ("daemon = 3", "daemon", "known keys"),
        ];
        for (text, key, hint) in cases {
            let err = parse(text).expect_err(text);
            assert_eq!(err.key(), Some(key), "{text}: {err}");
            let msg = err.to_string();
            assert!(msg.contains(key) && msg.contains(hint), "{text}: {msg}");
            assert!(msg.starts_with("config.toml"), "{msg}");
        }
    }

    #[test]
    fn syntax_errors_are_reported() {
        let err = parse("[daemon\nport = 1").unwrap_err();
        assert!(matches!(err, ConfigError::Syntax { .. }), "{err}");
    }

    #[test]
    fn environment_overrides_win_and_are_validated() {
        let c = Config::parse(
            Some("[daemon]\nport = 4000"),
            Path::new("config.toml"),
            [
                ("WAIAAS_DAEMON_PORT".to_string(), "4001".to_string()),
                ("WAIAAS_UPDATE_TRUSTED_KEYS".into(), "k1, k2".into()),
                ("WAIAAS_DATA_DIR".into(), "/elsewhere".into()),
            ],
        )
        .unwrap();
        assert_eq!(c.daemon.port, 4001);
        assert_eq!(c.update.trusted_keys, ["k1", "k2"]);

        let err = env(&[("WAIAAS_DAEMON_SHUTDOWN_TIMEOUT", "1")]).unwrap_err();
        assert!(
            err.to_string().contains("WAIAAS_DAEMON_SHUTDOWN_TIMEOUT"),
            "{err}"
        );
        assert_eq!(err.key(), Some("daemon.shutdown_timeout"));
        let err = env(&[("WAIAAS_DAEMON_PROT", "1")]).unwrap_err();
        assert!(matches!(err, ConfigError::UnknownKey { .. }), "{err}");
        assert!(
            !env(&[("WAIAAS_DAEMON_UPDATE_CHECK", "0")])
                .unwrap()
                .daemon
                .update_check
        );
    }

    #[test]
    fn every_key_has_an_environment_name() {
        assert_eq!(env_name("daemon.port"), "WAIAAS_DAEMON_PORT");
        assert_eq!(
            env_name("update.keep_backups"),
            "WAIAAS_UPDATE_KEEP_BACKUPS"
        );
    }

    #[test]
    fn automatic_upgrade_keys_default_safe_and_parse_from_file_and_environment() {
        let d = Config::default().update;
        assert_eq!(d.auto, AutoLevel::Off);
        assert_eq!(d.check_interval, Duration::from_secs(6 * 3600));
        assert!(d.window.is_always());
        assert_eq!(d.min_release_age, Duration::from_secs(24 * 3600));
        assert_eq!(d.jitter, Duration::from_secs(1800));
        assert_eq!(d.notify_url, None);
        assert_eq!(d.busy_write_rate, 20);
        assert_eq!(d.fleet_lock, None);
        assert_eq!(d.fleet_group, "default");
        assert_eq!(d.fleet_settle, Duration::from_secs(600));

        let c = parse(
            "[update]\nfleet_lock = \"https://127.0.0.1:3333/\"\nfleet_group = \"eu-west.1\"\n\
             fleet_settle = \"2s\"\n",
        )
        .unwrap()
        .update;
        // The protocol's paths are appended to the base.
        assert_eq!(c.fleet_lock.as_deref(), Some("https://127.0.0.1:3333"));
        assert_eq!(c.fleet_group, "eu-west.1");
        assert_eq!(c.fleet_settle, Duration::from_secs(2));

        let c = parse(
            "[update]\nauto = \"minor\"\ncheck_interval = \"5s\"\nwindow = \"Sat,Sun 01:00-05:00 UTC\"\n\
             min_release_age = \"1h30m\"\njitter = 0\nnotify_url = \"https://127.0.0.1/hook\"\nbusy_write_rate = 0\n",
        )
        .unwrap()
        .update;
        assert_eq!(c.auto, AutoLevel::Minor);
        assert_eq!(c.check_interval, Duration::from_secs(5));
        assert_eq!(c.window.to_string(), "Sat,Sun 01:00-05:00 UTC");
        assert_eq!(c.min_release_age, Duration::from_secs(5400));
        assert_eq!(c.jitter, Duration::ZERO);
        assert_eq!(c.notify_url.as_deref(), Some("https://127.0.0.1/hook"));
        assert_eq!(c.busy_write_rate, 0);

        let c = env(&[
            ("WAIAAS_UPDATE_AUTO", "patch"),
            ("WAIAAS_UPDATE_CHECK_INTERVAL", "2d"),
            ("WAIAAS_UPDATE_JITTER", "90"),
            ("WAIAAS_UPDATE_WINDOW", "Mon..Fri 02:00-04:00"),
        ])
        .unwrap()
        .update;
        assert_eq!(c.auto, AutoLevel::Patch);
        assert_eq!(c.check_interval, Duration::from_secs(2 * 86_400));
        assert_eq!(c.jitter, Duration::from_secs(90));
        assert_eq!(c.window.to_string(), "Mon..Fri 02:00-04:00");
    }

    #[test]
    fn malformed_automatic_upgrade_keys_name_the_key() {
        let cases = [
            ("auto = \"major\"", "update.auto", "off, patch, minor"),
            (
                "check_interval = \"4s\"",
                "update.check_interval",
                "from 5s to 7d",
            ),
            (
                "check_interval = \"8d\"",
                "update.check_interval",
                "from 5s to 7d",
            ),
            (
                "check_interval = \"6 hours\"",
                "update.check_interval",
                "duration",
            ),
            (
                "min_release_age = \"91d\"",
                "update.min_release_age",
                "0s to 90d",
            ),
            ("jitter = \"30m1h\"", "update.jitter", "duration"),
            ("window = \"Mon 02:00\"", "update.window", "time range"),
            (
                "window = \"Mon 02:00-04:00 Nowhere/City\"",
                "update.window",
                "time zone",
            ),
            ("notify_url = \"ftp://x\"", "update.notify_url", "http"),
            (
                "busy_write_rate = -1",
                "update.busy_write_rate",
                "0 to 1000000",
            ),
            ("fleet_lock = \"airlock:3333\"", "update.fleet_lock", "http"),
            ("fleet_group = \"a b\"", "update.fleet_group", "FleetLock"),
            ("fleet_group = \"\"", "update.fleet_group", "empty"),
            ("fleet_settle = \"8d\"", "update.fleet_settle", "0s to 7d"),
        ];
        for (line, key, expected) in cases {
            let err = parse(&format!("[update]\n{line}\n")).unwrap_err();
            assert_eq!(err.key(), Some(key), "{line}");
            assert!(err.to_string().contains(expected), "{line}: {err}");
        }
        let err = env(&[("WAIAAS_UPDATE_AUTO", "on")]).unwrap_err();
        assert_eq!(err.key(), Some("update.auto"));
    }

    #[test]
    fn durations_print_the_way_they_parse() {
        for (text, secs) in [
            ("0s", 0),
            ("5s", 5),
            ("30m", 1800),
            ("6h", 21_600),
            ("1h30m", 5400),
            ("2d", 172_800),
            ("1d1h1m1s", 90_061),
        ] {
            assert_eq!(
                parse_duration(text),
                Some(Duration::from_secs(secs)),
                "{text}"
            );
            assert_eq!(format_duration(Duration::from_secs(secs)), text);
        }
        for bad in ["", "h", "5", "5x", "1m1h", "1h1h", "-5s", "5 s"] {
            assert_eq!(parse_duration(bad), None, "{bad:?}");
        }
    }
}

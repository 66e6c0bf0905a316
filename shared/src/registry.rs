//! The npm registry as a release source (SPEC §3, §4): where it is, and what
//! version a dist-tag names. No registry host is written here: the URL always
//! comes from configuration, npm's environment, the user's `.npmrc`, or npm.

use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use semver::Version;

pub use crate::release::CLI_PACKAGE;

/// Longest a version check may take, connection to last byte.
pub const CHECK_TIMEOUT: Duration = Duration::from_secs(5);

/// Largest body a version check reads.
pub const CHECK_BODY_CAP: usize = 1 << 20;

/// Where the registry URL was found, for log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Config,
    Environment,
    Npmrc,
    NpmCli,
}

/// The registry base URL, in SPEC §3 order: `[update] registry`, then
/// `npm_config_registry`, then the `registry=` line of `~/.npmrc`, then
/// `npm config get registry` (run once per process). `None` if none answers.
pub fn resolve(configured: Option<&str>) -> Option<(String, Source)> {
    if let Some(url) = configured {
        return Some((url.to_string(), Source::Config));
    }
    for var in ["npm_config_registry", "NPM_CONFIG_REGISTRY"] {
        if let Some(url) = std::env::var(var).ok().filter(|u| is_url(u)) {
            return Some((url, Source::Environment));
        }
    }
    if let Some(home) = std::env::var_os("HOME")
        && let Some(url) = npmrc_registry(&Path::new(&home).join(".npmrc"))
    {
        return Some((url, Source::Npmrc));
    }
    static FROM_NPM: OnceLock<Option<String>> = OnceLock::new();
    FROM_NPM
        .get_or_init(ask_npm)
        .clone()
        .map(|url| (url, Source::NpmCli))
}

/// Why a registry URL is not used as a release source.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InsecureSource {
    #[error(
        "the registry {0} is plain http:// on a non-loopback host, where anyone on the path can \
         serve or change releases; use an https:// URL, or set \
         `allow_insecure_registry = true` in [update] to accept it"
    )]
    PlainHttp(String),
    #[error("the registry URL {0} is not an http:// or https:// URL")]
    NotHttp(String),
}

/// Whether `url` may be a release source: `https://`; `http://` on a
/// loopback address (tests, a local mirror); any `http://` only with
/// `allow_insecure`. Decided on the URL's text alone: no lookup, no connection.
pub fn check_source(url: &str, allow_insecure: bool) -> Result<(), InsecureSource> {
    let shown = || redact(url);
    let parsed = reqwest::Url::parse(url).map_err(|_| InsecureSource::NotHttp(shown()))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if allow_insecure || is_loopback(&parsed) => Ok(()),
        "http" => Err(InsecureSource::PlainHttp(shown())),
        _ => Err(InsecureSource::NotHttp(shown())),
    }
}

fn is_loopback(url: &reqwest::Url) -> bool {
    let host = url.host_str().unwrap_or_default();
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    match bare.parse::<std::net::IpAddr>() {
        Ok(ip) => ip.is_loopback(),
        Err(_) => host.eq_ignore_ascii_case("localhost"),
    }
}

/// A URL for messages: scheme, host and port only (a URL may carry credentials).
pub fn redact(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => format!(
            "{}://{}{}",
            u.scheme(),
            u.host_str().unwrap_or("?"),
            u.port().map(|p| format!(":{p}")).unwrap_or_default()
        ),
        Err(_) => "(not a URL)".to_string(),
    }
}

/// A `reqwest` client builder on the binaries' one TLS stack: rustls with the
/// `ring` crypto provider, installed as the process default on first use
/// (reqwest is built without one of its own: its default, aws-lc, is 2 MB
/// more in each binary; see Cargo.toml). Every client is made here.
pub fn client_builder() -> reqwest::ClientBuilder {
    if rustls::crypto::CryptoProvider::get_default().is_none() {
        // Err: another thread installed it meanwhile, and only ring is linked.
        let _ = rustls::crypto::ring::default_provider().install_default();
    }
    reqwest::Client::builder()
}

/// [`client_builder`] for requests to `registry`. A registry on plain http
/// (loopback, or allowed insecure) needs no certificate authority, so none is
/// loaded: a machine without a CA bundle (a minimal container or chroot)
/// still reaches it. A redirect from it to https then fails as untrusted.
pub fn registry_client_builder(registry: &str) -> reqwest::ClientBuilder {
    let builder = client_builder();
    if registry.starts_with("http://") {
        builder.tls_certs_only(Vec::new())
    } else {
        builder
    }
}

/// Redirects within the same rule as the source: at most `max` hops, and never
/// to a URL [`check_source`] would refuse (https → http is a downgrade).
pub fn redirect_policy(max: usize, allow_insecure: bool) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= max {
            attempt.error(format!("more than {max} redirects"))
        } else if let Err(e) = check_source(attempt.url().as_str(), allow_insecure) {
            attempt.error(format!("refused a redirect: {e}"))
        } else {
            attempt.follow()
        }
    })
}

/// How to configure the registry, for the one log line when none was found.
pub const HOW_TO_CONFIGURE: &str = "set `registry` in the [update] section of config.toml \
     (or WAIAAS_UPDATE_REGISTRY, npm_config_registry, or a registry= line in ~/.npmrc)";

fn is_url(s: &str) -> bool {
    s.starts_with("http://") || s.starts_with("https://")
}

fn npmrc_registry(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|line| {
        let (key, value) = line.split_once('=')?;
        (key.trim() == "registry")
            .then(|| value.trim().trim_matches('"').to_string())
            .filter(|v| is_url(v))
    })
}

/// How long `npm config get registry` may take before it is given up on.
const NPM_TIMEOUT: Duration = Duration::from_secs(10);

fn ask_npm() -> Option<String> {
    use std::io::Read;
    let mut child = std::process::Command::new("npm")
        .args(["config", "get", "registry"])
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .ok()?;
    // A hung npm must not hold the version check forever.
    let deadline = std::time::Instant::now() + NPM_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if std::time::Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(20));
            }
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
        }
    };
    let mut out = String::new();
    child.stdout.take()?.read_to_string(&mut out).ok()?;
    let url = out.trim().to_string();
    (status.success() && is_url(&url)).then_some(url)
}

/// `base` + `path`, with exactly one slash between them.
pub fn join(base: &str, path: &str) -> String {
    format!(
        "{}/{}",
        base.trim_end_matches('/'),
        path.trim_start_matches('/')
    )
}

/// A package name as a registry path segment (`@scope/name` → `@scope%2fname`).
pub fn escape_name(name: &str) -> String {
    name.replace('/', "%2f")
}

/// A reqwest error with its causes ("… : connection refused"), without URLs
/// (which may carry credentials; the caller names what was fetched).
pub fn describe(error: &reqwest::Error) -> String {
    use std::error::Error as _;
    if error.is_timeout() {
        return "timed out".to_string();
    }
    let mut text = String::new();
    let mut next: Option<&dyn std::error::Error> = error.source();
    text.push_str(&strip_url(error));
    while let Some(cause) = next {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        next = cause.source();
    }
    text
}

fn strip_url(error: &reqwest::Error) -> String {
    let text = error.to_string();
    match text.find(" for url (") {
        Some(at) => text[..at].to_string(),
        None => text,
    }
}

/// Why a version check found nothing usable.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error("registry request failed: {}", describe(.0))]
    Request(reqwest::Error),
    #[error("registry answered HTTP {0}")]
    Status(u16),
    #[error("registry answer is larger than {CHECK_BODY_CAP} bytes")]
    TooLarge,
    #[error("registry answer is not a JSON object of dist-tags: {0}")]
    BadJson(String),
    #[error("registry has no dist-tag `{0}` for {CLI_PACKAGE}")]
    NoSuchTag(String),
    #[error("dist-tag `{tag}` names `{value}`, which is not a semver version")]
    NotSemver { tag: String, value: String },
    #[error("dist-tag `latest` names the prerelease {0}; ignored on the latest channel")]
    PrereleaseOnLatest(Version),
}

/// The version `dist-tags.<channel>` of [`CLI_PACKAGE`] names, fetched with the
/// limits of SPEC §4: 5 s in all, 1 MiB body, and a User-Agent that carries
/// only our version.
pub async fn latest_version(
    registry: &str,
    channel: &str,
    allow_insecure: bool,
) -> Result<Version, CheckError> {
    let client = registry_client_builder(registry)
        .timeout(CHECK_TIMEOUT)
        // A registry mirror may redirect once or twice; more is a loop or a trap.
        .redirect(redirect_policy(3, allow_insecure))
        .user_agent(format!("waiaas/{}", crate::version::VERSION))
        .build()
        .map_err(CheckError::Request)?;
    let url = join(
        registry,
        &format!("-/package/{}/dist-tags", escape_name(CLI_PACKAGE)),
    );
    let mut response = client.get(url).send().await.map_err(CheckError::Request)?;
    if !response.status().is_success() {
        return Err(CheckError::Status(response.status().as_u16()));
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(CheckError::Request)? {
        if body.len() + chunk.len() > CHECK_BODY_CAP {
            return Err(CheckError::TooLarge);
        }
        body.extend_from_slice(&chunk);
    }
    pick_tag(&body, channel)
}

/// The channel's version out of a dist-tags body.
pub fn pick_tag(body: &[u8], channel: &str) -> Result<Version, CheckError> {
    let tags: serde_json::Map<String, serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| CheckError::BadJson(e.to_string()))?;
    pick_tag_from(&tags, channel)
}

/// The channel's version out of parsed dist-tags (a packument's or the
/// dist-tags endpoint's), by the rule of [`pick_tag`].
pub fn pick_tag_from(
    tags: &serde_json::Map<String, serde_json::Value>,
    channel: &str,
) -> Result<Version, CheckError> {
    let value = tags
        .get(channel)
        .ok_or_else(|| CheckError::NoSuchTag(channel.to_string()))?;
    let text = value.as_str().unwrap_or_default();
    let version = Version::parse(text).map_err(|_| CheckError::NotSemver {
        tag: channel.to_string(),
        value: value.to_string(),
    })?;
    if !crate::version::allowed_on_channel(&version, channel) {
        return Err(CheckError::PrereleaseOnLatest(version));
    }
    Ok(version)
}

/// Largest packument the launcher reads (a package with many versions runs to
/// a few MiB; anything far beyond that is not a registry answer).
pub const PACKUMENT_BODY_CAP: u64 = 32 << 20;

/// The `Accept` header for packuments: npm's abbreviated metadata (smaller; it
/// keeps `dist-tags` and every version's `dist`), else the full document.
pub const PACKUMENT_ACCEPT: &str =
    "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*";

/// The `Accept` header for the full packument, the only form with `time`
/// (publish times) and each version's `deprecated`.
pub const FULL_PACKUMENT_ACCEPT: &str = "application/json";

/// Where a package's packument is: `<registry>/@scope%2fname`.
pub fn packument_url(registry: &str, name: &str) -> String {
    join(registry, &escape_name(name))
}

/// A packument, the registry's document about one package: only what the
/// launcher reads. Version entries stay raw JSON until one is asked for, so a
/// malformed old version cannot hide the one that is wanted.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct Packument {
    pub name: String,
    #[serde(rename = "dist-tags", default)]
    pub dist_tags: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub versions: serde_json::Map<String, serde_json::Value>,
    /// The full packument's `time`: `{"<version>": "<RFC 3339>", "created": …}`.
    /// Raw, so that a malformed one costs only the publish times.
    #[serde(default)]
    pub time: serde_json::Value,
}

/// One release a full packument lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub version: Version,
    /// `time[<version>]`, in milliseconds since the Unix epoch; `None` when
    /// missing or not a timestamp as npm writes them (`2026-01-02T03:04:05.678Z`).
    pub published_unix_ms: Option<i64>,
    /// `versions[<version>].deprecated` (`npm deprecate`): the message, made
    /// safe to print (control characters replaced, at most
    /// [`DEPRECATION_MESSAGE_CAP`] characters). A deprecation that is not a
    /// string still counts, with its JSON as the message: it is an unsigned
    /// signal that can only hold an automatic upgrade back, so doubt holds back.
    pub deprecated: Option<String>,
}

/// Longest deprecation message kept, in characters.
pub const DEPRECATION_MESSAGE_CAP: usize = 300;

/// `versions[V].dist` of a packument: where the tarball is and its hash.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize)]
pub struct Dist {
    /// An absolute URL, used as given (a registry names its own host).
    pub tarball: String,
    /// Subresource Integrity: `sha512-<base64>` (possibly several, space-separated).
    #[serde(default)]
    pub integrity: Option<String>,
    /// The legacy SHA-1 (hex); never trusted on its own.
    #[serde(default)]
    pub shasum: Option<String>,
}

/// Why a packument could not answer.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PackumentError {
    #[error("not a packument (a JSON object with `name` and `versions`): {0}")]
    BadJson(String),
    #[error("the registry answered with the packument of {found}, not {expected}")]
    WrongName { expected: String, found: String },
    #[error("{package} has no version {version} on the registry")]
    NoSuchVersion { package: String, version: String },
    #[error("{package}@{version} has no usable `dist` in its packument: {reason}")]
    BadDist {
        package: String,
        version: String,
        reason: String,
    },
}

impl Packument {
    /// Parses a packument body and checks that it is about `expected_name`.
    pub fn parse(body: &[u8], expected_name: &str) -> Result<Self, PackumentError> {
        let packument: Packument =
            serde_json::from_slice(body).map_err(|e| PackumentError::BadJson(e.to_string()))?;
        if packument.name != expected_name {
            return Err(PackumentError::WrongName {
                expected: expected_name.to_string(),
                found: packument.name,
            });
        }
        Ok(packument)
    }

    /// Whether `versions` has an entry for `version` (e.g. `1.9.0`).
    pub fn has_version(&self, version: &str) -> bool {
        self.versions.contains_key(version)
    }

    /// Every version listed that is semver, with its publish time and
    /// deprecation, oldest version first. An entry that is not semver is
    /// skipped; a malformed time or entry costs only that field.
    pub fn releases(&self) -> Vec<Published> {
        let mut releases: Vec<Published> = self
            .versions
            .iter()
            .filter_map(|(key, entry)| {
                let version = Version::parse(key).ok()?;
                Some(Published {
                    published_unix_ms: self.published_unix_ms(key),
                    deprecated: entry.get("deprecated").and_then(deprecation),
                    version,
                })
            })
            .collect();
        releases.sort_by(|a, b| a.version.cmp(&b.version));
        releases
    }

    fn published_unix_ms(&self, version: &str) -> Option<i64> {
        let text = self.time.get(version)?.as_str()?;
        let at = crate::time::UtcTime::parse_rfc3339(text)?;
        i64::try_from(at.unix_ms()).ok()
    }

    /// `versions[version].dist`, with an absolute http(s) tarball URL.
    pub fn dist(&self, version: &str) -> Result<Dist, PackumentError> {
        let entry = self
            .versions
            .get(version)
            .ok_or_else(|| PackumentError::NoSuchVersion {
                package: self.name.clone(),
                version: version.to_string(),
            })?;
        let bad = |reason: String| PackumentError::BadDist {
            package: self.name.clone(),
            version: version.to_string(),
            reason,
        };
        let dist = entry
            .get("dist")
            .ok_or_else(|| bad("`dist` is missing".to_string()))?;
        let dist: Dist = serde_json::from_value(dist.clone()).map_err(|e| bad(e.to_string()))?;
        if !is_url(&dist.tarball) {
            return Err(bad(format!(
                "dist.tarball `{}` is not an http(s) URL",
                dist.tarball
            )));
        }
        Ok(dist)
    }
}

/// A `deprecated` value as a message; `None` for not deprecated (absent,
/// `null`, `false`, or the empty string `npm deprecate <pkg> ""` leaves).
fn deprecation(value: &serde_json::Value) -> Option<String> {
    let raw = match value {
        serde_json::Value::Null | serde_json::Value::Bool(false) => return None,
        serde_json::Value::String(text) if text.trim().is_empty() => return None,
        serde_json::Value::String(text) => text.trim().to_string(),
        other => other.to_string(),
    };
    // The registry's words reach terminals and logs: no escape sequences.
    Some(
        raw.chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .take(DEPRECATION_MESSAGE_CAP)
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn release_sources_are_https_or_loopback_http() {
        for ok in [
            "https://registry.example/",
            "http://127.0.0.1:4873/",
            "http://127.9.9.9/",
            "http://localhost:4873",
            "http://[::1]:4873/",
        ] {
            assert_eq!(check_source(ok, false), Ok(()), "{ok}");
        }
        for bad in [
            "http://10.0.0.1/",
            "http://mirror.example/",
            "http://[::2]/",
        ] {
            assert!(
                matches!(check_source(bad, false), Err(InsecureSource::PlainHttp(_))),
                "{bad}"
            );
            assert_eq!(check_source(bad, true), Ok(()), "{bad} allowed explicitly");
        }
        assert!(matches!(
            check_source("ftp://x/", true),
            Err(InsecureSource::NotHttp(_))
        ));
        // Credentials never reach a message.
        let e = check_source("http://user:secret@mirror.example:8080/path", false).unwrap_err();
        assert!(!e.to_string().contains("secret"), "{e}");
        assert!(e.to_string().contains("mirror.example:8080"), "{e}");
    }

    #[test]
    fn tags_are_picked_and_validated() {
        let body = br#"{"latest":"1.9.0","rc":"2.0.0-rc.1","bad":"1.x","num":7}"#;
        assert_eq!(pick_tag(body, "latest").unwrap().to_string(), "1.9.0");
        assert_eq!(pick_tag(body, "rc").unwrap().to_string(), "2.0.0-rc.1");
        assert!(matches!(
            pick_tag(body, "bad"),
            Err(CheckError::NotSemver { .. })
        ));
        assert!(matches!(
            pick_tag(body, "num"),
            Err(CheckError::NotSemver { .. })
        ));
        assert!(matches!(
            pick_tag(body, "next"),
            Err(CheckError::NoSuchTag(_))
        ));
        assert!(matches!(
            pick_tag(b"<html>", "latest"),
            Err(CheckError::BadJson(_))
        ));
        assert!(matches!(
            pick_tag(b"[1]", "latest"),
            Err(CheckError::BadJson(_))
        ));
    }

    #[test]
    fn a_prerelease_under_latest_is_ignored() {
        let body = br#"{"latest":"2.0.0-rc.1"}"#;
        assert!(matches!(
            pick_tag(body, "latest"),
            Err(CheckError::PrereleaseOnLatest(_))
        ));
    }

    #[test]
    fn urls_are_joined_and_names_escaped() {
        assert_eq!(join("http://127.0.0.1:1/", "/a"), "http://127.0.0.1:1/a");
        assert_eq!(
            join("http://127.0.0.1:1/npm", "a"),
            "http://127.0.0.1:1/npm/a"
        );
        assert_eq!(escape_name("@waiaas/cli"), "@waiaas%2fcli");
    }

    #[test]
    fn configured_registry_wins() {
        assert_eq!(
            resolve(Some("http://127.0.0.1:4873")),
            Some(("http://127.0.0.1:4873".to_string(), Source::Config))
        );
    }

    #[test]
    fn npmrc_registry_line_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let rc = dir.path().join(".npmrc");
        std::fs::write(&rc, "fund=false\nregistry = http://127.0.0.1:4873/\n").unwrap();
        assert_eq!(
            npmrc_registry(&rc).as_deref(),
            Some("http://127.0.0.1:4873/")
        );
        std::fs::write(&rc, "registry=not-a-url\n").unwrap();
        assert_eq!(npmrc_registry(&rc), None);
    }

    #[test]
    fn publish_times_and_deprecations_are_read_one_version_at_a_time() {
        let body = br#"{"name":"@waiaas/cli","dist-tags":{"latest":"1.9.0"},
            "time":{"created":"2026-01-01T00:00:00.000Z","1.8.0":"2026-01-02T03:04:05.678Z",
                    "1.9.0":"2026-01-03T00:00:00Z","1.9.1":"yesterday","2.0.0":42,
                    "1.7.0":"2026-13-01T00:00:00.000Z"},
            "versions":{"1.9.0":{"deprecated":"broken migration\u001b[31m, use 1.9.2"},
                        "1.8.0":{"deprecated":""},
                        "1.9.1":{"deprecated":true},
                        "2.0.0":"not an object",
                        "1.7.0":{"deprecated":null},
                        "v-next":{"deprecated":"x"},
                        "1.6.0":{"deprecated":{"why":"?"}}}}"#;
        let p = Packument::parse(body, "@waiaas/cli").unwrap();
        let got: Vec<(String, Option<i64>, Option<String>)> = p
            .releases()
            .into_iter()
            .map(|r| (r.version.to_string(), r.published_unix_ms, r.deprecated))
            .collect();
        let day = 86_400_000;
        let jan1 = 1_767_225_600_000;
        assert_eq!(
            got,
            [
                ("1.6.0".into(), None, Some(r#"{"why":"?"}"#.into())),
                ("1.7.0".into(), None, None),
                ("1.8.0".into(), Some(jan1 + day + 11_045_678), None),
                (
                    "1.9.0".into(),
                    Some(jan1 + 2 * day),
                    Some("broken migration [31m, use 1.9.2".into())
                ),
                ("1.9.1".into(), None, Some("true".into())),
                ("2.0.0".into(), None, None),
            ]
        );
        let long = format!(
            r#"{{"name":"@waiaas/cli","versions":{{"1.0.0":{{"deprecated":"{}"}}}}}}"#,
            "x".repeat(10_000)
        );
        let p = Packument::parse(long.as_bytes(), "@waiaas/cli").unwrap();
        let message = p.releases()[0].deprecated.clone().unwrap();
        assert_eq!(message.chars().count(), DEPRECATION_MESSAGE_CAP);
        // `time` of the wrong shape, or none (the abbreviated form): no times, all versions.
        for time in [r#","time":"soon""#, r#","time":[1,2]"#, ""] {
            let body = format!(r#"{{"name":"@waiaas/cli","versions":{{"1.0.0":{{}}}}{time}}}"#);
            let p = Packument::parse(body.as_bytes(), "@waiaas/cli").unwrap();
            let releases = p.releases();
            assert_eq!(releases.len(), 1, "{time}");
            assert_eq!(releases[0].published_unix_ms, None, "{time}");
        }
        let tags = p.dist_tags.clone();
        assert!(matches!(
            pick_tag_from(&tags, "latest"),
            Err(CheckError::NoSuchTag(_))
        ));
    }

    #[test]
    fn packuments_are_parsed_and_dists_checked() {
        let body = br#"{"name":"@waiaas/cli-linux-x64","dist-tags":{"latest":"1.9.0"},
            "versions":{"1.9.0":{"dist":{"tarball":"http://127.0.0.1:1/t.tgz","integrity":"sha512-AA=="}},
                        "1.8.0":{"dist":{"tarball":"file:///etc/passwd"}},
                        "1.7.0":{"nodist":true}}}"#;
        let p = Packument::parse(body, "@waiaas/cli-linux-x64").unwrap();
        assert!(p.has_version("1.9.0") && !p.has_version("2.0.0"));
        let dist = p.dist("1.9.0").unwrap();
        assert_eq!(dist.tarball, "http://127.0.0.1:1/t.tgz");
        assert_eq!(dist.integrity.as_deref(), Some("sha512-AA=="));
        assert!(matches!(
            p.dist("1.8.0"),
            Err(PackumentError::BadDist { .. })
        ));
        assert!(matches!(
            p.dist("1.7.0"),
            Err(PackumentError::BadDist { .. })
        ));
        assert!(matches!(
            p.dist("2.0.0"),
            Err(PackumentError::NoSuchVersion { .. })
        ));
        assert!(matches!(
            Packument::parse(body, "@waiaas/cli"),
            Err(PackumentError::WrongName { .. })
        ));
        assert!(matches!(
            Packument::parse(b"<html>", "@waiaas/cli"),
            Err(PackumentError::BadJson(_))
        ));
        assert_eq!(
            packument_url("http://127.0.0.1:1/", "@waiaas/cli-linux-x64"),
            "http://127.0.0.1:1/@waiaas%2fcli-linux-x64"
        );
    }
}

//! Test fixtures of the package module's unit tests: a throwaway release
//! key, a signed release of fake programs (as an npm-installed folder or a
//! package tarball), and a registry on 127.0.0.1 serving answers by path.

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;
use std::time::Duration;

use semver::Version;
use waiaas_shared::config::Config;
use waiaas_shared::layout::DataDir;
use waiaas_shared::release::{MANIFEST, ReleaseManifest, SIGNATURE, platform_package};

use super::keys::KeyRing;

/// The platform the fixtures' releases are for: this machine's.
pub(super) fn target() -> &'static str {
    waiaas_shared::release::this_target().expect("tests run on a shipped target")
}

/// A data dir and a throwaway release key its config trusts.
pub(super) struct Site {
    pub(super) tmp: tempfile::TempDir,
    pub(super) key: PathBuf,
    pub(super) config: Config,
    pub(super) ring: KeyRing,
    pub(super) dir: DataDir,
    pub(super) version: Version,
}

pub(super) fn site() -> Site {
    let tmp = tempfile::tempdir().unwrap();
    let (key, public) = waiaas_packaging::generate_keypair(&tmp.path().join("key")).unwrap();
    let mut config = Config::default();
    config.update.trusted_keys = vec![public];
    let ring = KeyRing::from_config(&config).unwrap();
    let dir = DataDir::new(tmp.path().join("data"));
    Site {
        tmp,
        key,
        config,
        ring,
        dir,
        version: Version::parse("1.9.0").unwrap(),
    }
}

/// A release's files: package path and content.
type Files = Vec<(&'static str, &'static [u8])>;

/// The files of a release of 1.9.0, and its signed `release.json` with its
/// signature.
pub(super) fn release(site: &Site) -> (Files, Vec<u8>, String) {
    let files: Files = vec![
        ("bin/waiaas-launcher", b"launcher"),
        ("bin/waiaas-daemon", b"daemon"),
        ("LICENSE", b"MIT"),
    ];
    let listed: BTreeMap<String, String> = files
        .iter()
        .map(|(path, bytes)| {
            use sha2::Digest as _;
            (path.to_string(), hex::encode(sha2::Sha256::digest(bytes)))
        })
        .collect();
    let manifest = serde_json::to_vec(&ReleaseManifest {
        name: platform_package(target()),
        version: site.version.to_string(),
        target: target().into(),
        schema_version: 16,
        min_compatible_schema_version: 10,
        files: listed,
        rollout_seconds: None,
    })
    .unwrap();
    let signature = waiaas_packaging::sign(&site.key, &manifest).unwrap();
    (files, manifest, signature)
}

/// The release as npm installs a platform package: a folder.
pub(super) fn package_folder(site: &Site) -> PathBuf {
    let folder = site.tmp.path().join("package");
    fs::create_dir_all(folder.join("bin")).unwrap();
    let (files, manifest, signature) = release(site);
    for (path, bytes) in files {
        fs::write(folder.join(path), bytes).unwrap();
    }
    fs::write(folder.join(MANIFEST), &manifest).unwrap();
    fs::write(folder.join(SIGNATURE), signature).unwrap();
    folder
}

/// The release as the registry serves it: a package tarball's bytes.
pub(super) fn package_tarball(site: &Site) -> Vec<u8> {
    use waiaas_packaging::Entry;
    let (files, manifest, signature) = release(site);
    let mut entries: Vec<Entry> = files
        .iter()
        .map(|(path, bytes)| Entry::file(format!("package/{path}"), *bytes, 0o755))
        .collect();
    entries.push(Entry::file(format!("package/{MANIFEST}"), manifest, 0o644));
    entries.push(Entry::file(
        format!("package/{SIGNATURE}"),
        signature,
        0o644,
    ));
    waiaas_packaging::tarball_bytes(&entries).unwrap()
}

/// An answer that ends when the connection closes (no length declared
/// unless `headers` declares one).
pub(super) fn answer(status: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!("HTTP/1.1 {status}\r\nconnection: close\r\n{headers}\r\n").into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// `content-length` of `body`, as a header line.
pub(super) fn length(body: &[u8]) -> String {
    format!("content-length: {}\r\n", body.len())
}

/// A 200 answer declaring its length.
pub(super) fn ok(body: &[u8]) -> Vec<u8> {
    answer("200 OK", &length(body), body)
}

/// A registry on 127.0.0.1: each request (one a connection) gets the answer
/// of its path as the client sent it (e.g. `/@waiaas%2fcli`; `*` for any),
/// or 404; the requests it read come back on the channel (lowercased). Its
/// base URL.
/// `routes` is given that URL (a packument names its tarball's).
pub(super) fn serve(
    routes: impl FnOnce(&str) -> Vec<(String, Vec<u8>)>,
) -> (String, std::sync::mpsc::Receiver<String>) {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let routes = routes(&url);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut conn) = conn else { return };
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            let (mut request, mut buf) = (Vec::new(), [0u8; 1024]);
            while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                match conn.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let request = String::from_utf8_lossy(&request).to_lowercase();
            let path = request.split(' ').nth(1).unwrap_or_default().to_string();
            let answer = routes
                .iter()
                .find(|(route, _)| route == "*" || route.to_lowercase() == path)
                .map(|(_, answer)| answer.clone())
                .unwrap_or_else(|| answer("404 Not Found", &length(b"no"), b"no"));
            let _ = conn.write_all(&answer);
            let _ = tx.send(request);
        }
    });
    (url, rx)
}

/// A registry serving `answer` at every path it is asked for first.
pub(super) fn serve_one(answer: Vec<u8>) -> (String, std::sync::mpsc::Receiver<String>) {
    serve(|_| vec![("*".into(), answer)])
}

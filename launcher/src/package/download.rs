//! The registry over HTTP: packuments, the `dist.integrity` they promise, and
//! the tarball streamed to disk within its size cap, hashed on the way and
//! reported byte by byte through [`Downloaded`].

use std::path::Path;

use base64::Engine as _;
use sha2::{Digest, Sha512};
use waiaas_shared::registry::{self, Packument};
use waiaas_shared::version::VERSION;

use super::error::{PackageError, io_error};
use super::limits::Limits;

/// How far a download has got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Downloaded {
    pub done: u64,
    /// The size the registry declared, if it did.
    pub total: Option<u64>,
}

pub(super) fn http_client(
    registry: &str,
    limits: &Limits,
    allow_insecure: bool,
) -> Result<reqwest::Client, PackageError> {
    registry::registry_client_builder(registry)
        .connect_timeout(limits.connect_timeout)
        .read_timeout(limits.read_timeout)
        // A registry or its CDN may redirect once or twice; more is a loop,
        // and one to plain http:// a downgrade.
        .redirect(registry::redirect_policy(5, allow_insecure))
        .user_agent(format!("waiaas/{VERSION}"))
        .build()
        .map_err(|e| {
            PackageError::Internal(format!("cannot set up HTTP: {}", registry::describe(&e)))
        })
}

/// A URL fit for messages: without user name or password.
fn shown_url(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(mut parsed) => {
            let _ = parsed.set_username("");
            let _ = parsed.set_password(None);
            parsed.to_string()
        }
        Err(_) => url.to_string(),
    }
}

/// Which form of a packument to ask for.
#[derive(Debug, Clone, Copy)]
pub(super) enum Form {
    /// npm's abbreviated metadata: enough to download.
    Abbreviated,
    /// The whole document: also publish times and deprecations.
    Full,
}

pub(super) async fn get_packument(
    client: &reqwest::Client,
    registry_url: &str,
    name: &str,
    form: Form,
    limits: &Limits,
) -> Result<Packument, PackageError> {
    let accept = match form {
        Form::Abbreviated => registry::PACKUMENT_ACCEPT,
        Form::Full => registry::FULL_PACKUMENT_ACCEPT,
    };
    let url = registry::packument_url(registry_url, name);
    let what = format!("the packument of {name}");
    let request_failed = |e: reqwest::Error| PackageError::Request {
        what: what.clone(),
        reason: registry::describe(&e),
    };
    let mut response = client
        .get(&url)
        .header(reqwest::header::ACCEPT, accept)
        .timeout(limits.packument_timeout)
        .send()
        .await
        .map_err(request_failed)?;
    if !response.status().is_success() {
        return Err(PackageError::Status {
            what,
            url: shown_url(&url),
            status: response.status().as_u16(),
        });
    }
    let too_large = || PackageError::PackumentTooLarge {
        what: what.clone(),
        cap: limits.packument_bytes,
    };
    if response
        .content_length()
        .is_some_and(|len| len > limits.packument_bytes)
    {
        return Err(too_large());
    }
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(request_failed)? {
        if (body.len() + chunk.len()) as u64 > limits.packument_bytes {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Packument::parse(&body, name).map_err(|source| PackageError::Packument {
        what: what.clone(),
        source,
    })
}

/// The sha512 digests an SRI string allows (any one may match).
pub(super) fn sri_sha512(
    integrity: Option<&str>,
    package: &str,
    version: &str,
) -> Result<Vec<Vec<u8>>, PackageError> {
    let Some(integrity) = integrity.filter(|i| !i.trim().is_empty()) else {
        return Err(PackageError::Integrity(format!(
            "the registry gives no dist.integrity for {package}@{version}; a package without a sha512 integrity is not accepted"
        )));
    };
    let hashes: Vec<Vec<u8>> = integrity
        .split_whitespace()
        .filter_map(|token| token.strip_prefix("sha512-"))
        .filter_map(|b64| {
            let b64 = b64.split('?').next().unwrap_or_default();
            base64::engine::general_purpose::STANDARD.decode(b64).ok()
        })
        .filter(|hash| hash.len() == 64)
        .collect();
    if hashes.is_empty() {
        return Err(PackageError::Integrity(format!(
            "dist.integrity of {package}@{version} has no sha512 hash (`{integrity}`); only sha512 is accepted"
        )));
    }
    Ok(hashes)
}

/// Streams `url` into the new file `dest`, within the size cap, and returns
/// the sha512 of what was written. `on_bytes` hears of the start (0 bytes)
/// and of every chunk written; it is called as often as chunks arrive, so a
/// caller that draws or sends it throttles.
pub(super) async fn download_to(
    client: &reqwest::Client,
    url: &str,
    dest: &Path,
    limits: &Limits,
    on_bytes: &mut (dyn FnMut(Downloaded) + Send),
) -> Result<Vec<u8>, PackageError> {
    use tokio::io::AsyncWriteExt as _;
    let shown = shown_url(url);
    let failed = |reason: String| PackageError::Download {
        url: shown.clone(),
        reason,
    };
    let mut response = client
        .get(url)
        .timeout(limits.download_timeout)
        .send()
        .await
        .map_err(|e| failed(registry::describe(&e)))?;
    if !response.status().is_success() {
        return Err(failed(format!("HTTP {}", response.status().as_u16())));
    }
    let cap = limits.tarball_bytes;
    let declared = response.content_length();
    if declared.is_some_and(|len| len > cap) {
        return Err(PackageError::TooLarge { cap });
    }
    let mut file = tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(dest)
        .await
        .map_err(io_error("create", dest))?;
    on_bytes(Downloaded {
        done: 0,
        total: declared,
    });
    let mut hasher = Sha512::new();
    let mut done: u64 = 0;
    while let Some(chunk) = response
        .chunk()
        .await
        .map_err(|e| failed(registry::describe(&e)))?
    {
        done += chunk.len() as u64;
        if done > cap {
            return Err(PackageError::TooLarge { cap });
        }
        hasher.update(&chunk);
        file.write_all(&chunk)
            .await
            .map_err(io_error("write", dest))?;
        on_bytes(Downloaded {
            done,
            total: declared,
        });
    }
    if let Some(len) = declared.filter(|len| *len != done) {
        return Err(failed(format!(
            "the download ended after {done} of {len} bytes"
        )));
    }
    file.flush().await.map_err(io_error("write", dest))?;
    Ok(hasher.finalize().to_vec())
}

#[cfg(test)]
mod tests {
    use super::super::fixture::{answer, length, serve_one};
    use super::*;

    async fn download(
        answer: Vec<u8>,
        limits: &Limits,
    ) -> (Result<Vec<u8>, PackageError>, Vec<Downloaded>, Vec<u8>) {
        let (url, _) = serve_one(answer);
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("package.tgz");
        let client = http_client(&url, limits, false).unwrap();
        let mut heard = Vec::new();
        let url = format!("{url}/package.tgz");
        let result = download_to(&client, &url, &dest, limits, &mut |d| heard.push(d)).await;
        let written = std::fs::read(&dest).unwrap_or_default();
        (result, heard, written)
    }

    #[tokio::test]
    async fn a_download_is_written_hashed_and_reported() {
        let body = vec![7u8; 3000];
        for headers in [length(&body), String::new()] {
            let declared = (!headers.is_empty()).then_some(3000);
            let (result, heard, written) =
                download(answer("200 OK", &headers, &body), &Limits::default()).await;
            assert_eq!(result.unwrap(), Sha512::digest(&body).to_vec());
            assert_eq!(written, body);
            let first = Downloaded {
                done: 0,
                total: declared,
            };
            let last = Downloaded {
                done: 3000,
                total: declared,
            };
            assert_eq!((heard.first(), heard.last()), (Some(&first), Some(&last)));
        }
    }

    /// The size cap holds whether the registry declares the size or not;
    /// exactly the cap is within it.
    #[tokio::test]
    async fn a_download_over_its_cap_is_refused_declared_or_not() {
        let limits = Limits {
            tarball_bytes: 1000,
            ..Limits::default()
        };
        for size in [1000, 1001] {
            let body = vec![1u8; size];
            for headers in [length(&body), String::new()] {
                let (result, _, _) = download(answer("200 OK", &headers, &body), &limits).await;
                match (size, result) {
                    (1000, Ok(_)) | (1001, Err(PackageError::TooLarge { cap: 1000 })) => {}
                    (_, other) => panic!("{size} bytes, `{headers}`: {other:?}"),
                }
            }
        }
    }

    #[tokio::test]
    async fn a_failed_download_names_the_url_without_its_credentials() {
        let (url, _) = serve_one(answer("404 Not Found", &length(b"no"), b"no"));
        let url = url.replace("http://", "http://user:secret@") + "/package.tgz";
        let tmp = tempfile::tempdir().unwrap();
        let limits = Limits::default();
        let client = http_client(&url, &limits, false).unwrap();
        let dest = tmp.path().join("package.tgz");
        let error = download_to(&client, &url, &dest, &limits, &mut |_| {})
            .await
            .unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, PackageError::Download { reason, .. } if reason == "HTTP 404"),
            "{message}"
        );
        assert!(
            message.contains("package.tgz") && !message.contains("secret"),
            "{message}"
        );
        assert!(!dest.exists(), "nothing written");
    }

    const PACKUMENT: &[u8] =
        br#"{"name":"@waiaas/cli","dist-tags":{"latest":"1.0.0"},"versions":{}}"#;

    #[tokio::test]
    async fn a_packument_is_asked_for_in_its_form_and_read_within_its_cap() {
        let exact = Limits {
            packument_bytes: PACKUMENT.len() as u64,
            ..Limits::default()
        };
        for (form, accept) in [
            (Form::Full, registry::FULL_PACKUMENT_ACCEPT),
            (Form::Abbreviated, registry::PACKUMENT_ACCEPT),
        ] {
            let (url, request) = serve_one(answer("200 OK", &length(PACKUMENT), PACKUMENT));
            let client = http_client(&url, &exact, false).unwrap();
            let packument = get_packument(&client, &url, "@waiaas/cli", form, &exact)
                .await
                .unwrap();
            assert_eq!(packument.name, "@waiaas/cli");
            let request = request
                .recv_timeout(std::time::Duration::from_secs(10))
                .unwrap();
            let accept = format!("accept: {}\r\n", accept.to_lowercase());
            assert!(request.contains(&accept), "{request}");
            let agent = format!("user-agent: waiaas/{VERSION}\r\n");
            assert!(request.contains(&agent), "{request}");
        }
        let short = Limits {
            packument_bytes: PACKUMENT.len() as u64 - 1,
            ..Limits::default()
        };
        for headers in [length(PACKUMENT), String::new()] {
            let (url, _) = serve_one(answer("200 OK", &headers, PACKUMENT));
            let client = http_client(&url, &short, false).unwrap();
            let result = get_packument(&client, &url, "@waiaas/cli", Form::Full, &short).await;
            assert!(
                matches!(result, Err(PackageError::PackumentTooLarge { cap, .. }) if cap == short.packument_bytes),
                "`{headers}`: {result:?}"
            );
        }
        let (url, _) = serve_one(answer("404 Not Found", &length(b"no"), b"no"));
        let client = http_client(&url, &short, false).unwrap();
        let result = get_packument(&client, &url, "@waiaas/cli", Form::Full, &short).await;
        assert!(
            matches!(result, Err(PackageError::Status { status: 404, .. })),
            "{result:?}"
        );
    }

    #[test]
    fn sri_sha512_is_read() {
        let digest = Sha512::digest(b"abc");
        let b64 = base64::engine::general_purpose::STANDARD.encode(digest);
        let sri = format!("sha1-AAAA sha512-{b64}?opt");
        let hashes = sri_sha512(Some(&sri), "p", "1.0.0").unwrap();
        assert_eq!(hashes, [digest.to_vec()]);
        for bad in [None, Some(""), Some("sha1-AAAA"), Some("sha512-%%%")] {
            let msg = sri_sha512(bad, "p", "1.0.0").unwrap_err().to_string();
            assert!(msg.starts_with("integrity check failed"), "{msg}");
        }
    }
}

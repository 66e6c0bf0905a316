//! Trusted release keys: the built-in ones and `[update] trusted_keys`, and
//! the [`KeyRing`] that checks `release.json.minisig` against them.

use minisign_verify::{PublicKey, Signature};
use waiaas_shared::config::Config;
use waiaas_shared::release::{MANIFEST, SIGNATURE};

use super::error::PackageError;

/// The release keys this launcher was built with: comma-separated minisign
/// public keys (two at a time while a key is rotated), set by the release
/// build from a repository variable. Nothing is written in the repository.
const BUILT_IN_KEYS: Option<&str> = option_env!("WAIAAS_RELEASE_PUBKEYS");

/// The trusted minisign public keys: the built-in release keys, then
/// `[update] trusted_keys`.
pub fn trusted_keys(config: &Config) -> Vec<String> {
    let mut keys = built_in_keys();
    keys.extend(configured_keys(config));
    keys
}

/// The built-in release keys.
pub fn built_in_keys() -> Vec<String> {
    BUILT_IN_KEYS.map(parse_key_list).unwrap_or_default()
}

/// A comma-separated list of keys, as `WAIAAS_RELEASE_PUBKEYS` holds them.
pub fn parse_key_list(list: &str) -> Vec<String> {
    list.split(',')
        .map(str::trim)
        .filter(|key| !key.is_empty())
        .map(str::to_string)
        .collect()
}

fn configured_keys(config: &Config) -> Vec<String> {
    config
        .update
        .trusted_keys
        .iter()
        .map(|key| key.trim())
        .filter(|key| !key.is_empty())
        .map(str::to_string)
        .collect()
}

/// The decoded trusted keys, and how many came from where (for messages).
#[derive(Debug, Clone)]
pub(super) struct KeyRing {
    keys: Vec<PublicKey>,
    built_in: usize,
    configured: usize,
}

impl KeyRing {
    pub(super) fn from_config(config: &Config) -> Result<Self, PackageError> {
        let keys = trusted_keys(config);
        let (built_in, configured) = keys.split_at(built_in_keys().len());
        Self::new(built_in, configured)
    }

    fn new(built_in: &[String], configured: &[String]) -> Result<Self, PackageError> {
        if built_in.is_empty() && configured.is_empty() {
            return Err(PackageError::NoTrustedKey);
        }
        let mut keys = Vec::new();
        for (i, text) in built_in.iter().enumerate() {
            keys.push(
                decode_key(text).map_err(|reason| PackageError::BadTrustedKey {
                    which: format!("#{} built into this launcher", i + 1),
                    reason,
                })?,
            );
        }
        for (i, text) in configured.iter().enumerate() {
            keys.push(
                decode_key(text).map_err(|reason| PackageError::BadTrustedKey {
                    which: format!("#{} of [update] trusted_keys (`{text}`)", i + 1),
                    reason,
                })?,
            );
        }
        Ok(Self {
            keys,
            built_in: built_in.len(),
            configured: configured.len(),
        })
    }

    /// Whether `signature` is a good signature of `manifest` by one of the keys.
    pub(super) fn verify(
        &self,
        manifest: &[u8],
        signature: Option<&[u8]>,
    ) -> Result<(), PackageError> {
        let Some(signature) = signature else {
            return Err(PackageError::Signature(format!(
                "the package has no {SIGNATURE}: {MANIFEST} is unsigned"
            )));
        };
        let signature = std::str::from_utf8(signature)
            .ok()
            .and_then(|text| Signature::decode(text).ok())
            .ok_or_else(|| {
                PackageError::Signature(format!("{SIGNATURE} is not a minisign signature"))
            })?;
        let mut key_matched = false;
        let mut legacy = false;
        for key in &self.keys {
            match key.verify(manifest, &signature, false) {
                Ok(()) => return Ok(()),
                Err(minisign_verify::Error::UnexpectedKeyId) => {}
                Err(minisign_verify::Error::UnexpectedAlgorithm) => legacy = true,
                Err(_) => key_matched = true,
            }
        }
        let trusted = format!(
            "trusted: {} built-in, {} configured",
            self.built_in, self.configured
        );
        Err(PackageError::Signature(if legacy {
            format!(
                "{SIGNATURE} is a legacy (non-prehashed) minisign signature, which is not accepted ({trusted})"
            )
        } else if key_matched {
            format!(
                "{MANIFEST} does not match its signature by a trusted key: it was altered after signing ({trusted})"
            )
        } else {
            format!("{MANIFEST} is not signed by a trusted key ({trusted})")
        }))
    }
}

/// A minisign public key: its base64 line (`RW…`), or a whole `.pub` file.
fn decode_key(text: &str) -> Result<PublicKey, String> {
    let text = text.trim();
    let key = if text.contains('\n') {
        PublicKey::decode(text)
    } else {
        PublicKey::from_base64(text)
    };
    key.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    /// A syntactically valid minisign public key (its bytes need not be a
    /// usable curve point to be parsed).
    fn key(id: u8) -> String {
        let mut raw = b"Ed".to_vec();
        raw.extend([id; 8]);
        raw.extend([id.wrapping_add(1); 32]);
        base64::engine::general_purpose::STANDARD.encode(raw)
    }

    #[test]
    fn a_list_of_two_release_keys_is_parsed() {
        let (a, b) = (key(1), key(2));
        let list = format!(" {a},{b} ,");
        let keys = parse_key_list(&list);
        assert_eq!(keys, [a.clone(), b.clone()]);
        let ring = KeyRing::new(&keys, &[]).unwrap();
        assert_eq!((ring.keys.len(), ring.built_in, ring.configured), (2, 2, 0));
        assert!(parse_key_list("").is_empty());
        assert!(parse_key_list(" , ").is_empty());

        // A whole `.pub` file is a key too.
        let file = format!("untrusted comment: minisign public key\n{a}\n");
        assert!(decode_key(&file).is_ok());
        assert!(decode_key("untrusted comment: x\nRWnot").is_err());
    }

    #[test]
    fn configured_keys_are_added_and_bad_ones_named() {
        let mut config = Config::default();
        config.update.trusted_keys = vec![key(3), "  ".into(), key(4)];
        let keys = trusted_keys(&config);
        assert!(keys.ends_with(&[key(3), key(4)]), "{keys:?}");

        let err = KeyRing::new(&[key(1)], &[key(2), "RWnotakey".into()]).unwrap_err();
        let msg = err.to_string();
        assert!(
            msg.contains("#2 of [update] trusted_keys") && msg.contains("RWnotakey"),
            "{msg}"
        );
    }

    #[test]
    fn no_trusted_key_says_how_to_configure_one() {
        let msg = KeyRing::new(&[], &[]).unwrap_err().to_string();
        assert!(
            msg.contains("no trusted release key") && msg.contains("trusted_keys"),
            "{msg}"
        );
    }

    #[test]
    fn a_missing_or_garbled_signature_is_named() {
        let ring = KeyRing::new(&[key(1)], &[key(2)]).unwrap();
        let msg = ring.verify(b"{}", None).unwrap_err().to_string();
        assert!(msg.starts_with("signature check failed") && msg.contains("unsigned"));
        let msg = ring.verify(b"{}", Some(b"junk")).unwrap_err().to_string();
        assert!(msg.contains("not a minisign signature"), "{msg}");
    }
}

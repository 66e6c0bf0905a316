//! Release keys and `release.json.minisig`.
//!
//! Key files are minisign's own format: `minisign -G -W` (or
//! [`generate_keypair`], with the `minisign` crate) makes one, read here by
//! [`ReleaseKey::load`]; `minisign -Vm release.json -P <public key>` checks a
//! signature made here.
//!
//! The signature itself is computed here, in minisign's prehashed format
//! (`ED`: Ed25519 over the BLAKE2b-512 of the data, then Ed25519 over the
//! signature and the trusted comment), with plain deterministic RFC 8032
//! Ed25519 — what the reference `minisign` tool gets from libsodium. The
//! `minisign` crate's own `sign` mixes fresh random bytes into every
//! signature, which would make two packs of the same tree differ. Every
//! signature is verified with `minisign::verify` before it is returned.

use std::fs;
use std::io::{Cursor, Write};
use std::ops::Range;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use blake2::{Blake2b256, Blake2b512, Digest as _};
use ed25519_dalek::{Signer as _, SigningKey};
use minisign::{PublicKey, SignatureBox};

use crate::PackError;

/// File name of the secret key [`generate_keypair`] writes.
pub const SECRET_KEY_FILE: &str = "waiaas-release.key";
/// File name of the public key (minisign's two-line `.pub` format) beside it.
pub const PUBLIC_KEY_FILE: &str = "waiaas-release.pub";

const UNTRUSTED_COMMENT: &str = "signature from the waiaas release key";

// Layout of minisign's decoded secret key: sig_alg(2) kdf_alg(2) chk_alg(2)
// kdf_salt(32) opslimit(8) memlimit(8) keynum(8) sk(64: seed 32 + public 32) chk(32).
const SIG_ALG: Range<usize> = 0..2;
const KDF_ALG: Range<usize> = 2..4;
const CHK_ALG: Range<usize> = 4..6;
const KEYNUM: Range<usize> = 54..62;
const SEED: Range<usize> = 62..94;
const PUBLIC: Range<usize> = 94..126;
const CHK: Range<usize> = 126..158;
const SECRET_KEY_BYTES: usize = 158;

/// An unencrypted minisign secret key, loaded and checked.
pub(crate) struct ReleaseKey {
    keynum: [u8; 8],
    signing: SigningKey,
    public: PublicKey,
}

impl ReleaseKey {
    /// Reads the key file itself rather than through the `minisign` crate:
    /// `minisign -G -W` (the reference tool, 0.11) stores an unencrypted key
    /// with an all-zero checksum, which it never checks, while the crate
    /// insists on the BLAKE2b-256 of sig_alg‖keynum‖sk and calls the key
    /// corrupted. Both forms are accepted; what proves the key intact is that
    /// its public half is the one its seed derives.
    pub(crate) fn load(path: &Path) -> Result<ReleaseKey, PackError> {
        let key_error = |detail: String| PackError::Key {
            path: path.to_path_buf(),
            detail,
        };
        let not_a_key = |why: &str| {
            key_error(format!(
                "not an unencrypted minisign secret key ({why}); waiaas-pack cannot prompt for a \
                 password: use a key made with `minisign -G -W` or `waiaas-pack keygen`"
            ))
        };
        let text = fs::read_to_string(path).map_err(|e| {
            key_error(format!(
                "cannot read it ({e}); pass an unencrypted minisign secret key file (waiaas-pack keygen makes one)"
            ))
        })?;
        // Line 1 is the untrusted comment, line 2 the key.
        let line = text
            .lines()
            .nth(1)
            .ok_or_else(|| not_a_key("no key line"))?;
        let bytes = BASE64
            .decode(line.trim())
            .map_err(|_| not_a_key("its key line is not base64"))?;
        if bytes.len() != SECRET_KEY_BYTES {
            return Err(not_a_key(&format!(
                "{} bytes where a key has {SECRET_KEY_BYTES}",
                bytes.len()
            )));
        }
        if &bytes[SIG_ALG] != b"Ed" || &bytes[CHK_ALG] != b"B2" {
            return Err(not_a_key("not an Ed25519 key with a BLAKE2b checksum"));
        }
        if bytes[KDF_ALG] != [0, 0] {
            return Err(not_a_key("it is encrypted with a password"));
        }
        let checksum = Blake2b256::new()
            .chain_update(&bytes[SIG_ALG])
            .chain_update(&bytes[KEYNUM])
            .chain_update(&bytes[SEED.start..PUBLIC.end])
            .finalize();
        let stored = &bytes[CHK];
        if stored != &checksum[..] && stored.iter().any(|b| *b != 0) {
            return Err(key_error("corrupted: its checksum does not match".into()));
        }
        let seed: [u8; 32] = bytes[SEED].try_into().expect("32 bytes");
        let signing = SigningKey::from_bytes(&seed);
        if signing.verifying_key().to_bytes()[..] != bytes[PUBLIC] {
            return Err(key_error(
                "corrupted: its public half does not match its secret half".into(),
            ));
        }
        let public =
            PublicKey::from_bytes(&[&bytes[SIG_ALG], &bytes[KEYNUM], &bytes[PUBLIC]].concat())
                .map_err(|e| key_error(e.to_string()))?;
        Ok(ReleaseKey {
            keynum: bytes[KEYNUM].try_into().expect("8 bytes"),
            signing,
            public,
        })
    }

    /// The public key in minisign's one-line base64 form (`RW…`), as
    /// `[update] trusted_keys` and `minisign -P` take it.
    pub(crate) fn public_base64(&self) -> String {
        self.public.to_base64()
    }

    /// A minisign signature file (text) of `data` with `trusted_comment`.
    pub(crate) fn sign(&self, data: &[u8], trusted_comment: &str) -> Result<String, PackError> {
        if trusted_comment.contains(['\n', '\r']) {
            return Err(PackError::Signature(
                "a trusted comment must be a single line".into(),
            ));
        }
        let prehash = Blake2b512::digest(data);
        let sig = self.signing.sign(&prehash).to_bytes();
        let mut sig_line = Vec::with_capacity(74);
        sig_line.extend_from_slice(b"ED");
        sig_line.extend_from_slice(&self.keynum);
        sig_line.extend_from_slice(&sig);
        let mut global_input = sig.to_vec();
        global_input.extend_from_slice(trusted_comment.as_bytes());
        let global = self.signing.sign(&global_input).to_bytes();
        let text = format!(
            "untrusted comment: {UNTRUSTED_COMMENT}\n{}\ntrusted comment: {trusted_comment}\n{}\n",
            BASE64.encode(&sig_line),
            BASE64.encode(global)
        );
        // Never hand out a signature minisign itself would not accept.
        let parsed = SignatureBox::from_string(&text)
            .map_err(|e| PackError::Signature(format!("made an unreadable signature: {e}")))?;
        minisign::verify(&self.public, &parsed, Cursor::new(data), true, false, false).map_err(
            |e| PackError::Signature(format!("made a signature that does not verify: {e}")),
        )?;
        Ok(text)
    }
}

/// Signs `bytes` with the unencrypted minisign secret key in
/// `secret_key_file` and returns the signature file's text (what goes into a
/// `.minisig`), with a generic trusted comment.
///
/// Test and tooling helper: [`crate::pack`] signs `release.json` itself.
/// Tests use this to sign manifests that do not match their package.
pub fn sign(secret_key_file: &Path, bytes: &[u8]) -> Result<String, PackError> {
    sign_with_comment(secret_key_file, bytes, "file:release.json")
}

/// [`sign`] with a chosen trusted comment (one line; it is covered by the
/// signature and shown by `minisign -V`).
pub fn sign_with_comment(
    secret_key_file: &Path,
    bytes: &[u8],
    trusted_comment: &str,
) -> Result<String, PackError> {
    ReleaseKey::load(secret_key_file)?.sign(bytes, trusted_comment)
}

/// The public key (one-line base64, `RW…`) of the secret key in `secret_key_file`.
pub fn public_key(secret_key_file: &Path) -> Result<String, PackError> {
    Ok(ReleaseKey::load(secret_key_file)?.public_base64())
}

/// Generates a fresh, **unencrypted** minisign key pair in `dir` (created if
/// missing): the secret key as [`SECRET_KEY_FILE`] (mode 0600) and the public
/// key as [`PUBLIC_KEY_FILE`]. Returns the secret key's path and the public
/// key in one-line base64. Refuses to overwrite an existing key.
///
/// For tests' throwaway keys and for setting up CI (`waiaas-pack keygen`);
/// store a real release key's secret half only in the CI secret store.
pub fn generate_keypair(dir: &Path) -> Result<(PathBuf, String), PackError> {
    fs::create_dir_all(dir).map_err(PackError::io(dir))?;
    let secret_path = dir.join(SECRET_KEY_FILE);
    let public_path = dir.join(PUBLIC_KEY_FILE);
    for path in [&secret_path, &public_path] {
        if path.symlink_metadata().is_ok() {
            return Err(PackError::KeyExists { path: path.clone() });
        }
    }
    let pair = minisign::KeyPair::generate_unencrypted_keypair()
        .map_err(|e| PackError::Signature(format!("cannot generate a key pair: {e}")))?;
    let secret_text = pair
        .sk
        .to_box(Some("waiaas release secret key (unencrypted)"))
        .map_err(|e| PackError::Signature(e.to_string()))?
        .into_string();
    let public_text = pair
        .pk
        .to_box()
        .map_err(|e| PackError::Signature(e.to_string()))?
        .into_string();
    write_new(&secret_path, secret_text.as_bytes(), 0o600)?;
    write_new(&public_path, public_text.as_bytes(), 0o644)?;
    Ok((secret_path, pair.pk.to_base64()))
}

fn write_new(path: &Path, bytes: &[u8], mode: u32) -> Result<(), PackError> {
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(path)
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::AlreadyExists => PackError::KeyExists {
                path: path.to_path_buf(),
            },
            _ => PackError::Io {
                path: path.to_path_buf(),
                source: e,
            },
        })?;
    file.write_all(bytes)
        .and_then(|()| file.sync_all())
        .map_err(PackError::io(path))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signatures_are_deterministic_and_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = generate_keypair(dir.path()).unwrap();
        let a = sign(&key, b"hello").unwrap();
        assert_eq!(a, sign(&key, b"hello").unwrap());
        assert_ne!(a, sign(&key, b"hellO").unwrap());
        let pk = minisign_verify::PublicKey::from_base64(&public).unwrap();
        let sig = minisign_verify::Signature::decode(&a).unwrap();
        pk.verify(b"hello", &sig, false).unwrap();
        assert!(pk.verify(b"hellO", &sig, false).is_err());
        assert_eq!(public_key(&key).unwrap(), public);
    }

    #[test]
    fn keygen_refuses_to_overwrite_and_keeps_the_secret_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = generate_keypair(dir.path()).unwrap();
        assert_eq!(
            fs::metadata(&key).unwrap().permissions().mode() & 0o777,
            0o600
        );
        assert!(matches!(
            generate_keypair(dir.path()),
            Err(PackError::KeyExists { .. })
        ));
    }

    #[test]
    fn multi_line_comments_and_bad_keys_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (key, _) = generate_keypair(dir.path()).unwrap();
        assert!(sign_with_comment(&key, b"x", "a\nb").is_err());
        let bad = dir.path().join("bad.key");
        fs::write(&bad, "untrusted comment: x\nnot base64\n").unwrap();
        let err = sign(&bad, b"x").unwrap_err().to_string();
        assert!(err.contains("unencrypted minisign secret key"), "{err}");
    }

    /// Rewrites the key line of the secret key file `key` with `edit` applied
    /// to its decoded bytes, as `name` beside it.
    fn edited(key: &Path, name: &str, edit: impl FnOnce(&mut Vec<u8>)) -> PathBuf {
        let text = fs::read_to_string(key).unwrap();
        let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
        let mut bytes = BASE64.decode(&lines[1]).unwrap();
        edit(&mut bytes);
        lines[1] = BASE64.encode(&bytes);
        let path = key.with_file_name(name);
        fs::write(&path, lines.join("\n") + "\n").unwrap();
        path
    }

    #[test]
    fn the_reference_tools_zero_checksum_is_accepted_and_damage_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (key, public) = generate_keypair(dir.path()).unwrap();
        // What `minisign -G -W` writes: the same key with a zero checksum.
        let zero = edited(&key, "zero.key", |b| b[CHK].fill(0));
        assert_eq!(public_key(&zero).unwrap(), public);
        assert_eq!(sign(&zero, b"x").unwrap(), sign(&key, b"x").unwrap());

        type Damage = fn(&mut Vec<u8>);
        let cases: [(&str, Damage, &str); 4] = [
            (
                "sum.key",
                |b| b[CHK.start] ^= 1,
                "its checksum does not match",
            ),
            (
                "half.key",
                |b| {
                    b[PUBLIC.start] ^= 1;
                    b[CHK].fill(0);
                },
                "its public half does not match its secret half",
            ),
            (
                "enc.key",
                |b| b[KDF_ALG].copy_from_slice(b"Sc"),
                "it is encrypted with a password",
            ),
            (
                "short.key",
                |b| b.truncate(100),
                "100 bytes where a key has 158",
            ),
        ];
        for (name, edit, expected) in cases {
            let err = public_key(&edited(&key, name, edit))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expected), "{name}: {err}");
        }
    }
}

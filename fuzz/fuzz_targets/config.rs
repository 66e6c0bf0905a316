//! `config.toml`: `Config::parse` of the input as the file's text, and of
//! `WAIAAS_*` overrides. Input: the file's text, then optionally a NUL byte
//! and environment lines `NAME=value`. A config that parses must hold values
//! inside the documented ranges.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use waiaas_shared::config::Config;

fuzz_target!(|data: &[u8]| {
    let (file, env) = match data.iter().position(|&b| b == 0) {
        Some(at) => (&data[..at], &data[at + 1..]),
        None => (data, &[][..]),
    };
    let Ok(text) = std::str::from_utf8(file) else {
        return;
    };
    let env: Vec<(String, String)> = String::from_utf8_lossy(env)
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(name, value)| (name.to_string(), value.to_string()))
        .collect();
    let path = Path::new("/fuzz/config.toml");
    let config = match Config::parse(Some(text), path, env) {
        Ok(config) => config,
        Err(e) => {
            // Every refusal can be shown, and names where it came from.
            let _ = (e.to_string(), e.key());
            return;
        }
    };
    let (d, u) = (&config.daemon, &config.update);
    assert!(d.port >= 1);
    assert!((5..=300).contains(&d.shutdown_timeout));
    assert!((3_600..=604_800).contains(&d.update_check_interval));
    assert!(!d.hostname.trim().is_empty());
    assert!((1..=100).contains(&u.keep_backups));
    assert!((1..=600).contains(&u.health_timeout));
    assert!((1..=86_400).contains(&u.migrate_timeout));
    if let Some(registry) = &u.registry {
        assert!(registry.starts_with("http://") || registry.starts_with("https://"));
    }
    assert!(
        u.channel
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_'))
    );
});

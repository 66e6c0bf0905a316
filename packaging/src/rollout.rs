//! `--rollout`: how long a staged rollout lasts, as a person writes it
//! (`48h`, `30m`, `2d`, `0s`), turned into the seconds `release.json` carries.

/// Parses a duration the way `config.toml` writes them
/// (`waiaas_shared::config::parse_duration`: `48h`, `1d12h`, `0s`) into seconds.
pub fn parse_rollout(text: &str) -> Result<u64, String> {
    waiaas_shared::config::parse_duration(text)
        .map(|d| d.as_secs())
        .ok_or_else(|| {
            format!(
                "--rollout {text:?}: not a duration; write whole numbers with units, largest \
                 first: 30m, 48h, 2d, 1d12h, 0s"
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_read_and_garbage_named() {
        for (text, seconds) in [("48h", 172_800), ("30m", 1800), ("2d", 172_800), ("0s", 0)] {
            assert_eq!(parse_rollout(text), Ok(seconds), "{text}");
        }
        for bad in [
            "",
            "48",
            "h",
            "-1h",
            "1.5h",
            "48 h",
            "48H",
            "1h1h",
            "1w",
            "99999999999999999999d",
        ] {
            let message = parse_rollout(bad).unwrap_err();
            assert!(message.contains("--rollout"), "{bad}: {message}");
        }
    }
}

//! `--rollout`: how long a staged rollout lasts, as a person writes it
//! (`48h`, `30m`, `2d`, `0s`), turned into the seconds `release.json` carries.

/// Parses `<n><unit>` with unit `s`, `m`, `h` or `d` into seconds.
pub fn parse_rollout(text: &str) -> Result<u64, String> {
    let bad = |why: &str| {
        format!("--rollout {text:?}: {why}; write a whole number and a unit: 30m, 48h, 2d, 0s")
    };
    let split = text
        .find(|c: char| !c.is_ascii_digit())
        .ok_or_else(|| bad("the unit is missing"))?;
    let (digits, unit) = text.split_at(split);
    let count: u64 = digits.parse().map_err(|_| bad("no number"))?;
    let scale = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        _ => return Err(bad("the unit is not s, m, h or d")),
    };
    count.checked_mul(scale).ok_or_else(|| bad("too long"))
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
            "1w",
            "99999999999999999999d",
        ] {
            let message = parse_rollout(bad).unwrap_err();
            assert!(message.contains("--rollout"), "{bad}: {message}");
        }
    }
}

//! How BuildKit 0.13 writes a few image-config values, where kiln's plain
//! reading of the Dockerfile differed (issue 17): empty `CMD []` /
//! `ENTRYPOINT []` lists, port ranges in `EXPOSE`, and `WORKDIR` paths.

/// `CMD []` and `ENTRYPOINT []` leave the key out of the config (Go's
/// `omitempty`), as if never set; `[""]` is kept.
pub fn argv_value(argv: Vec<String>) -> Option<Vec<String>> {
    if argv.is_empty() {
        None
    } else {
        Some(argv)
    }
}

/// One `EXPOSE` word to the config's keys: `PORT[-END][/PROTO]`, a range
/// being one key per port (`8000-8002` → `8000/tcp`, `8001/tcp`,
/// `8002/tcp`), the protocol lower-cased, tcp by default.
pub fn expose_keys(word: &str) -> Result<Vec<String>, String> {
    let invalid =
        || format!("invalid port {word:?} in EXPOSE (expected PORT[-END][/tcp|udp|sctp])");
    let (ports, proto) = match word.split_once('/') {
        Some((p, proto)) => (p, proto.to_ascii_lowercase()),
        None => (word, "tcp".to_string()),
    };
    if !matches!(proto.as_str(), "tcp" | "udp" | "sctp") {
        return Err(invalid());
    }
    let (start, end) = match ports.split_once('-') {
        Some((a, b)) => (a, b),
        None => (ports, ports),
    };
    let (Ok(start), Ok(end)) = (start.parse::<u16>(), end.parse::<u16>()) else {
        return Err(invalid());
    };
    if end < start {
        return Err(format!(
            "invalid port range {ports:?} in EXPOSE: the end is below the start"
        ));
    }
    Ok((start..=end).map(|p| format!("{p}/{proto}")).collect())
}

/// The config's `WorkingDir` for `WORKDIR requested` (already expanded)
/// whose cleaned absolute form is `cleaned`: an absolute path is kept as
/// written, a trailing slash included; a relative one is joined to the
/// previous directory and cleaned (Go's `path.Join`).
pub fn working_dir_value(requested: &str, cleaned: &str) -> String {
    if requested.starts_with('/') {
        requested.to_string()
    } else {
        cleaned.to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_lists_are_left_out_but_an_empty_word_is_kept() {
        assert_eq!(argv_value(vec![]), None);
        assert_eq!(argv_value(vec![String::new()]), Some(vec![String::new()]));
    }

    #[test]
    fn port_ranges_are_one_key_per_port() {
        assert_eq!(
            expose_keys("8000-8002").unwrap(),
            ["8000/tcp", "8001/tcp", "8002/tcp"]
        );
        assert_eq!(
            expose_keys("7000-7001/UDP").unwrap(),
            ["7000/udp", "7001/udp"]
        );
        assert_eq!(expose_keys("80").unwrap(), ["80/tcp"]);
        assert!(expose_keys("9-8")
            .unwrap_err()
            .contains("end is below the start"));
        for bad in ["", "x", "80/icmp", "1-", "70000", "1-2-3"] {
            assert!(expose_keys(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn an_absolute_workdir_is_kept_as_written() {
        assert_eq!(working_dir_value("/app/", "/app"), "/app/");
        assert_eq!(working_dir_value("sub/", "/x/y/sub"), "/x/y/sub");
    }
}

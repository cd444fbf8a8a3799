//! .dockerignore text and a path: read, compile, match. Must never panic.
#![no_main]

use kiln_parser::dockerignore::{parse, PatternMatcher};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let (patterns, path) = text.split_once('\0').unwrap_or((text, "a/b/c.txt"));
    if let Ok(m) = PatternMatcher::new(&parse(patterns)) {
        let _ = m.matches(path);
        let _ = m.has_exclusions();
    }
});

//! `.dockerignore` cases taken from moby patternmatcher's behaviour.

use kiln_parser::dockerignore::{parse, PatternMatcher};

fn matcher(text: &str) -> PatternMatcher {
    PatternMatcher::new(&parse(text)).unwrap()
}

#[test]
fn typical_file() {
    let m = matcher("# deps\nnode_modules\n.git\n*.log\n!important.log\n**/__pycache__\n/build/\ndocs/**/*.md\n");
    for excluded in [
        "node_modules",
        "node_modules/a/b.js",
        ".git/HEAD",
        "debug.log",
        "a/b/__pycache__/x.pyc",
        "__pycache__",
        "build/out.bin",
        "docs/a/b/c.md",
        "docs/c.md",
    ] {
        assert!(m.matches(excluded), "{excluded} should be excluded");
    }
    for kept in [
        "important.log",
        "src/debug.log",
        "src/main.rs",
        "docs/a/b/c.txt",
        "Dockerfile",
        "buildx",
    ] {
        assert!(!m.matches(kept), "{kept} should be kept");
    }
    assert!(m.has_exclusions());
}

#[test]
fn exception_inside_excluded_directory() {
    // moby: an exception re-includes a path even though its parent matched.
    let m = matcher("docs\n!docs/README.md\n");
    assert!(m.matches("docs/other.md"));
    assert!(!m.matches("docs/README.md"));
}

#[test]
fn star_does_not_cross_directories_but_double_star_does() {
    let m = matcher("*/temp*\n");
    assert!(m.matches("somedir/temporary.txt"));
    assert!(m.matches("somedir/temp"));
    assert!(!m.matches("somedir/sub/temp"), "one level only");
    let m = matcher("**/temp*\n");
    assert!(m.matches("a/b/c/temp.txt"));
    let m = matcher("a/**/b\n");
    assert!(m.matches("a/b"));
    assert!(m.matches("a/x/y/b"));
}

#[test]
fn escapes_and_classes() {
    let m = matcher("f\\*o\n[a-c]x\n[^a]y\n");
    assert!(m.matches("f*o"));
    assert!(!m.matches("fxo"));
    assert!(m.matches("bx"));
    assert!(!m.matches("dx"));
    assert!(m.matches("zy"));
    assert!(!m.matches("ay"));
}

#[test]
fn no_exclusions_flag() {
    assert!(!matcher("a\nb\n").has_exclusions());
    assert!(!matcher("").matches("anything"));
}

#[test]
fn invalid_pattern_is_an_error() {
    assert!(PatternMatcher::new(&parse("[z-a]\n")).is_err());
    assert!(PatternMatcher::new(&["!".to_string()]).is_err());
}

//! Conformance against BuildKit's own test vectors, read from
//! `../shared/conformance/` (not copied into the repository).

use std::collections::BTreeMap;
use std::fs;
use std::path::PathBuf;

use kiln_parser::shell::Lexer;

/// BuildKit's vectors, when present (under CI they must be).
fn conformance_dir() -> Option<PathBuf> {
    kiln_testkit::require_conformance().map(|d| d.join("buildkit"))
}

#[test]
fn parser_testfiles_match_result_byte_for_byte() {
    let Some(dir) = conformance_dir().map(|d| d.join("parser/testfiles")) else {
        return;
    };
    let mut entries: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("conformance data missing at {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("Dockerfile").is_file())
        .collect();
    entries.sort();
    assert_eq!(entries.len(), 33, "expected the 33 BuildKit parser cases");
    let mut failures = Vec::new();
    for case in &entries {
        let name = case.file_name().unwrap().to_string_lossy().into_owned();
        let src = fs::read_to_string(case.join("Dockerfile")).unwrap();
        let want = fs::read_to_string(case.join("result")).unwrap();
        match kiln_parser::parse(&src) {
            Ok(df) => {
                let got = df.to_sexpr();
                if got != want {
                    failures.push(format!("{name}:\n--- want\n{want}--- got\n{got}"));
                }
            }
            Err(e) => failures.push(format!(
                "{name}: parse error: {}",
                e.render(&src, "Dockerfile")
            )),
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} cases differ:\n{}",
        failures.len(),
        entries.len(),
        failures.join("\n")
    );
}

#[test]
fn env_var_test_vectors() {
    let Some(path) = conformance_dir().map(|d| d.join("shell/envVarTest")) else {
        return;
    };
    let text = fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("conformance data missing at {}: {e}", path.display()));
    let env: BTreeMap<String, String> = [
        ("PWD", "/home"),
        ("SHELL", "bash"),
        ("KOREAN", "한국어"),
        ("NULL", ""),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v.to_string()))
    .collect();
    let lex = Lexer::new('\\');
    let mut failures = Vec::new();
    let mut checked = 0;
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parts: Vec<&str> = line.splitn(3, '|').collect();
        assert_eq!(parts.len(), 3, "line {}: {line}", n + 1);
        let (platform, input, expected) = (parts[0].trim(), parts[1].trim(), parts[2].trim());
        if platform != "A" && platform != "U" {
            continue;
        }
        checked += 1;
        let got = lex.process_word(input, &env);
        let ok = match (&got, expected) {
            (Err(_), "error") => true,
            (Ok(w), exp) => w == exp,
            _ => false,
        };
        if !ok {
            failures.push(format!(
                "line {}: {input:?} -> {got:?}, want {expected:?}",
                n + 1
            ));
        }
    }
    assert!(checked > 200, "only {checked} cases checked");
    assert!(
        failures.is_empty(),
        "{} failures:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

//! Deterministic "fuzz-like" robustness test, run on stable in every
//! `cargo test`: mutated conformance Dockerfiles and hand-made giant
//! inputs (up to 1 MiB) through every public entry point. The assertion
//! is that nothing panics or overflows the stack; running time is bounded
//! by the iteration count, never asserted. (The coverage-guided targets
//! live in `parser/fuzz/`, run with `cargo +nightly fuzz run <target>`.)

use std::fs;
use std::path::PathBuf;

use kiln_parser::dockerignore::{parse as read_ignore, PatternMatcher};
use kiln_parser::shell::Lexer;

/// xorshift64*: small, seedable, reproducible.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            0
        } else {
            (self.next() % n as u64) as usize
        }
    }
}

const TOKENS: &[&str] = &[
    "\\\n",
    "`\n",
    "\\",
    "`",
    "<<EOF",
    "<<-'EOF'",
    "3<<X",
    "EOF\n",
    "${",
    "${a:-",
    "${a#",
    "${a/",
    "}",
    "$",
    "\"",
    "'",
    "[",
    "]",
    "[\"a\", \"b\"]",
    "--",
    "--mount=",
    "type=cache,",
    "target=/x",
    "=",
    "#",
    "# escape=`\n",
    "# syntax=x\n",
    "\r\n",
    "\n",
    "\t",
    " ",
    "ONBUILD ",
    "FROM a AS b\n",
    "RUN ",
    "COPY ",
    "ENV ",
    "ARG ",
    "HEALTHCHECK --interval=1s CMD ",
    "\u{feff}",
    "é",
    "한",
    "\u{0}",
    ",",
    "\"\"",
    "**/",
    "!",
];

fn seeds() -> Vec<String> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/buildkit/parser/testfiles"
    ));
    let mut out = vec![
        "FROM a\nRUN --mount=type=cache,target=/c,id=x,sharing=locked <<EOF\necho $HOME\nEOF\n".to_string(),
        "# escape=`\nFROM a\nCOPY --chown=1:1 <<-A <<B /d/\n\tx\n\tA\ny\nB\n".to_string(),
        "ARG X=1\nFROM a AS b\nHEALTHCHECK --retries=3 CMD [\"x\"]\nONBUILD RUN y\nSHELL [\"sh\"]\n".to_string(),
    ];
    if let Ok(rd) = fs::read_dir(&dir) {
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        for p in paths {
            if let Ok(s) = fs::read_to_string(p.join("Dockerfile")) {
                out.push(s);
            }
        }
    } else {
        eprintln!(
            "NOTE: conformance data not found at {}; mutating built-in seeds only",
            dir.display()
        );
    }
    out
}

fn char_boundary(s: &str, mut i: usize) -> usize {
    i = i.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    i
}

fn mutate(rng: &mut Rng, s: &str) -> String {
    let mut s = s.to_string();
    for _ in 0..1 + rng.below(8) {
        let at = char_boundary(&s, rng.below(s.len() + 1));
        match rng.below(5) {
            0 | 1 => s.insert_str(at, TOKENS[rng.below(TOKENS.len())]),
            2 => {
                let end = char_boundary(&s, at + rng.below(16));
                s.replace_range(at..end, "");
            }
            3 => {
                let end = char_boundary(&s, at + rng.below(32));
                let dup = s[at..end].to_string();
                s.insert_str(at, &dup);
            }
            _ => {
                let end = char_boundary(&s, at + 1 + rng.below(4));
                let with = TOKENS[rng.below(TOKENS.len())];
                s.replace_range(at..end, with);
            }
        }
    }
    s
}

/// Everything a caller can do with a Dockerfile text.
fn exercise(src: &str) {
    match kiln_parser::parse(src) {
        Ok(df) => {
            let _ = df.to_sexpr();
            let _ = df.to_json();
            match kiln_parser::parse_stages(&df) {
                Ok(_) => {}
                Err(e) => {
                    let _ = e.render(src, "Dockerfile");
                }
            }
        }
        Err(e) => {
            let _ = e.render(src, "Dockerfile");
        }
    }
}

fn expand_all(word: &str) {
    let env = vec![
        ("PWD".to_string(), "/home".to_string()),
        ("E".to_string(), String::new()),
        ("X".to_string(), "a.b c".to_string()),
    ];
    for esc in ['\\', '`'] {
        let l = Lexer::new(esc);
        let _ = l.process_word(word, &env);
        let _ = l.process_words(word, &env);
        let _ = l
            .clone()
            .raw_quotes(true)
            .raw_escapes(true)
            .skip_unset_env(true)
            .process_words(word, &env);
    }
}

#[test]
fn mutated_dockerfiles_never_panic() {
    let seeds = seeds();
    let mut rng = Rng(0x5eed_cafe_f00d_0001);
    let mut parsed_ok = 0;
    const ITERATIONS: usize = 4000;
    for _ in 0..ITERATIONS {
        let seed = &seeds[rng.below(seeds.len())];
        let src = mutate(&mut rng, seed);
        if kiln_parser::parse(&src).is_ok() {
            parsed_ok += 1;
        }
        exercise(&src);
        // Expand random slices of it, and use its lines as ignore patterns.
        let a = char_boundary(&src, rng.below(src.len() + 1));
        let b = char_boundary(&src, a + rng.below(200));
        expand_all(&src[a..b]);
        if let Ok(m) = PatternMatcher::new(&read_ignore(&src[a..b])) {
            let _ = m.matches("a/b/c.txt");
        }
    }
    // The mutations must leave many inputs valid, or we only test errors.
    assert!(
        parsed_ok > ITERATIONS / 10,
        "only {parsed_ok} of {ITERATIONS} mutated inputs parsed"
    );
}

const MIB: usize = 1 << 20;

#[test]
fn giant_inputs_never_panic() {
    let nested = "${a:-".repeat(100_000);
    expand_all(&nested);
    expand_all(&format!("{nested}x{}", "}".repeat(100_000)));
    expand_all(&"\\".repeat(MIB));
    expand_all(&"$".repeat(MIB));
    expand_all(&"'".repeat(MIB - 1));
    expand_all(&"<<".repeat(MIB / 2));

    let cases: Vec<String> = vec![
        format!("FROM a\nRUN {}\n", "\\".repeat(MIB)),
        format!("FROM a\nRUN <<{nested}\n"),
        format!("FROM a\n{}RUN end\n", "RUN a \\\n".repeat(100_000)),
        format!("FROM a\nRUN x{}\n", " \\\n\n#c\n".repeat(100_000)),
        format!("FROM a\n{}\n", "ONBUILD ".repeat(100_000)),
        format!("FROM a\nCMD {}\n", "[".repeat(MIB)),
        format!("FROM a\nENV {}\n", "k=v ".repeat(MIB / 4)),
        format!("FROM a\nCOPY {}a b\n", "--f=1 ".repeat(MIB / 6)),
        format!("FROM a\nRUN --mount={} x\n", "a,".repeat(MIB / 2)),
        format!("FROM a\nRUN <<EOF\n{}EOF\n", "line\n".repeat(MIB / 5)),
        format!("FROM a\nRUN {}\n", "<<A ".repeat(MIB / 8)),
        "\n".repeat(MIB),
        "#".repeat(MIB),
        "# syntax=x\n# syntax=y\nFROM a\n".to_string(),
    ];
    for src in &cases {
        assert!(src.len() <= MIB + 64 * 1024);
        exercise(src);
    }
    let ignore = format!("{}\n!{}\n", "**/".repeat(MIB / 8), "*".repeat(MIB / 4));
    if let Ok(m) = PatternMatcher::new(&read_ignore(&ignore)) {
        let _ = m.matches(&"a/".repeat(1000));
    }
}

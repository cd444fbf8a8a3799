//! Behaviour tests through the public API (one test binary).

mod directives;
mod dockerignore;
mod errors;
mod heredoc;
mod lines;
mod mounts;
mod stages;
mod utf8;

/// Parses and unwraps, showing the rendered error on failure.
pub fn parse_ok(src: &str) -> kiln_parser::Dockerfile {
    match kiln_parser::parse(src) {
        Ok(df) => df,
        Err(e) => panic!("unexpected parse error:\n{}", e.render(src, "Dockerfile")),
    }
}

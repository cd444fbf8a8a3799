//! kiln-parser: Dockerfile text to AST, held to BuildKit's behaviour.
//!
//! Pure: `&str` in, values out; no I/O, no processes. [`decode`] turns a
//! file's bytes into that `&str`, or an error naming the first byte that is
//! not UTF-8 by line and column.
//!
//! Two layers:
//! - [`parse`] gives the generic AST ([`Dockerfile`] of [`Node`]s), exactly
//!   what BuildKit's `parser.Parse` produces: directives, continuation
//!   lines, JSON vs shell form, flags collected whatever their name,
//!   heredocs. [`Dockerfile::to_sexpr`] prints it in the format of
//!   BuildKit's parser test files.
//! - [`parse_stages`] turns that AST into typed stages and instructions,
//!   validating flags per instruction as BuildKit's `instructions.Parse`
//!   does (unknown or duplicate flags are errors, `RUN --mount` specs
//!   become [`Mount`]s).
//!
//! Word expansion (variables, quotes) happens later, with [`shell::Lexer`];
//! `.dockerignore` handling lives in [`dockerignore`].
//!
//! # Where kiln differs from BuildKit, on purpose
//!
//! - [`parse`] rejects an unknown instruction (with a "did you mean"
//!   hint) and `ONBUILD ONBUILD`; BuildKit's parser keeps them and its
//!   `instructions` layer rejects them. The s-expression of every valid
//!   file is unchanged.
//! - A file that is not UTF-8 is refused by [`decode`] (line, column and
//!   byte named); BuildKit passes the bytes through to the instruction.
//! - A logical line that is only an escape character is skipped instead of
//!   becoming an empty node.
//! - Flags are scanned by character; BuildKit scans bytes, which splits
//!   UTF-8 sequences containing the bytes 0x85 or 0xA0.
//! - `${` nested more than 200 deep is an expansion error instead of
//!   unbounded recursion; huge inputs cannot overflow the stack.
//! - `parse_stages` rejects flags on `HEALTHCHECK NONE`, a missing `target`
//!   on bind/cache/tmpfs mounts, `from`/`source` on ssh mounts, `size` on
//!   non-tmpfs and `env` on non-secret mounts, instead of ignoring them.

#![forbid(unsafe_code)]

mod error;
mod instructions;
mod line_parsers;
mod mount;
mod parser;
mod quote;
mod text;

pub mod dockerignore;
pub mod shell;

use serde::Serialize;

pub use error::{ParseError, Warning};
pub use instructions::{
    parse_stages, Add, ArgDecl, Command, Copy, Healthcheck, Instruction, InstructionKind, KeyValue,
    NetworkMode, Run, Stage, Stages,
};
pub use mount::{parse_mount, parse_mount_with, Mount, MountError, Sharing};
pub use parser::{parse, MAX_LINE_BYTES};
pub use quote::go_quote;
pub use text::decode;

/// A position in the source: 1-based line and column (in characters) where
/// a node starts, and the line where it ends (continuations and heredoc
/// bodies included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Default)]
pub struct Span {
    pub line: usize,
    pub column: usize,
    pub end_line: usize,
}

/// Parser directives from the top of the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Directives {
    /// The escape character: `\` (default) or `` ` ``.
    pub escape: char,
    /// `# syntax=` value, as written.
    pub syntax: Option<String>,
    /// `# check=` value, as written.
    pub check: Option<String>,
}

impl Default for Directives {
    fn default() -> Self {
        Directives {
            escape: '\\',
            syntax: None,
            check: None,
        }
    }
}

/// A parsed Dockerfile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Dockerfile {
    pub directives: Directives,
    pub nodes: Vec<Node>,
    pub warnings: Vec<Warning>,
}

/// One instruction as BuildKit's parser sees it.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Node {
    /// The instruction keyword, lower case (`from`, `run`, ...).
    pub keyword: String,
    /// Flags (`--from=x`) as written, in order, whatever their name.
    pub flags: Vec<String>,
    /// Arguments; their shape depends on the instruction, see
    /// [`Dockerfile::to_sexpr`].
    pub args: Vec<String>,
    /// Whether the arguments came from the JSON (exec) form.
    pub json: bool,
    /// Heredoc bodies that followed the instruction, in order.
    pub heredocs: Vec<Heredoc>,
    /// `ONBUILD`'s instruction.
    pub inner: Option<Box<Node>>,
    /// The instruction text as written, continuation lines joined (escape
    /// character and newline removed, comment lines dropped).
    pub original: String,
    pub span: Span,
}

/// A heredoc body (`<<EOF ... EOF`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Heredoc {
    /// The delimiter word, quotes removed.
    pub name: String,
    /// The body exactly as written, line endings included; leading tabs are
    /// still there when `chomp` is set (see [`Heredoc::effective_content`]).
    pub content: String,
    /// False when the delimiter was quoted: the body is not expanded.
    pub expand: bool,
    /// `<<-`: leading tabs are stripped from body lines and the delimiter.
    pub chomp: bool,
    /// The file descriptor number before `<<` (`3<<EOF`), if any.
    pub fd: Option<u32>,
}

impl Heredoc {
    /// The content with leading tabs removed from every line when `chomp`
    /// is set (BuildKit's `ChompHeredocContent`), else the content.
    pub fn effective_content(&self) -> String {
        if !self.chomp {
            return self.content.clone();
        }
        let mut out = String::with_capacity(self.content.len());
        for line in self.content.split_inclusive('\n') {
            out.push_str(line.trim_start_matches('\t'));
        }
        out
    }
}

impl Node {
    fn dump(&self, out: &mut String) {
        out.push_str(&self.keyword);
        if !self.flags.is_empty() {
            out.push(' ');
            out.push_str(&quote::go_quote_slice(&self.flags));
        }
        if let Some(inner) = &self.inner {
            out.push_str(" (");
            inner.dump(out);
            out.push(')');
        }
        for a in &self.args {
            out.push(' ');
            out.push_str(&quote::go_quote(a));
        }
    }

    /// This node as one s-expression line (without parentheses' newline).
    pub fn to_sexpr(&self) -> String {
        let mut s = String::from("(");
        self.dump(&mut s);
        s.push(')');
        s
    }
}

impl Dockerfile {
    /// The AST in the s-expression format of BuildKit's parser test files
    /// (`testfiles/*/result`): one line per instruction, each ending in a
    /// newline. A line is the lower-case keyword; then, if there are
    /// flags, a space and Go's `%q` of the flag list (`["--from=x"]`);
    /// then a space and a Go-quoted string per argument, or `(inner)` for
    /// ONBUILD's instruction.
    pub fn to_sexpr(&self) -> String {
        let mut out = String::new();
        for n in &self.nodes {
            out.push_str(&n.to_sexpr());
            out.push('\n');
        }
        out
    }

    /// The AST as JSON. The structure is stable:
    ///
    /// ```json
    /// {
    ///   "directives": { "escape": "\\", "syntax": null, "check": null },
    ///   "nodes": [
    ///     {
    ///       "keyword": "run",                 // lower case
    ///       "flags": ["--mount=type=cache,target=/x"],
    ///       "args": ["echo hi"],
    ///       "json": false,                    // exec (JSON) form?
    ///       "heredocs": [ { "name": "EOF", "content": "...\n",
    ///                       "expand": true, "chomp": false, "fd": null } ],
    ///       "inner": null,                    // ONBUILD's node, same shape
    ///       "original": "RUN --mount=... echo hi",
    ///       "span": { "line": 3, "column": 1, "end_line": 3 }
    ///     }
    ///   ],
    ///   "warnings": [ { "message": "...", "span": { ... } } ]
    /// }
    /// ```
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::to_value(self).unwrap_or(serde_json::Value::Null)
    }
}

//! The typed layer: stages and instructions with their flags validated
//! (BuildKit's `instructions.Parse`).

use std::time::Duration;

use nom::branch::alt;
use nom::bytes::complete::tag;
use nom::character::complete::{char as nchar, digit0};
use nom::combinator::{opt, recognize};
use nom::multi::many1;
use nom::{IResult, Parser};
use serde::Serialize;

use crate::error::{suggest, ParseError};
use crate::mount::{parse_mount, Mount};
use crate::parser::parse_heredoc_word;
use crate::{Dockerfile, Heredoc, Node, Span};

/// All stages of a Dockerfile.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stages {
    /// `ARG`s before the first `FROM`.
    pub global_args: Vec<ArgDecl>,
    pub stages: Vec<Stage>,
}

/// A `FROM` and the instructions up to the next one.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Stage {
    /// `AS name`, lower-cased as BuildKit does.
    pub name: Option<String>,
    /// The image or stage reference, unexpanded.
    pub base: String,
    /// `--platform=`, unexpanded.
    pub platform: Option<String>,
    pub instructions: Vec<Instruction>,
    pub span: Span,
    pub original: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Instruction {
    pub kind: InstructionKind,
    pub span: Span,
    pub original: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub enum InstructionKind {
    Run(Run),
    Copy(Copy),
    Add(Add),
    Env(Vec<KeyValue>),
    Label(Vec<KeyValue>),
    Arg(Vec<ArgDecl>),
    Workdir(String),
    User(String),
    Expose(Vec<String>),
    Volume(Vec<String>),
    Cmd(Command),
    Entrypoint(Command),
    Shell(Vec<String>),
    StopSignal(String),
    Healthcheck(Healthcheck),
    /// The trigger instruction's text (`ONBUILD` removed).
    Onbuild(String),
    Maintainer(String),
}

/// A key and its raw value: quotes and escapes still in place, variables
/// unexpanded (expand with [`crate::shell::Lexer::process_word`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct KeyValue {
    pub key: String,
    pub value: String,
}

/// `ARG name[=default]`, raw.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ArgDecl {
    pub name: String,
    pub default: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Command {
    /// JSON (exec) form.
    Exec(Vec<String>),
    /// Shell form: the text, to be run with the stage's SHELL.
    Shell(String),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Run {
    pub command: Command,
    /// Heredocs of the command line, raw (see [`Heredoc::effective_content`]).
    pub heredocs: Vec<Heredoc>,
    /// Mounts parsed from the unexpanded specs; see `mount_specs`.
    pub mounts: Vec<Mount>,
    pub network: Option<NetworkMode>,
    /// `--security=` (`sandbox` or `insecure`).
    pub security: Option<String>,
    /// The raw `--mount` values, in order (index-aligned with `mounts`),
    /// for re-parsing with variables expanded
    /// ([`crate::mount::parse_mount_with`]).
    pub mount_specs: Vec<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum NetworkMode {
    Default,
    None,
    Host,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Copy {
    /// Source paths that are not heredocs.
    pub sources: Vec<String>,
    pub dest: String,
    /// Sources given as heredocs (`COPY <<EOF /dest`), in order.
    pub heredocs: Vec<Heredoc>,
    pub from: Option<String>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub exclude: Vec<String>,
    pub parents: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Add {
    pub sources: Vec<String>,
    pub dest: String,
    pub heredocs: Vec<Heredoc>,
    pub chown: Option<String>,
    pub chmod: Option<String>,
    pub link: bool,
    pub exclude: Vec<String>,
    pub checksum: Option<String>,
    pub keep_git_dir: bool,
    /// `--unpack=`; `None` when not given (archives from the context are
    /// unpacked, remote ones are not).
    pub unpack: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub enum Healthcheck {
    /// `HEALTHCHECK NONE`: disable the base image's check.
    None,
    /// `HEALTHCHECK [options] CMD ...`; option values `None` when not given
    /// (a given `0s` means "use the default", as in Docker).
    Check {
        test: Command,
        interval: Option<Duration>,
        timeout: Option<Duration>,
        start_period: Option<Duration>,
        start_interval: Option<Duration>,
        retries: Option<u32>,
    },
}

#[derive(Clone, Copy, PartialEq)]
enum FlagKind {
    Bool,
    Str,
    Strings,
}

#[derive(Default)]
struct Flags {
    values: Vec<(&'static str, Vec<String>)>,
}

impl Flags {
    fn string(&self, name: &str) -> Option<String> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .and_then(|(_, v)| v.last().cloned())
    }
    fn strings(&self, name: &str) -> Vec<String> {
        self.values
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_default()
    }
    fn bool(&self, name: &str) -> Option<bool> {
        self.string(name).map(|v| v == "true")
    }
}

fn flag_span(node: &Node, flag: &str) -> Span {
    let mut span = node.span;
    let text = node.original.trim_start();
    if let Some(off) = text.find(flag) {
        span.column += text[..off].chars().count();
    }
    span
}

/// BuildKit's `BFlags.Parse` against the flags an instruction accepts.
fn parse_flags(node: &Node, spec: &[(&'static str, FlagKind)]) -> Result<Flags, ParseError> {
    let mut flags = Flags::default();
    let kw = node.keyword.to_uppercase();
    for raw in &node.flags {
        let Some(arg) = raw.strip_prefix("--") else {
            return Err(ParseError::new(
                format!("arg should start with -- : {raw}"),
                node.span,
            ));
        };
        let (name, value) = match arg.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (arg, None),
        };
        // Only computed on error: finding the flag in the text is linear.
        let span = || flag_span(node, raw);
        let Some(&(static_name, kind)) = spec.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = spec.iter().map(|(n, _)| *n).collect();
            let hint = match suggest(name, &names) {
                Some(s) => Some(format!("did you mean --{s}?")),
                None if names.is_empty() => Some(format!("{kw} takes no flags")),
                None => Some(format!(
                    "{kw} accepts {}",
                    names
                        .iter()
                        .map(|n| format!("--{n}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )),
            };
            return Err(ParseError::new(format!("unknown flag: {name}"), span()).with_hint(hint));
        };
        let slot = match flags.values.iter().position(|(n, _)| *n == static_name) {
            Some(i) if kind != FlagKind::Strings => {
                let _ = i;
                return Err(
                    ParseError::new(format!("duplicate flag specified: {name}"), span())
                        .with_hint(Some(format!("give --{name} only once"))),
                );
            }
            Some(i) => i,
            None => {
                flags.values.push((static_name, Vec::new()));
                flags.values.len() - 1
            }
        };
        let v = match kind {
            FlagKind::Bool => match value {
                Some("") => {
                    return Err(ParseError::new(
                        format!("missing a value on flag: {name}"),
                        span(),
                    ))
                }
                None => "true".to_string(),
                Some(v) => match v.to_ascii_lowercase().as_str() {
                    "true" => "true".to_string(),
                    "false" => "false".to_string(),
                    _ => {
                        return Err(ParseError::new(
                            format!("expecting boolean value for flag {name}, not: {v}"),
                            span(),
                        ))
                    }
                },
            },
            FlagKind::Str | FlagKind::Strings => match value {
                Some(v) => v.to_string(),
                None => {
                    return Err(
                        ParseError::new(format!("missing a value on flag: {name}"), span())
                            .with_hint(Some(format!("write --{name}=<value>"))),
                    )
                }
            },
        };
        flags.values[slot].1.push(v);
    }
    Ok(flags)
}

fn err(node: &Node, msg: impl Into<String>) -> ParseError {
    ParseError::new(msg, node.span)
}

fn exactly_one(node: &Node) -> Result<String, ParseError> {
    if node.args.len() != 1 {
        return Err(err(
            node,
            format!(
                "{} requires exactly one argument",
                node.keyword.to_uppercase()
            ),
        ));
    }
    Ok(node.args[0].clone())
}

fn at_least_one(node: &Node) -> Result<(), ParseError> {
    if node.args.is_empty() {
        return Err(err(
            node,
            format!(
                "{} requires at least one argument",
                node.keyword.to_uppercase()
            ),
        ));
    }
    Ok(())
}

fn command(node: &Node) -> Command {
    if node.json {
        Command::Exec(node.args.clone())
    } else {
        Command::Shell(node.args.join(" "))
    }
}

fn kvps(node: &Node) -> Result<Vec<KeyValue>, ParseError> {
    let kw = node.keyword.to_uppercase();
    at_least_one(node)?;
    if node.args.len() % 3 != 0 {
        return Err(err(node, format!("Bad input to {kw}, too many arguments")));
    }
    let mut out = Vec::with_capacity(node.args.len() / 3);
    for t in node.args.chunks(3) {
        if t[0].is_empty() {
            return Err(err(node, format!("{kw} names can not be blank"))
                .with_hint(Some(format!("write {kw} name=value"))));
        }
        out.push(KeyValue {
            key: t[0].clone(),
            value: t[1].clone(),
        });
    }
    Ok(out)
}

struct SourcesDest {
    sources: Vec<String>,
    dest: String,
    heredocs: Vec<Heredoc>,
}

fn sources_and_dest(node: &Node) -> Result<SourcesDest, ParseError> {
    let kw = node.keyword.to_uppercase();
    match node.args.len() {
        0 => return Err(err(node, format!("{kw} requires at least two arguments"))),
        1 => {
            return Err(err(
                node,
                format!("{kw} requires at least two arguments, but only one was provided. Destination could not be determined."),
            )
            .with_hint(Some(format!("write {kw} <src>... <dest>"))))
        }
        _ => {}
    }
    let (dest, srcs) = node
        .args
        .split_last()
        .ok_or_else(|| err(node, "no arguments"))?;
    if !node.json && parse_heredoc_word(dest).ok().flatten().is_some() {
        return Err(err(
            node,
            format!("{kw} cannot accept a heredoc as a destination"),
        ));
    }
    let mut sources = Vec::new();
    let mut heredocs = Vec::new();
    for s in srcs {
        let doc = if node.json {
            None
        } else {
            parse_heredoc_word(s).ok().flatten()
        };
        match doc.and_then(|d| node.heredocs.iter().find(|h| h.name == d.name)) {
            Some(h) => heredocs.push(h.clone()),
            None => sources.push(s.clone()),
        }
    }
    Ok(SourcesDest {
        sources,
        dest: dest.clone(),
        heredocs,
    })
}

/// Go's `time.ParseDuration` grammar: `[-+]?(\d*(\.\d*)?(ns|us|µs|μs|ms|s|m|h))+` or `0`.
fn go_duration(i: &str) -> IResult<&str, Vec<(&str, &str)>> {
    many1((
        recognize((digit0, opt((nchar('.'), digit0)))),
        alt((
            tag("ns"),
            tag("us"),
            tag("µs"),
            tag("μs"),
            tag("ms"),
            tag("s"),
            tag("m"),
            tag("h"),
        )),
    ))
    .parse(i)
}

fn parse_duration(s: &str) -> Option<(bool, Duration)> {
    let (neg, body) = match s.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if body == "0" {
        return Some((false, Duration::ZERO));
    }
    let (rest, parts) = go_duration(body).ok()?;
    if !rest.is_empty() {
        return None;
    }
    let mut total = 0f64;
    for (num, unit) in parts {
        if num.is_empty() || num == "." {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        let nanos = match unit {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            _ => 3600e9,
        };
        total += n * nanos;
    }
    if !total.is_finite() || total > 9.2e18 {
        return None;
    }
    Some((neg && total > 0.0, Duration::from_nanos(total as u64)))
}

fn interval(node: &Node, flags: &Flags, name: &str) -> Result<Option<Duration>, ParseError> {
    let Some(v) = flags.string(name) else {
        return Ok(None);
    };
    let span = flag_span(node, &format!("--{name}"));
    let Some((neg, d)) = parse_duration(&v) else {
        return Err(ParseError::new(
            format!("time: invalid duration {}", crate::go_quote(&v)),
            span,
        )
        .with_hint(Some("use a duration such as 30s, 1m30s or 500ms".into())));
    };
    if neg {
        return Err(ParseError::new(
            format!("Interval \"{name}\" cannot be negative"),
            span,
        ));
    }
    if !d.is_zero() && d < Duration::from_millis(1) {
        return Err(ParseError::new(
            format!("Interval \"{name}\" cannot be less than 1ms"),
            span,
        ));
    }
    Ok(Some(d))
}

fn healthcheck(node: &Node) -> Result<Healthcheck, ParseError> {
    let Some(typ) = node.args.first() else {
        return Err(
            err(node, "HEALTHCHECK requires at least one argument").with_hint(Some(
                "write HEALTHCHECK CMD <command> or HEALTHCHECK NONE".into(),
            )),
        );
    };
    let typ = typ.to_uppercase();
    if typ == "NONE" {
        parse_flags(node, &[])?;
        if node.args.len() != 1 {
            return Err(err(node, "HEALTHCHECK NONE takes no arguments"));
        }
        return Ok(Healthcheck::None);
    }
    let flags = parse_flags(
        node,
        &[
            ("interval", FlagKind::Str),
            ("timeout", FlagKind::Str),
            ("start-period", FlagKind::Str),
            ("start-interval", FlagKind::Str),
            ("retries", FlagKind::Str),
        ],
    )?;
    if typ != "CMD" {
        return Err(err(
            node,
            format!(
                "Unknown type {} in HEALTHCHECK (try CMD)",
                crate::go_quote(&typ)
            ),
        ));
    }
    let rest = &node.args[1..];
    if rest.is_empty() {
        return Err(err(node, "Missing command after HEALTHCHECK CMD"));
    }
    let test = if node.json {
        Command::Exec(rest.to_vec())
    } else {
        Command::Shell(rest.join(" "))
    };
    let retries =
        match flags.string("retries") {
            None => None,
            Some(v) => {
                let span = flag_span(node, "--retries");
                let n: i64 = v.parse().map_err(|_| {
                    ParseError::new(format!("invalid value for --retries: {v}"), span)
                })?;
                if n < 0 {
                    return Err(ParseError::new(
                        format!("--retries cannot be negative ({n})"),
                        span,
                    ));
                }
                Some(u32::try_from(n).map_err(|_| {
                    ParseError::new(format!("invalid value for --retries: {v}"), span)
                })?)
            }
        };
    Ok(Healthcheck::Check {
        test,
        interval: interval(node, &flags, "interval")?,
        timeout: interval(node, &flags, "timeout")?,
        start_period: interval(node, &flags, "start-period")?,
        start_interval: interval(node, &flags, "start-interval")?,
        retries,
    })
}

fn run(node: &Node) -> Result<Run, ParseError> {
    let flags = parse_flags(
        node,
        &[
            ("mount", FlagKind::Strings),
            ("network", FlagKind::Str),
            ("security", FlagKind::Str),
        ],
    )?;
    let mount_specs = flags.strings("mount");
    let mut mounts = Vec::with_capacity(mount_specs.len());
    for spec in &mount_specs {
        let m = parse_mount(spec)
            .map_err(|e| ParseError::new(e.message, flag_span(node, spec)).with_hint(e.hint))?;
        mounts.push(m);
    }
    let network = match flags.string("network") {
        None => None,
        Some(v) => Some(match v.as_str() {
            "default" => NetworkMode::Default,
            "none" => NetworkMode::None,
            "host" => NetworkMode::Host,
            _ => {
                return Err(ParseError::new(
                    format!("unsupported network mode {}", crate::go_quote(&v)),
                    flag_span(node, "--network"),
                )
                .with_hint(Some("use --network=default, none or host".into())))
            }
        }),
    };
    let security = flags.string("security");
    if let Some(s) = &security {
        if s != "sandbox" && s != "insecure" {
            return Err(ParseError::new(
                format!("security mode {} not supported", crate::go_quote(s)),
                flag_span(node, "--security"),
            )
            .with_hint(Some("use --security=sandbox or insecure".into())));
        }
    }
    Ok(Run {
        command: command(node),
        heredocs: node.heredocs.clone(),
        mounts,
        network,
        security,
        mount_specs,
    })
}

fn instruction(node: &Node) -> Result<InstructionKind, ParseError> {
    let no_flags = |node: &Node| parse_flags(node, &[]).map(|_| ());
    Ok(match node.keyword.as_str() {
        "run" => InstructionKind::Run(run(node)?),
        "copy" => InstructionKind::Copy(copy(node)?),
        "add" => InstructionKind::Add(add(node)?),
        "env" => {
            no_flags(node)?;
            InstructionKind::Env(kvps(node)?)
        }
        "label" => {
            no_flags(node)?;
            InstructionKind::Label(kvps(node)?)
        }
        "arg" => {
            no_flags(node)?;
            at_least_one(node)?;
            InstructionKind::Arg(args(node)?)
        }
        "workdir" => {
            no_flags(node)?;
            InstructionKind::Workdir(exactly_one(node)?)
        }
        "user" => {
            no_flags(node)?;
            InstructionKind::User(exactly_one(node)?)
        }
        "stopsignal" => {
            no_flags(node)?;
            InstructionKind::StopSignal(exactly_one(node)?)
        }
        "maintainer" => {
            no_flags(node)?;
            InstructionKind::Maintainer(exactly_one(node)?)
        }
        "expose" => {
            no_flags(node)?;
            at_least_one(node)?;
            InstructionKind::Expose(node.args.clone())
        }
        "volume" => {
            no_flags(node)?;
            at_least_one(node)?;
            InstructionKind::Volume(volumes(node)?)
        }
        "cmd" => {
            no_flags(node)?;
            InstructionKind::Cmd(command(node))
        }
        "entrypoint" => {
            no_flags(node)?;
            InstructionKind::Entrypoint(command(node))
        }
        "shell" => {
            no_flags(node)?;
            at_least_one(node)?;
            if !node.json {
                return Err(err(node, "SHELL requires the arguments to be in JSON form")
                    .with_hint(Some("write SHELL [\"/bin/sh\", \"-c\"]".into())));
            }
            InstructionKind::Shell(node.args.clone())
        }
        "healthcheck" => InstructionKind::Healthcheck(healthcheck(node)?),
        "onbuild" => {
            no_flags(node)?;
            InstructionKind::Onbuild(onbuild(node)?)
        }
        other => {
            return Err(err(node, format!("unknown instruction: {other}")));
        }
    })
}

fn copy(node: &Node) -> Result<Copy, ParseError> {
    let f = parse_flags(
        node,
        &[
            ("from", FlagKind::Str),
            ("chown", FlagKind::Str),
            ("chmod", FlagKind::Str),
            ("link", FlagKind::Bool),
            ("parents", FlagKind::Bool),
            ("exclude", FlagKind::Strings),
        ],
    )?;
    let sd = sources_and_dest(node)?;
    Ok(Copy {
        sources: sd.sources,
        dest: sd.dest,
        heredocs: sd.heredocs,
        from: f.string("from"),
        chown: f.string("chown"),
        chmod: f.string("chmod"),
        link: f.bool("link").unwrap_or(false),
        exclude: f.strings("exclude"),
        parents: f.bool("parents").unwrap_or(false),
    })
}

fn add(node: &Node) -> Result<Add, ParseError> {
    let f = parse_flags(
        node,
        &[
            ("chown", FlagKind::Str),
            ("chmod", FlagKind::Str),
            ("link", FlagKind::Bool),
            ("exclude", FlagKind::Strings),
            ("checksum", FlagKind::Str),
            ("keep-git-dir", FlagKind::Bool),
            ("unpack", FlagKind::Bool),
        ],
    )?;
    let sd = sources_and_dest(node)?;
    Ok(Add {
        sources: sd.sources,
        dest: sd.dest,
        heredocs: sd.heredocs,
        chown: f.string("chown"),
        chmod: f.string("chmod"),
        link: f.bool("link").unwrap_or(false),
        exclude: f.strings("exclude"),
        checksum: f.string("checksum"),
        keep_git_dir: f.bool("keep-git-dir").unwrap_or(false),
        unpack: f.bool("unpack"),
    })
}

/// `ARG name[=default] ...`.
fn args(node: &Node) -> Result<Vec<ArgDecl>, ParseError> {
    let mut out = Vec::with_capacity(node.args.len());
    for a in &node.args {
        let decl = match a.split_once('=') {
            Some(("", _)) => {
                return Err(err(node, "ARG names can not be blank")
                    .with_hint(Some("write ARG name[=default]".into())))
            }
            Some((n, v)) => ArgDecl {
                name: n.to_string(),
                default: Some(v.to_string()),
            },
            None => ArgDecl {
                name: a.clone(),
                default: None,
            },
        };
        out.push(decl);
    }
    Ok(out)
}

fn volumes(node: &Node) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::with_capacity(node.args.len());
    for v in &node.args {
        let v = v.trim();
        if v.is_empty() {
            return Err(err(node, "VOLUME specified can not be an empty string"));
        }
        out.push(v.to_string());
    }
    Ok(out)
}

/// The trigger's text, after the checks BuildKit makes.
fn onbuild(node: &Node) -> Result<String, ParseError> {
    let Some(inner) = &node.inner else {
        return Err(err(node, "ONBUILD requires at least one argument"));
    };
    match inner.keyword.as_str() {
        "onbuild" => {
            return Err(err(
                node,
                "Chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed",
            ))
        }
        "from" | "maintainer" => {
            return Err(err(
                node,
                format!(
                    "{} isn't allowed as an ONBUILD trigger",
                    inner.keyword.to_uppercase()
                ),
            ))
        }
        _ => {}
    }
    let text = node.original.trim_start();
    let text = text.get(7..).unwrap_or("").trim_start();
    Ok(text.to_string())
}

fn valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '-' | '_' | '.'))
}

fn stage(node: &Node) -> Result<Stage, ParseError> {
    let flags = parse_flags(node, &[("platform", FlagKind::Str)])?;
    let name = match node.args.len() {
        1 => None,
        3 if node.args[1].eq_ignore_ascii_case("as") => {
            let name = node.args[2].to_lowercase();
            if !valid_stage_name(&name) {
                return Err(err(
                    node,
                    format!(
                        "invalid name for build stage: {}, name can't start with a number or contain symbols",
                        crate::go_quote(&node.args[2])
                    ),
                ));
            }
            Some(name)
        }
        _ => {
            return Err(err(node, "FROM requires either one or three arguments")
                .with_hint(Some("write FROM <image> [AS <name>]".into())))
        }
    };
    Ok(Stage {
        name,
        base: node.args[0].clone(),
        platform: flags.string("platform"),
        instructions: Vec::new(),
        span: node.span,
        original: node.original.clone(),
    })
}

/// The typed layer: splits the AST into stages and validates every
/// instruction and its flags (unknown, duplicate or malformed flags, wrong
/// argument counts, bad mounts, bad healthcheck options...). Errors carry
/// the instruction's span (the flag's column for flag errors).
pub fn parse_stages(df: &Dockerfile) -> Result<Stages, ParseError> {
    let mut global_args = Vec::new();
    let mut stages: Vec<Stage> = Vec::new();
    for node in &df.nodes {
        if node.keyword == "from" {
            stages.push(stage(node)?);
            continue;
        }
        let kind = instruction(node)?;
        match stages.last_mut() {
            Some(s) => s.instructions.push(Instruction {
                kind,
                span: node.span,
                original: node.original.clone(),
            }),
            None => match kind {
                InstructionKind::Arg(args) => global_args.extend(args),
                _ => {
                    return Err(
                        err(node, "no build stage in current context").with_hint(Some(
                            "start the Dockerfile with FROM (only ARG may come before it)".into(),
                        )),
                    )
                }
            },
        }
    }
    Ok(Stages {
        global_args,
        stages,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("5s"), Some((false, Duration::from_secs(5))));
        assert_eq!(
            parse_duration("1m30s"),
            Some((false, Duration::from_secs(90)))
        );
        assert_eq!(
            parse_duration("1.5ms"),
            Some((false, Duration::from_micros(1500)))
        );
        assert_eq!(parse_duration("0"), Some((false, Duration::ZERO)));
        assert_eq!(parse_duration("-1s"), Some((true, Duration::from_secs(1))));
        assert_eq!(parse_duration("5"), None);
        assert_eq!(parse_duration("s"), None);
        assert_eq!(parse_duration(""), None);
    }

    #[test]
    fn stage_names() {
        assert!(valid_stage_name("build-1.x_y"));
        assert!(!valid_stage_name("1build"));
        assert!(!valid_stage_name("a/b"));
    }
}

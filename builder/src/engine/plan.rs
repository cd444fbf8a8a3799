//! Planner: typed stages -> a DAG of stages. Resolves global ARGs for FROM,
//! names and indexes of stages, the edges (`FROM <stage>`, `COPY --from`,
//! `RUN --mount=from=`), and the set of stages the target needs.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use kiln_parser::shell::Lexer;
use kiln_parser::{InstructionKind, Mount, Stage, Stages};

use super::BuildArgs;

/// The platform kiln builds for and on (no emulation: the host's).
pub fn platform_args() -> BTreeMap<String, String> {
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "arm" => "arm",
        "powerpc64" => "ppc64le",
        "s390x" => "s390x",
        "riscv64" => "riscv64",
        other => other,
    };
    let mut m = BTreeMap::new();
    for prefix in ["TARGET", "BUILD"] {
        m.insert(format!("{prefix}PLATFORM"), format!("linux/{arch}"));
        m.insert(format!("{prefix}OS"), "linux".into());
        m.insert(format!("{prefix}ARCH"), arch.into());
        m.insert(format!("{prefix}VARIANT"), String::new());
    }
    m
}

/// Build args every build accepts without a declaring ARG (BuildKit's
/// proxy args); they reach RUN but never the cache key.
pub const PROXY_ARGS: &[&str] = &[
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "FTP_PROXY",
    "ftp_proxy",
    "NO_PROXY",
    "no_proxy",
    "ALL_PROXY",
    "all_proxy",
];

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Base {
    Scratch,
    Stage(usize),
    Image(String),
}

#[derive(Debug)]
pub struct PlannedStage {
    pub index: usize,
    pub name: Option<String>,
    pub base: Base,
    pub stage: Stage,
    /// Stages this one reads from (base, COPY --from, RUN --mount from).
    pub deps: BTreeSet<usize>,
}

impl PlannedStage {
    /// How BuildKit names a stage in progress lines: its name or its index.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", self.index))
    }
}

#[derive(Debug)]
pub struct Plan {
    pub stages: Vec<PlannedStage>,
    pub target: usize,
    /// The stages to build, dependencies first.
    pub order: Vec<usize>,
    /// Values of global ARGs (declared before the first FROM), after
    /// --build-arg overrides; None for a declared ARG without a value.
    pub global_args: BTreeMap<String, Option<String>>,
}

/// What `--from=`/`from=` names: a stage (by name or index) or an image.
pub fn resolve_from(name: &str, stages: &[PlannedStage], before: usize) -> Base {
    let lower = name.to_ascii_lowercase();
    if let Some(s) = stages[..before]
        .iter()
        .find(|s| s.name.as_deref() == Some(lower.as_str()))
    {
        return Base::Stage(s.index);
    }
    if let Ok(i) = name.parse::<usize>() {
        if i < before {
            return Base::Stage(i);
        }
    }
    if lower == "scratch" {
        return Base::Scratch;
    }
    Base::Image(name.to_string())
}

pub fn plan(
    parsed: Stages,
    escape: char,
    build_args: &BuildArgs,
    target: Option<&str>,
) -> Result<Plan> {
    if parsed.stages.is_empty() {
        bail!("the Dockerfile has no FROM instruction: a build needs at least one stage");
    }
    let lexer = Lexer::new(escape);
    // Global scope: platform args, then the ARGs before the first FROM.
    let mut scope: BTreeMap<String, String> = platform_args();
    let mut global_args = BTreeMap::new();
    for decl in &parsed.global_args {
        let value = match build_args.get(&decl.name) {
            Some(v) => Some(v.clone()),
            None => match &decl.default {
                Some(d) => Some(
                    lexer
                        .process_word(d, &scope)
                        .map_err(|e| anyhow::anyhow!("ARG {}: {e}", decl.name))?,
                ),
                None => None,
            },
        };
        if let Some(v) = &value {
            scope.insert(decl.name.clone(), v.clone());
        }
        global_args.insert(decl.name.clone(), value);
    }

    let mut stages: Vec<PlannedStage> = Vec::new();
    for (index, stage) in parsed.stages.into_iter().enumerate() {
        let base_text = lexer.process_word(&stage.base, &scope).map_err(|e| {
            anyhow::anyhow!("Dockerfile:{}: FROM {}: {e}", stage.span.line, stage.base)
        })?;
        if base_text.is_empty() {
            bail!(
                "Dockerfile:{}: base name ({}) should not be blank",
                stage.span.line,
                stage.base
            );
        }
        if let Some(name) = &stage.name {
            if stages.iter().any(|s| s.name.as_deref() == Some(name)) {
                bail!(
                    "Dockerfile:{}: duplicate stage name {name:?}",
                    stage.span.line
                );
            }
        }
        let base = resolve_from(&base_text, &stages, index);
        let mut deps = BTreeSet::new();
        if let Base::Stage(i) = base {
            deps.insert(i);
        }
        for ins in &stage.instructions {
            let froms: Vec<&String> = match &ins.kind {
                InstructionKind::Copy(c) => c.from.iter().collect(),
                InstructionKind::Run(r) => r
                    .mounts
                    .iter()
                    .filter_map(|m| match m {
                        Mount::Bind { from, .. } | Mount::Cache { from, .. } => from.as_ref(),
                        _ => None,
                    })
                    .collect(),
                _ => vec![],
            };
            for f in froms {
                let f = lexer.process_word(f, &scope).unwrap_or_else(|_| f.clone());
                if let Base::Stage(i) = resolve_from(&f, &stages, index) {
                    deps.insert(i);
                }
            }
        }
        stages.push(PlannedStage {
            index,
            name: stage.name.clone(),
            base,
            stage,
            deps,
        });
    }

    check_from_order(&stages)?;
    let target = target_index(&stages, target)?;

    // Dependencies first, only what the target needs.
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(
        i: usize,
        stages: &[PlannedStage],
        seen: &mut BTreeSet<usize>,
        order: &mut Vec<usize>,
    ) {
        if !seen.insert(i) {
            return;
        }
        for &d in &stages[i].deps {
            visit(d, stages, seen, order);
        }
        order.push(i);
    }
    visit(target, &stages, &mut seen, &mut order);

    Ok(Plan {
        stages,
        target,
        order,
        global_args,
    })
}

/// A --from naming a stage defined *later* is an error in BuildKit; the
/// planner resolved earlier-stage names only, so the later ones are
/// checked here.
fn check_from_order(stages: &[PlannedStage]) -> Result<()> {
    for s in stages {
        for ins in &s.stage.instructions {
            if let InstructionKind::Copy(c) = &ins.kind {
                if let Some(f) = &c.from {
                    // By index, too: `--from=0` in stage 0 would wait for
                    // itself forever.
                    if let Ok(n) = f.parse::<usize>() {
                        if n >= s.index && n < stages.len() {
                            bail!(
                                "Dockerfile:{}: COPY --from={f} refers to stage {n}, which is not before this one (stage {})",
                                ins.span.line,
                                s.index
                            );
                        }
                    }
                    let lower = f.to_ascii_lowercase();
                    if let Some(later) = stages[s.index..]
                        .iter()
                        .find(|t| t.name.as_deref() == Some(lower.as_str()))
                    {
                        if later.index >= s.index {
                            bail!(
                                "Dockerfile:{}: COPY --from={f} refers to stage {f:?} which is defined at line {}, not before this one",
                                ins.span.line,
                                later.stage.span.line
                            );
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

/// The stage `--target` names (the last one without it).
fn target_index(stages: &[PlannedStage], target: Option<&str>) -> Result<usize> {
    Ok(match target {
        None => stages.len() - 1,
        Some(t) => {
            let lower = t.to_ascii_lowercase();
            match stages
                .iter()
                .find(|s| s.name.as_deref() == Some(lower.as_str()))
            {
                Some(s) => s.index,
                None => {
                    let names: Vec<String> = stages.iter().filter_map(|s| s.name.clone()).collect();
                    bail!(
                        "target stage {t:?} could not be found (stages: {})",
                        if names.is_empty() {
                            "none are named".to_string()
                        } else {
                            names.join(", ")
                        }
                    );
                }
            }
        }
    })
}

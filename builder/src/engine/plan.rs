//! Planner: typed stages -> a DAG of stages. Resolves global ARGs for FROM,
//! names and indexes of stages, the edges (`FROM <stage>`, `COPY --from`,
//! `RUN --mount=from=`), and the set of stages the target needs.

use std::collections::{BTreeMap, BTreeSet};

use anyhow::{bail, Result};
use kiln_parser::shell::Lexer;
use kiln_parser::{InstructionKind, Mount, Stage, Stages};

use super::platform::{platform_args, Platform};
use super::BuildArgs;

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
    /// Nodes this one reads from (base, COPY --from, RUN --mount from).
    pub deps: BTreeSet<usize>,
    /// The platform its steps are for: `FROM --platform=`, else its base
    /// stage's, else the target's (BuildKit's rule).
    pub platform: Platform,
    /// The platform was asked for (`--platform`, `FROM --platform`, or a
    /// base stage's): its base image must be for it. Without, the base
    /// image's own platform is used, as BuildKit's implicit target does.
    pub pinned: bool,
    /// The target (index into [`Plan::targets`]) whose ARG values it sees;
    /// a node shared by several targets reads none that differ.
    pub target: usize,
    /// It declares one of the TARGET* ARGs (progress shows `->arch`).
    pub reads_target: bool,
}

impl PlannedStage {
    /// How BuildKit names a stage in progress lines: its name or its index.
    pub fn label(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| format!("stage-{}", self.index))
    }
}

/// One platform the build makes an image for.
#[derive(Debug)]
pub struct Target {
    pub platform: Platform,
    /// Given with `--platform` (the image's platform is then forced to
    /// it, as BuildKit does); else the host's, implicitly.
    pub explicit: bool,
    /// The node of the target stage.
    pub node: usize,
    /// Each Dockerfile stage's node for this target (None: not needed).
    pub nodes: Vec<Option<usize>>,
    /// Each Dockerfile stage's name, for names resolved while building.
    pub names: Vec<Option<String>>,
    /// Values of global ARGs (declared before the first FROM), after
    /// --build-arg overrides; None for a declared ARG without a value.
    pub global_args: BTreeMap<String, Option<String>>,
    /// The automatic platform ARGs, after --build-arg overrides.
    pub platform_args: BTreeMap<String, String>,
}

/// The stage DAG of every target platform, stages whose inputs are the
/// same for several targets planned once.
#[derive(Debug)]
pub struct Plan {
    /// The nodes: a Dockerfile stage for one or more targets.
    pub stages: Vec<PlannedStage>,
    pub targets: Vec<Target>,
    /// The nodes to build, dependencies first.
    pub order: Vec<usize>,
    /// How many stages the Dockerfile has (progress labels name a stage
    /// when there are several).
    pub dockerfile_stages: usize,
    /// More than one platform: progress lines name each step's platform.
    pub multi_platform: bool,
}

impl Plan {
    /// The platform a stage's images are resolved for when its FROM pins
    /// one (`FROM --platform=...`); None: the build's own.
    pub fn wanted_platform(&self, node: usize) -> Option<&super::platform::Platform> {
        let ps = &self.stages[node];
        ps.pinned.then_some(&ps.platform)
    }

    /// In a multi-platform build, the `[linux/arm64 ...]` prefix of a
    /// stage's progress lines.
    pub fn platform_prefix(&self, i: usize) -> Option<String> {
        let ps = &self.stages[i];
        self.multi_platform.then(|| {
            let t = &self.targets[ps.target].platform;
            super::platform::progress_prefix(&ps.platform, ps.reads_target.then_some(t))
        })
    }

    /// The node a name read while building (`COPY --from=$X`) stands for,
    /// in the target of node `node`.
    pub fn resolve_in(&self, node: usize, name: &str) -> Result<Base> {
        let t = &self.targets[self.stages[node].target];
        Ok(match resolve_name(name, &t.names, t.names.len()) {
            Base::Stage(i) => match t.nodes[i] {
                Some(n) => Base::Stage(n),
                None => bail!(
                    "stage {name} is read here but was not known to be needed when the build was planned \
                     (is its name in a variable set inside the stage?): name the stage directly"
                ),
            },
            other => other,
        })
    }

    /// The names of the global ARGs (the same for every target).
    pub fn global_arg_names(&self) -> impl Iterator<Item = &String> {
        self.targets[0].global_args.keys()
    }
}

/// What `--from=`/`from=` names: a stage (by name or index) or an image.
pub fn resolve_name(name: &str, names: &[Option<String>], before: usize) -> Base {
    let lower = name.to_ascii_lowercase();
    if let Some(i) = names[..before]
        .iter()
        .position(|n| n.as_deref() == Some(lower.as_str()))
    {
        return Base::Stage(i);
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

/// The plan for the host's platform, implicitly (no `--platform`).
pub fn plan(
    parsed: Stages,
    escape: char,
    build_args: &BuildArgs,
    target: Option<&str>,
) -> Result<Plan> {
    plan_platforms(parsed, escape, build_args, target, &[])
}

/// The plan for each of `platforms` (none: the host's, implicitly). Each
/// target is planned as BuildKit plans it; a stage is one node for every
/// target whose plan gives it the same inputs: the same Dockerfile stage,
/// platform, base, nodes it reads and values of the ARGs it declares.
pub fn plan_platforms(
    parsed: Stages,
    escape: char,
    build_args: &BuildArgs,
    target: Option<&str>,
    platforms: &[Platform],
) -> Result<Plan> {
    if parsed.stages.is_empty() {
        bail!("the Dockerfile has no FROM instruction: a build needs at least one stage");
    }
    check_from_order(&parsed.stages)?;
    let target_stage = target_index(&parsed.stages, target)?;
    let explicit = !platforms.is_empty();
    let wanted = if explicit {
        platforms.to_vec()
    } else {
        vec![Platform::host()]
    };
    let lexer = Lexer::new(escape);
    let mut plan = Plan {
        stages: Vec::new(),
        targets: Vec::new(),
        order: Vec::new(),
        dockerfile_stages: parsed.stages.len(),
        multi_platform: wanted.len() > 1,
    };
    let mut by_identity: BTreeMap<String, usize> = BTreeMap::new();
    for (t, platform) in wanted.into_iter().enumerate() {
        let one = plan_one(
            &parsed,
            &lexer,
            build_args,
            target_stage,
            &platform,
            explicit,
        )?;
        let mut nodes: Vec<Option<usize>> = vec![None; parsed.stages.len()];
        for &i in &one.order {
            let s = &one.stages[i];
            let node_of = |j: usize| nodes[j].expect("dependencies are planned first");
            let base = match &s.base {
                Base::Stage(j) => Base::Stage(node_of(*j)),
                other => other.clone(),
            };
            let deps: BTreeSet<usize> = s.deps.iter().map(|&j| node_of(j)).collect();
            let identity = format!(
                "{i}\0{}\0{base:?}\0{deps:?}\0{:?}",
                s.platform, s.arg_values
            );
            let node = match by_identity.get(&identity) {
                Some(&n) => n,
                None => {
                    let n = plan.stages.len();
                    plan.stages.push(PlannedStage {
                        index: i,
                        name: parsed.stages[i].name.clone(),
                        base,
                        stage: parsed.stages[i].clone(),
                        deps,
                        platform: s.platform.clone(),
                        pinned: s.pinned,
                        target: t,
                        reads_target: s.reads_target,
                    });
                    plan.order.push(n);
                    by_identity.insert(identity, n);
                    n
                }
            };
            nodes[i] = Some(node);
        }
        plan.targets.push(Target {
            platform,
            explicit,
            node: nodes[target_stage].expect("the target is planned"),
            nodes,
            names: parsed.stages.iter().map(|s| s.name.clone()).collect(),
            global_args: one.global_args,
            platform_args: one.platform_args,
        });
    }
    Ok(plan)
}

/// One Dockerfile stage as one target's plan sees it (stage indices).
struct OneStage {
    base: Base,
    deps: BTreeSet<usize>,
    platform: Platform,
    pinned: bool,
    reads_target: bool,
    /// What each ARG the stage declares would take from outside the
    /// stage for this target (global value, platform value).
    arg_values: Vec<(String, Option<String>, Option<String>)>,
}

struct OnePlan {
    stages: Vec<OneStage>,
    order: Vec<usize>,
    global_args: BTreeMap<String, Option<String>>,
    platform_args: BTreeMap<String, String>,
}

/// FROM's scope, the global ARGs' values, and the automatic ARGs.
type GlobalScope = (
    BTreeMap<String, String>,
    BTreeMap<String, Option<String>>,
    BTreeMap<String, String>,
);

/// The automatic ARGs for a target (a --build-arg overrides one, as in
/// BuildKit), then the global ARGs in order: FROM's scope.
fn global_scope(
    parsed: &Stages,
    lexer: &Lexer,
    build_args: &BuildArgs,
    platform: &Platform,
) -> Result<GlobalScope> {
    let mut auto = platform_args(&Platform::host(), platform);
    for (k, v) in auto.iter_mut() {
        if let Some(b) = build_args.get(k) {
            *v = b.clone();
        }
    }
    let mut scope = auto.clone();
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
    Ok((scope, global_args, auto))
}

fn plan_one(
    parsed: &Stages,
    lexer: &Lexer,
    build_args: &BuildArgs,
    target: usize,
    target_platform: &Platform,
    explicit: bool,
) -> Result<OnePlan> {
    let (scope, global_args, auto) = global_scope(parsed, lexer, build_args, target_platform)?;
    let names: Vec<Option<String>> = parsed.stages.iter().map(|s| s.name.clone()).collect();
    let mut stages: Vec<OneStage> = Vec::new();
    for (index, stage) in parsed.stages.iter().enumerate() {
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
            if names[..index].iter().any(|n| n.as_deref() == Some(name)) {
                bail!(
                    "Dockerfile:{}: duplicate stage name {name:?}",
                    stage.span.line
                );
            }
        }
        let base = resolve_name(&base_text, &names, index);
        let (platform, pinned) = stage_platform(
            stage,
            &base,
            &stages,
            &scope,
            lexer,
            target_platform,
            explicit,
        )?;
        let mut deps = BTreeSet::new();
        if let Base::Stage(i) = base {
            deps.insert(i);
        }
        let mut arg_values = Vec::new();
        let mut reads_target = false;
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
                InstructionKind::Arg(decls) => {
                    for d in decls {
                        reads_target |= d.name.starts_with("TARGET") && auto.contains_key(&d.name);
                        arg_values.push((
                            d.name.clone(),
                            global_args.get(&d.name).cloned().flatten(),
                            auto.get(&d.name).cloned(),
                        ));
                    }
                    vec![]
                }
                _ => vec![],
            };
            for f in froms {
                let f = lexer.process_word(f, &scope).unwrap_or_else(|_| f.clone());
                if let Base::Stage(i) = resolve_name(&f, &names, index) {
                    deps.insert(i);
                }
            }
        }
        stages.push(OneStage {
            base,
            deps,
            platform,
            pinned,
            reads_target,
            arg_values,
        });
    }

    // Dependencies first, only what the target needs.
    let mut order = Vec::new();
    let mut seen = BTreeSet::new();
    fn visit(i: usize, stages: &[OneStage], seen: &mut BTreeSet<usize>, order: &mut Vec<usize>) {
        if !seen.insert(i) {
            return;
        }
        for &d in &stages[i].deps {
            visit(d, stages, seen, order);
        }
        order.push(i);
    }
    visit(target, &stages, &mut seen, &mut order);
    Ok(OnePlan {
        stages,
        order,
        global_args,
        platform_args: auto,
    })
}

/// A stage's platform, BuildKit's way: `FROM --platform=` (expanded in the
/// global scope), else its base stage's, else the target's.
fn stage_platform(
    stage: &Stage,
    base: &Base,
    before: &[OneStage],
    scope: &BTreeMap<String, String>,
    lexer: &Lexer,
    target: &Platform,
    explicit: bool,
) -> Result<(Platform, bool)> {
    if let Some(p) = &stage.platform {
        let v = lexer.process_word(p, scope).map_err(|e| {
            anyhow::anyhow!(
                "Dockerfile:{}: failed to process arguments for platform {p}: {e}",
                stage.span.line
            )
        })?;
        let platform = Platform::parse(&v).map_err(|e| {
            anyhow::anyhow!("Dockerfile:{}: FROM --platform={p}: {e}", stage.span.line)
        })?;
        return Ok((platform, true));
    }
    if let Base::Stage(i) = base {
        return Ok((before[*i].platform.clone(), before[*i].pinned));
    }
    Ok((target.clone(), explicit))
}

/// A --from naming a stage defined *later* is an error in BuildKit; the
/// planner resolved earlier-stage names only, so the later ones are
/// checked here.
fn check_from_order(stages: &[Stage]) -> Result<()> {
    for (index, s) in stages.iter().enumerate() {
        for ins in &s.instructions {
            if let InstructionKind::Copy(c) = &ins.kind {
                if let Some(f) = &c.from {
                    // By index, too: `--from=0` in stage 0 would wait for
                    // itself forever.
                    if let Ok(n) = f.parse::<usize>() {
                        if n >= index && n < stages.len() {
                            bail!(
                                "Dockerfile:{}: COPY --from={f} refers to stage {n}, which is not before this one (stage {})",
                                ins.span.line,
                                index
                            );
                        }
                    }
                    let lower = f.to_ascii_lowercase();
                    if let Some(later) = stages[index..]
                        .iter()
                        .find(|t| t.name.as_deref() == Some(lower.as_str()))
                    {
                        bail!(
                            "Dockerfile:{}: COPY --from={f} refers to stage {f:?} which is defined at line {}, not before this one",
                            ins.span.line,
                            later.span.line
                        );
                    }
                }
            }
        }
    }
    Ok(())
}

/// The stage `--target` names (the last one without it).
fn target_index(stages: &[Stage], target: Option<&str>) -> Result<usize> {
    Ok(match target {
        None => stages.len() - 1,
        Some(t) => {
            let lower = t.to_ascii_lowercase();
            match stages
                .iter()
                .position(|s| s.name.as_deref() == Some(lower.as_str()))
            {
                Some(i) => i,
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

#[cfg(test)]
mod tests {
    use super::*;

    fn planned(df: &str, platforms: &[&str]) -> Plan {
        let parsed = kiln_parser::parse(df).unwrap();
        let stages = kiln_parser::parse_stages(&parsed).unwrap();
        let ps: Vec<Platform> = platforms
            .iter()
            .map(|p| Platform::parse(p).unwrap())
            .collect();
        plan_platforms(stages, '\\', &Default::default(), None, &ps).unwrap()
    }

    fn nodes(p: &Plan) -> Vec<(usize, String)> {
        p.order
            .iter()
            .map(|&n| (p.stages[n].index, p.stages[n].platform.to_string()))
            .collect()
    }

    const CROSS: &str = "FROM --platform=$BUILDPLATFORM scratch AS build\nRUN make\n\
                         FROM scratch\nCOPY --from=build /out /out\n";

    #[test]
    fn a_build_platform_stage_is_one_node_for_every_target() {
        let p = planned(CROSS, &["linux/amd64", "linux/arm64"]);
        let host = Platform::host().to_string();
        assert_eq!(
            nodes(&p),
            [
                (0, host.clone()),
                (1, "linux/amd64".into()),
                (1, "linux/arm64".into())
            ]
        );
        assert_eq!(p.targets[0].nodes[0], p.targets[1].nodes[0]);
        assert!(p.multi_platform);
        // The final stage's base is scratch for its own platform.
        assert_eq!(p.stages[p.targets[1].node].platform.arch, "arm64");
        assert!(p.stages[p.targets[1].node].pinned);
    }

    #[test]
    fn a_stage_that_declares_a_target_arg_is_planned_per_target() {
        let df = CROSS.replace("RUN make", "ARG TARGETARCH\nRUN make");
        let p = planned(&df, &["linux/amd64", "linux/arm64"]);
        assert_eq!(p.stages.len(), 4);
        assert_ne!(p.targets[0].nodes[0], p.targets[1].nodes[0]);
        let build = &p.stages[p.targets[1].nodes[0].unwrap()];
        assert!(build.reads_target);
        assert_eq!(build.platform, Platform::host());
        // A global ARG whose value comes from TARGETARCH differs too.
        let df = format!(
            "ARG A=x-$TARGETARCH\n{}",
            CROSS.replace("RUN make", "ARG A\nRUN make")
        );
        assert_eq!(
            planned(&df, &["linux/amd64", "linux/arm64"]).stages.len(),
            4
        );
        // A global ARG that does not, or that the stage does not declare, does not.
        let df = format!("ARG A=x\n{}", CROSS.replace("RUN make", "ARG A\nRUN make"));
        assert_eq!(
            planned(&df, &["linux/amd64", "linux/arm64"]).stages.len(),
            3
        );
    }

    #[test]
    fn from_sees_the_platform_args_and_a_stage_base_keeps_its_platform() {
        let df = "ARG BASE=img-$TARGETARCH\nFROM $BASE AS one\nFROM --platform=linux/arm64 one\n";
        let p = planned(df, &["linux/amd64", "linux/s390x"]);
        let bases: Vec<String> = p
            .stages
            .iter()
            .filter(|s| s.index == 0)
            .map(|s| format!("{:?}", s.base))
            .collect();
        assert_eq!(bases, [r#"Image("img-amd64")"#, r#"Image("img-s390x")"#]);
        let last = &p.stages[p.targets[0].node];
        assert_eq!(last.platform.to_string(), "linux/arm64");
        // Without --platform: the host's, and nothing pinned.
        let p = planned("FROM scratch AS a\nFROM a\n", &[]);
        assert!(!p.multi_platform && p.order.len() == 2);
        assert!(p
            .stages
            .iter()
            .all(|s| !s.pinned && s.platform == Platform::host()));
        let parsed = kiln_parser::parse("FROM --platform=linux/vax scratch\n").unwrap();
        let stages = kiln_parser::parse_stages(&parsed).unwrap();
        let e = plan(stages, '\\', &Default::default(), None).unwrap_err();
        assert!(
            e.to_string().contains("unknown architecture \"vax\""),
            "{e}"
        );
    }
}

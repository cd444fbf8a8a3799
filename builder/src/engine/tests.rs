//! The engine without root: whole builds of `FROM scratch` Dockerfiles in a
//! temporary store, RUN steps going to a fake executor that records what
//! it was asked and writes a file instead of running anything (youki's
//! `Syscall` test double is the model). Covers the stage DAG and
//! `--target` pruning, ARG/ENV scoping, which inputs change a cache key,
//! scheduling with `--max-parallelism`, and error cause chains.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use kiln_parser::dockerignore::PatternMatcher;
use kiln_store::Store;

use super::executor::{ExecSpec, ExecStatus, Executor, Network};
use super::{plan, Builder, NetworkArg, Options, PullPolicy};
use crate::context::BuildContext;
use crate::progress::{Mode, Progress};

/// What a fake RUN was given, and when it ran.
#[derive(Debug, Clone)]
struct Ran {
    argv: Vec<String>,
    env: Vec<String>,
    network: Network,
    started: Instant,
    ended: Instant,
}

/// Runs nothing: records the spec, writes `/ran` (the command line) into
/// the upper dir so the step has a layer, sleeps for a command containing
/// `slow`, and fails for `exit N` (status N) or `broken` (an error).
#[derive(Default)]
struct FakeExecutor {
    ran: Mutex<Vec<Ran>>,
}

impl Executor for FakeExecutor {
    fn run(&self, spec: &ExecSpec, output: &(dyn Fn(&str) + Sync)) -> Result<ExecStatus> {
        let started = Instant::now();
        let line = spec.args.join(" ");
        if line.contains("slow") {
            std::thread::sleep(Duration::from_millis(150));
        }
        let mut ran = Ran {
            argv: spec.args.clone(),
            env: spec.env.clone(),
            network: spec.network,
            started,
            ended: started,
        };
        ran.ended = Instant::now();
        self.ran.lock().unwrap().push(ran);
        if line.contains("broken") {
            let e = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "no such luck");
            return Err(anyhow::Error::new(e).context("starting the fake process"));
        }
        output(&format!("ran {line}"));
        std::fs::write(spec.upper.join("ran"), &line)?;
        let code = line
            .split_once("exit ")
            .map_or(0, |(_, n)| n.trim().parse().unwrap_or(1));
        Ok(ExecStatus {
            code,
            warnings: Vec::new(),
        })
    }
}

struct Kit {
    store: Arc<Store>,
    ctx: tempfile::TempDir,
    _root: tempfile::TempDir,
}

/// What a build did: each step's key (by instruction text) and the RUNs.
struct Built {
    keys: BTreeMap<String, String>,
    hits: Vec<String>,
    ran: Vec<Ran>,
    result: Result<Arc<super::StageResult>>,
    order: Vec<usize>,
}

#[derive(Clone)]
struct Req<'a> {
    dockerfile: &'a str,
    args: &'a [(&'a str, &'a str)],
    target: Option<&'a str>,
    network: NetworkArg,
    workers: usize,
}

fn req(dockerfile: &str) -> Req<'_> {
    Req {
        dockerfile,
        args: &[],
        target: None,
        network: NetworkArg::Default,
        workers: 2,
    }
}

impl Kit {
    fn new(files: &[(&str, &str)]) -> Kit {
        let root = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(root.path()).unwrap());
        let ctx = tempfile::tempdir().unwrap();
        for (name, body) in files {
            write(ctx.path(), name, body);
        }
        Kit {
            store,
            ctx,
            _root: root,
        }
    }

    fn build(&self, r: &Req) -> Built {
        let df = kiln_parser::parse(r.dockerfile).unwrap();
        let stages = kiln_parser::parse_stages(&df).unwrap();
        let build_args: BTreeMap<String, String> = r
            .args
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let plan = plan::plan(stages, df.directives.escape, &build_args, r.target).unwrap();
        let order: Vec<usize> = plan.order.iter().map(|&n| plan.stages[n].index).collect();
        let ctx =
            BuildContext::scan(self.ctx.path(), &PatternMatcher::new(&[]).unwrap(), None).unwrap();
        let opts = Options {
            dockerfile_name: "Dockerfile".into(),
            dockerfile_src: r.dockerfile.into(),
            build_args,
            no_cache: false,
            pull: PullPolicy::Never,
            network: r.network,
            secrets: Default::default(),
            ssh: Default::default(),
            labels: Default::default(),
            source_date_epoch: None,
            seccomp_unconfined: false,
            epoch_in_run: false,
            max_parallelism: r.workers,
            explain: false,
        };
        let mut b = Builder::new(
            self.store.clone(),
            opts,
            ctx,
            Progress::new(Mode::Quiet),
            plan,
            df.directives.escape,
            "/ctx/Dockerfile".into(),
            crate::registry::Access::new(vec![], vec![]),
        );
        let fake = Arc::new(FakeExecutor::default());
        b.executor = fake.clone();
        let result = b.run_all().map(|mut v| v.remove(0));
        let trace = b.trace.lock().unwrap().clone();
        let ran = fake.ran.lock().unwrap().clone();
        Built {
            keys: trace
                .iter()
                .map(|t| (t.description.clone(), t.key.clone()))
                .collect(),
            hits: trace
                .iter()
                .filter(|t| t.hit && !t.meta)
                .map(|t| t.description.clone())
                .collect(),
            ran,
            result,
            order,
        }
    }
}

fn write(dir: &Path, name: &str, body: &str) {
    let p = dir.join(name);
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, body).unwrap();
}

fn commands(b: &Built) -> Vec<String> {
    let mut v: Vec<String> = b.ran.iter().map(|r| r.argv.join(" ")).collect();
    v.sort();
    v
}

fn env_of<'a>(b: &'a Built, cmd: &str) -> &'a [String] {
    &b.ran
        .iter()
        .find(|r| r.argv.last().is_some_and(|a| a == cmd))
        .unwrap_or_else(|| panic!("{cmd} did not run"))
        .env
}

#[test]
fn target_builds_only_the_stages_it_needs_dependencies_first() {
    let kit = Kit::new(&[]);
    let df = "FROM scratch AS a\nRUN in-a\nFROM scratch AS unused\nRUN in-unused\n\
              FROM scratch AS b\nCOPY --from=a /ran /a\nRUN in-b\nFROM b\nRUN in-last\n";
    let b = kit.build(&Req {
        target: Some("b"),
        ..req(df)
    });
    b.result.as_ref().unwrap();
    assert_eq!(b.order, [0, 2]);
    assert_eq!(commands(&b), ["/bin/sh -c in-a", "/bin/sh -c in-b"]);
    let all = kit.build(&req(df));
    all.result.as_ref().unwrap();
    assert_eq!(all.order, [0, 2, 3], "the unused stage is pruned");
}

#[test]
fn args_and_env_are_scoped_per_stage() {
    let kit = Kit::new(&[]);
    let df = "ARG V=global\nFROM scratch AS a\nARG V\nENV E=from-a\nRUN a-sees\n\
              FROM scratch AS b\nRUN b-sees\nFROM a AS c\nRUN c-sees\n\
              FROM scratch\nARG V=own\nCOPY --from=b /ran /b\nCOPY --from=c /ran /c\nRUN d-sees\n";
    let b = kit.build(&req(df));
    b.result.as_ref().unwrap();
    let has = |cmd: &str, e: &str| env_of(&b, cmd).iter().any(|x| x == e);
    assert!(has("a-sees", "V=global") && has("a-sees", "E=from-a"));
    // ARG is not inherited by another stage, nor by a stage built FROM
    // this one; ENV is inherited only through FROM.
    assert!(!env_of(&b, "b-sees")
        .iter()
        .any(|x| x.starts_with("V=") || x.starts_with("E=")));
    assert!(has("c-sees", "E=from-a") && !env_of(&b, "c-sees").iter().any(|x| x.starts_with("V=")));
    assert!(has("d-sees", "V=own"));
    let over = kit.build(&Req {
        args: &[("V", "cli")],
        ..req(df)
    });
    assert!(env_of(&over, "a-sees").iter().any(|x| x == "V=cli"));
    assert!(env_of(&over, "d-sees").iter().any(|x| x == "V=cli"));
}

#[test]
fn each_input_changes_the_key_and_nothing_else_does() {
    let kit = Kit::new(&[("app.py", "print(1)\n"), ("other.txt", "x\n")]);
    // Owned by whoever runs the test, so that it needs no root.
    let copy = format!(
        "COPY --chown={}:{} app.py /app/",
        rustix::process::getuid().as_raw(),
        rustix::process::getgid().as_raw()
    );
    let df = &format!("FROM scratch\nARG V=1\nENV E=1\n{copy}\nRUN step\nLABEL l=1\n");
    let base = kit.build(&req(df));
    base.result.as_ref().unwrap();
    let again = kit.build(&req(df));
    assert_eq!(again.keys, base.keys, "the same build has the same keys");
    assert!(again.ran.is_empty(), "and hits every step");
    assert_eq!(again.hits, [copy.as_str(), "RUN step"]);

    // Nothing the step does not read: a file it does not copy, an unused
    // build arg, a proxy arg, the parallelism.
    write(kit.ctx.path(), "other.txt", "y\n");
    let same = kit.build(&Req {
        args: &[("UNUSED", "1"), ("HTTP_PROXY", "http://198.18.0.1:3128")],
        workers: 1,
        ..req(df)
    });
    assert_eq!(same.keys, base.keys);
    assert!(same.ran.is_empty());

    // Each input it does read changes its key and every key after it,
    // and none before it.
    let steps: Vec<&str> = vec!["ARG V=1", "ENV E=1", &copy, "RUN step", "LABEL l=1"];
    let changed_from = |b: &Built, first: usize| {
        for (i, s) in steps.iter().enumerate() {
            let (old, new) = (base.keys.get(*s), b.keys.get(*s));
            if i < first {
                assert_eq!(old, new, "{s} must keep its key");
            } else if let (Some(o), Some(n)) = (old, new) {
                assert_ne!(o, n, "{s} must get a new key");
            }
        }
    };
    changed_from(
        &kit.build(&Req {
            args: &[("V", "2")],
            ..req(df)
        }),
        0,
    );
    let env2 = df.replace("ENV E=1", "ENV E=2");
    let b = kit.build(&req(&env2));
    assert_eq!(b.keys.get("ARG V=1"), base.keys.get("ARG V=1"));
    assert_ne!(b.keys.get("RUN step"), base.keys.get("RUN step"));
    write(kit.ctx.path(), "app.py", "print(2)\n");
    changed_from(&kit.build(&req(df)), 2);
    let host = kit.build(&Req {
        network: NetworkArg::None,
        ..req(df)
    });
    assert_eq!(host.keys.get(&copy), kit.build(&req(df)).keys.get(&copy));
    assert_ne!(
        host.keys.get("RUN step"),
        kit.build(&req(df)).keys.get("RUN step")
    );
    assert_eq!(host.ran[0].network, Network::None);
}

#[test]
fn max_parallelism_bounds_how_many_stages_run_at_once() {
    let kit = Kit::new(&[]);
    let df = "FROM scratch AS a\nRUN slow-a\nFROM scratch AS b\nRUN slow-b\n\
              FROM scratch\nCOPY --from=a /ran /a\nCOPY --from=b /ran /b\nRUN last\n";
    let overlap = |b: &Built| {
        let r = |c: &str| b.ran.iter().find(|r| r.argv.last().unwrap() == c).unwrap();
        let (a, bb) = (r("slow-a"), r("slow-b"));
        a.started < bb.ended && bb.started < a.ended
    };
    let one = kit.build(&Req {
        workers: 1,
        ..req(df)
    });
    one.result.as_ref().unwrap();
    assert!(!overlap(&one), "one worker runs one stage at a time");
    assert_eq!(one.ran.last().unwrap().argv.last().unwrap(), "last");
    let kit2 = Kit::new(&[]);
    let two = kit2.build(&Req {
        workers: 2,
        ..req(df)
    });
    two.result.as_ref().unwrap();
    assert!(
        overlap(&two),
        "two workers run the independent stages together"
    );
    assert_eq!(two.ran.last().unwrap().argv.last().unwrap(), "last");
}

#[test]
fn a_failed_step_fails_its_dependents_with_the_cause_chain_kept() {
    let kit = Kit::new(&[]);
    let df = "FROM scratch AS a\nRUN broken\nFROM scratch AS b\nRUN fine\n\
              FROM scratch\nCOPY --from=a /ran /a\nCOPY --from=b /ran /b\nRUN never\n";
    let b = kit.build(&req(df));
    let err = b.result.as_ref().unwrap_err();
    let failure = err
        .downcast_ref::<crate::error::Failure>()
        .expect("a Failure");
    // What the user sees: the step, located, with the cause.
    assert!(
        failure.message.contains("Dockerfile:2"),
        "{}",
        failure.message
    );
    assert!(
        failure.message.contains("no such luck"),
        "{}",
        failure.message
    );
    assert!(!commands(&b).contains(&"/bin/sh -c never".to_string()));
    assert!(
        commands(&b).contains(&"/bin/sh -c fine".to_string()),
        "independent stages still run"
    );
    // What a caller can inspect: the io::Error at the end of the chain.
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(failure);
    let mut found = None;
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            found = Some(io.kind());
        }
        cur = e.source();
    }
    assert_eq!(found, Some(std::io::ErrorKind::PermissionDenied));
}

#[test]
fn a_failing_command_names_its_exit_code() {
    let kit = Kit::new(&[]);
    let b = kit.build(&req("FROM scratch\nRUN exit 3\n"));
    let msg = format!("{:#}", b.result.unwrap_err());
    assert!(msg.contains("exit code: 3"), "{msg}");
}

#[test]
fn a_stage_named_only_at_run_time_is_refused_not_waited_for() -> Result<()> {
    let kit = Kit::new(&[]);
    // The planner cannot see a stage-local ARG in --from: the step asks for
    // a stage that is not a dependency (here: not even built).
    let df = "FROM scratch AS a\nRUN in-a\nFROM scratch\nARG S=a\nCOPY --from=$S /ran /a\n";
    let b = kit.build(&Req {
        workers: 1,
        ..req(df)
    });
    let Err(e) = b.result else {
        bail!("the build should fail")
    };
    let msg = format!("{e:#}");
    assert!(
        msg.contains("stage a is read here but was not known"),
        "{msg}"
    );
    Ok(())
}

//! The typed layer: stages, instructions, per-instruction flag validation.

use std::time::Duration;

use kiln_parser::{
    parse_stages, ArgDecl, Command, Healthcheck, InstructionKind, KeyValue, NetworkMode,
    ParseError, Stages,
};

use crate::parse_ok;

fn stages(src: &str) -> Stages {
    let df = parse_ok(src);
    match parse_stages(&df) {
        Ok(s) => s,
        Err(e) => panic!("unexpected error:\n{}", e.render(src, "Dockerfile")),
    }
}

fn stage_err(src: &str) -> ParseError {
    parse_stages(&parse_ok(src)).unwrap_err()
}

#[test]
fn stages_and_global_args() {
    let s = stages(
        "ARG BASE=alpine\nARG V\nFROM --platform=$BUILDPLATFORM ${BASE} AS Build\nRUN make\nFROM scratch\nCOPY --from=build /out /\n",
    );
    assert_eq!(
        s.global_args,
        [
            ArgDecl {
                name: "BASE".into(),
                default: Some("alpine".into())
            },
            ArgDecl {
                name: "V".into(),
                default: None
            },
        ]
    );
    assert_eq!(s.stages.len(), 2);
    let b = &s.stages[0];
    assert_eq!(
        b.name.as_deref(),
        Some("build"),
        "stage names are lower-cased"
    );
    assert_eq!(b.base, "${BASE}");
    assert_eq!(b.platform.as_deref(), Some("$BUILDPLATFORM"));
    assert_eq!(b.span.line, 3);
    assert_eq!(s.stages[1].name, None);
    let InstructionKind::Copy(c) = &s.stages[1].instructions[0].kind else {
        panic!()
    };
    assert_eq!(c.from.as_deref(), Some("build"));
    assert_eq!(c.sources, ["/out"]);
    assert_eq!(c.dest, "/");
}

#[test]
fn every_instruction_kind() {
    let s = stages(concat!(
        "FROM a\n",
        "RUN [\"echo\", \"x\"]\n",
        "RUN --network=host --security=insecure echo hi\n",
        "COPY --chown=1:2 --chmod=644 --link --parents --exclude=*.tmp --exclude=*.log a b /d/\n",
        "ADD --checksum=sha256:abc --keep-git-dir --unpack=false --link=false https://x/y.tgz /\n",
        "ENV A=1 B=\"2\"\n",
        "LABEL k=v\n",
        "ARG X=1 Y\n",
        "WORKDIR /w\n",
        "USER app:app\n",
        "EXPOSE 80/tcp 443\n",
        "VOLUME [\"/v1\", \"/v2\"]\n",
        "CMD run.sh\n",
        "ENTRYPOINT [\"/bin/x\"]\n",
        "SHELL [\"/bin/bash\", \"-c\"]\n",
        "STOPSIGNAL SIGTERM\n",
        "HEALTHCHECK --interval=30s --timeout=1m30s --start-period=0s --start-interval=500ms --retries=3 CMD curl -f x\n",
        "ONBUILD RUN echo trigger\n",
        "MAINTAINER me\n",
    ));
    let k: Vec<&InstructionKind> = s.stages[0].instructions.iter().map(|i| &i.kind).collect();
    let InstructionKind::Run(r) = k[0] else {
        panic!()
    };
    assert_eq!(r.command, Command::Exec(vec!["echo".into(), "x".into()]));
    let InstructionKind::Run(r) = k[1] else {
        panic!()
    };
    assert_eq!(r.command, Command::Shell("echo hi".into()));
    assert_eq!(r.network, Some(NetworkMode::Host));
    assert_eq!(r.security.as_deref(), Some("insecure"));
    let InstructionKind::Copy(c) = k[2] else {
        panic!()
    };
    assert_eq!(
        (c.chown.as_deref(), c.chmod.as_deref(), c.link, c.parents),
        (Some("1:2"), Some("644"), true, true)
    );
    assert_eq!(c.exclude, ["*.tmp", "*.log"]);
    assert_eq!(c.sources, ["a", "b"]);
    let InstructionKind::Add(a) = k[3] else {
        panic!()
    };
    assert_eq!(a.checksum.as_deref(), Some("sha256:abc"));
    assert!(a.keep_git_dir);
    assert_eq!(a.unpack, Some(false));
    assert!(!a.link);
    assert_eq!(
        k[4],
        &InstructionKind::Env(vec![
            KeyValue {
                key: "A".into(),
                value: "1".into()
            },
            KeyValue {
                key: "B".into(),
                value: "\"2\"".into()
            },
        ])
    );
    assert_eq!(
        k[5],
        &InstructionKind::Label(vec![KeyValue {
            key: "k".into(),
            value: "v".into()
        }])
    );
    assert_eq!(
        k[6],
        &InstructionKind::Arg(vec![
            ArgDecl {
                name: "X".into(),
                default: Some("1".into())
            },
            ArgDecl {
                name: "Y".into(),
                default: None
            },
        ])
    );
    assert_eq!(k[7], &InstructionKind::Workdir("/w".into()));
    assert_eq!(k[8], &InstructionKind::User("app:app".into()));
    assert_eq!(
        k[9],
        &InstructionKind::Expose(vec!["80/tcp".into(), "443".into()])
    );
    assert_eq!(
        k[10],
        &InstructionKind::Volume(vec!["/v1".into(), "/v2".into()])
    );
    assert_eq!(
        k[11],
        &InstructionKind::Cmd(Command::Shell("run.sh".into()))
    );
    assert_eq!(
        k[12],
        &InstructionKind::Entrypoint(Command::Exec(vec!["/bin/x".into()]))
    );
    assert_eq!(
        k[13],
        &InstructionKind::Shell(vec!["/bin/bash".into(), "-c".into()])
    );
    assert_eq!(k[14], &InstructionKind::StopSignal("SIGTERM".into()));
    assert_eq!(
        k[15],
        &InstructionKind::Healthcheck(Healthcheck::Check {
            test: Command::Shell("curl -f x".into()),
            interval: Some(Duration::from_secs(30)),
            timeout: Some(Duration::from_secs(90)),
            start_period: Some(Duration::ZERO),
            start_interval: Some(Duration::from_millis(500)),
            retries: Some(3),
        })
    );
    assert_eq!(k[16], &InstructionKind::Onbuild("RUN echo trigger".into()));
    assert_eq!(k[17], &InstructionKind::Maintainer("me".into()));
}

#[test]
fn healthcheck_none_and_errors() {
    let s = stages("FROM a\nHEALTHCHECK NONE\n");
    assert_eq!(
        s.stages[0].instructions[0].kind,
        InstructionKind::Healthcheck(Healthcheck::None)
    );
    assert_eq!(
        stage_err("FROM a\nHEALTHCHECK NONE x\n").message,
        "HEALTHCHECK NONE takes no arguments"
    );
    assert_eq!(
        stage_err("FROM a\nHEALTHCHECK CMD\n").message,
        "Missing command after HEALTHCHECK CMD"
    );
    assert_eq!(
        stage_err("FROM a\nHEALTHCHECK CONNECT TCP 7000\n").message,
        "Unknown type \"CONNECT\" in HEALTHCHECK (try CMD)"
    );
    assert_eq!(
        stage_err("FROM a\nHEALTHCHECK --interval=1us CMD x\n").message,
        "Interval \"interval\" cannot be less than 1ms"
    );
    assert_eq!(
        stage_err("FROM a\nHEALTHCHECK --retries=-1 CMD x\n").message,
        "--retries cannot be negative (-1)"
    );
    assert_eq!(
        stage_err("FROM a\nHEALTHCHECK --timeout=5 CMD x\n").message,
        "time: invalid duration \"5\""
    );
}

#[test]
fn unknown_flag_with_suggestion_and_column() {
    let src = "FROM a\nCOPY --chmod=644 --chwon=1 a b\n";
    let e = stage_err(src);
    assert_eq!(e.message, "unknown flag: chwon");
    assert_eq!(e.hint.as_deref(), Some("did you mean --chown?"));
    assert_eq!((e.span.line, e.span.column), (2, 18));
    let r = e.render(src, "Dockerfile");
    assert_eq!(
        r,
        "Dockerfile:2:18: unknown flag: chwon\n  2 | COPY --chmod=644 --chwon=1 a b\n    |                  ^^^^^^^^^\n  hint: did you mean --chown?\n"
    );
}

#[test]
fn flags_on_instructions_that_take_none() {
    let e = stage_err("FROM a\nWORKDIR --x=1 /w\n");
    assert_eq!(e.message, "unknown flag: x");
    assert_eq!(e.hint.as_deref(), Some("WORKDIR takes no flags"));
}

#[test]
fn duplicate_and_malformed_flags() {
    assert_eq!(
        stage_err("FROM a\nCOPY --from=a --from=b x y\n").message,
        "duplicate flag specified: from"
    );
    assert_eq!(
        stage_err("FROM a\nCOPY --from x y\n").message,
        "missing a value on flag: from"
    );
    assert_eq!(
        stage_err("FROM a\nCOPY --link= x y\n").message,
        "missing a value on flag: link"
    );
    assert_eq!(
        stage_err("FROM a\nCOPY --link=maybe x y\n").message,
        "expecting boolean value for flag link, not: maybe"
    );
    assert_eq!(stage_err("FROM --plat=x a\n").message, "unknown flag: plat");
    assert_eq!(
        stage_err("FROM a\nRUN --network=bridge x\n").message,
        "unsupported network mode \"bridge\""
    );
    // repeated --mount and --exclude are fine
    let s = stages("FROM a\nRUN --mount=type=tmpfs,target=/t --mount=type=cache,target=/c x\n");
    let InstructionKind::Run(r) = &s.stages[0].instructions[0].kind else {
        panic!()
    };
    assert_eq!(r.mounts.len(), 2);
    assert_eq!(
        r.mount_specs,
        ["type=tmpfs,target=/t", "type=cache,target=/c"]
    );
}

#[test]
fn argument_count_errors() {
    assert_eq!(
        stage_err("FROM a b\n").message,
        "FROM requires either one or three arguments"
    );
    assert_eq!(
        stage_err("FROM a AS 1x\n").message,
        "invalid name for build stage: \"1x\", name can't start with a number or contain symbols"
    );
    assert_eq!(
        stage_err("FROM a\nCOPY onlyone\n").message,
        "COPY requires at least two arguments, but only one was provided. Destination could not be determined."
    );
    assert_eq!(
        stage_err("FROM a\nWORKDIR\n").message,
        "WORKDIR requires exactly one argument"
    );
    assert_eq!(
        stage_err("FROM a\nEXPOSE\n").message,
        "EXPOSE requires at least one argument"
    );
    assert_eq!(
        stage_err("FROM a\nSHELL /bin/sh -c\n").message,
        "SHELL requires the arguments to be in JSON form"
    );
    assert_eq!(
        stage_err("FROM a\nENV =x\n").message,
        "ENV names can not be blank"
    );
    assert_eq!(
        stage_err("FROM a\nLABEL =x\n").message,
        "LABEL names can not be blank"
    );
    assert_eq!(
        stage_err("FROM a\nARG =x\n").message,
        "ARG names can not be blank"
    );
    assert_eq!(
        stage_err("FROM a\nONBUILD FROM b\n").message,
        "FROM isn't allowed as an ONBUILD trigger"
    );
    assert_eq!(
        stage_err("FROM a\nVOLUME [\"\"]\n").message,
        "VOLUME specified can not be an empty string"
    );
}

#[test]
fn instructions_before_from() {
    let e = stage_err("ARG A\nRUN x\nFROM a\n");
    assert_eq!(e.message, "no build stage in current context");
    assert_eq!(e.span.line, 2);
}

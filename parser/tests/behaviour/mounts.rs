use kiln_parser::{parse_mount, parse_mount_with, parse_stages, Mount, Sharing};

use crate::parse_ok;

#[test]
fn bind_defaults_and_aliases() {
    assert_eq!(
        parse_mount("target=/src").unwrap(),
        Mount::Bind {
            target: "/src".into(),
            source: None,
            from: None,
            readwrite: false
        }
    );
    assert_eq!(
        parse_mount("type=bind,src=go.mod,dst=/m,from=builder,rw").unwrap(),
        Mount::Bind {
            target: "/m".into(),
            source: Some("go.mod".into()),
            from: Some("builder".into()),
            readwrite: true
        }
    );
    assert_eq!(
        parse_mount("type=BIND,source=a,destination=/b,readwrite=true").unwrap(),
        Mount::Bind {
            target: "/b".into(),
            source: Some("a".into()),
            from: None,
            readwrite: true
        }
    );
}

#[test]
fn cache_with_all_options() {
    assert_eq!(
        parse_mount("type=cache,id=go,target=/root/.cache,sharing=LOCKED,from=base,source=/c,mode=0755,uid=1000,gid=1001,ro").unwrap(),
        Mount::Cache {
            target: "/root/.cache".into(),
            id: Some("go".into()),
            sharing: Sharing::Locked,
            from: Some("base".into()),
            source: Some("/c".into()),
            mode: Some(0o755),
            uid: Some(1000),
            gid: Some(1001),
            readonly: true,
        }
    );
    let Mount::Cache {
        sharing, readonly, ..
    } = parse_mount("type=cache,target=/c").unwrap()
    else {
        panic!()
    };
    assert_eq!(
        (sharing, readonly),
        (Sharing::Shared, false),
        "cache is shared and writable by default"
    );
    let Mount::Cache { sharing, .. } = parse_mount("type=cache,target=/c,sharing=private").unwrap()
    else {
        panic!()
    };
    assert_eq!(sharing, Sharing::Private);
}

#[test]
fn tmpfs_secret_ssh() {
    assert_eq!(
        parse_mount("type=tmpfs,target=/t,size=64m").unwrap(),
        Mount::Tmpfs {
            target: "/t".into(),
            size: Some(64 << 20)
        }
    );
    assert_eq!(
        parse_mount("type=secret,id=tok,env=TOKEN,required,mode=0400,uid=1,gid=2").unwrap(),
        Mount::Secret {
            id: Some("tok".into()),
            target: None,
            env: Some("TOKEN".into()),
            required: true,
            mode: Some(0o400),
            uid: Some(1),
            gid: Some(2)
        }
    );
    assert_eq!(
        parse_mount("type=secret,src=tok,target=/run/secrets/t,required=false").unwrap(),
        Mount::Secret {
            id: Some("tok".into()),
            target: Some("/run/secrets/t".into()),
            env: None,
            required: false,
            mode: None,
            uid: None,
            gid: None
        }
    );
    assert_eq!(
        parse_mount("type=ssh,id=default,target=/s,required=true").unwrap(),
        Mount::Ssh {
            id: Some("default".into()),
            target: Some("/s".into()),
            required: true,
            mode: None,
            uid: None,
            gid: None
        }
    );
}

#[test]
fn quoted_csv_values() {
    let Mount::Bind { source, .. } = parse_mount("\"source=a,b\",target=/x").unwrap() else {
        panic!()
    };
    assert_eq!(source.as_deref(), Some("a,b"));
}

#[test]
fn a_trailing_dollar_in_from_is_a_name_not_a_variable() {
    // BuildKit's rule: only a `$` with something after it is a variable.
    match parse_mount("type=bind,from=odd$,target=/x").unwrap() {
        Mount::Bind { from, .. } => assert_eq!(from.as_deref(), Some("odd$")),
        m => panic!("{m:?}"),
    }
}

#[test]
fn errors() {
    let cases = [
        ("type=nfs,target=/x", "unsupported mount type \"nfs\""),
        (
            "type=bind,from=$STAGE,target=/x",
            "'from' doesn't support variable expansion, define alias stage instead",
        ),
        (
            "type=cache,from=${BASE}x,target=/x",
            "'from' doesn't support variable expansion, define alias stage instead",
        ),
        (
            "type=cache,target=/x,sharing=maybe",
            "unsupported sharing value \"maybe\"",
        ),
        (
            "type=bind,target=/x,mode=0755",
            "mode not allowed for \"bind\" type mounts",
        ),
        (
            "type=tmpfs,target=/x,uid=1",
            "uid not allowed for \"tmpfs\" type mounts",
        ),
        ("type=cache,target=/x,mode=9", "invalid value 9 for mode"),
        (
            "type=bind,target=/x,required",
            "unexpected key 'required' for mount type 'bind'",
        ),
        (
            "type=bind,target=/x,sharing=shared",
            "invalid cache sharing set for bind mount",
        ),
        (
            "type=secret",
            "invalid secret mount. one of source, target required",
        ),
        ("type=secret,id=a,src=b", "both source and id can't be set"),
        (
            "type=secret,id=a,from=x",
            "secret mount should not have a from",
        ),
        (
            "type=cache,targte=/x",
            "unexpected key 'targte' in 'targte=/x'",
        ),
        (
            "type=cache,target",
            "invalid field 'target' must be a key=value pair",
        ),
        ("type=cache", "mount target is required for cache mounts"),
        (
            "type=bind,ro=maybe,target=/x",
            "invalid value for ro: maybe",
        ),
        (
            "type=\"cache,target=/x",
            "failed to parse csv mounts: bare \" in non-quoted-field",
        ),
        (
            "\"type=cache,target=/x",
            "failed to parse csv mounts: extraneous or missing \" in quoted-field",
        ),
    ];
    for (spec, want) in cases {
        match parse_mount(spec) {
            Ok(m) => panic!("{spec}: expected an error, got {m:?}"),
            Err(e) => assert_eq!(e.message, want, "{spec}"),
        }
    }
    assert_eq!(
        parse_mount("type=cache,targte=/x")
            .unwrap_err()
            .hint
            .as_deref(),
        Some("did you mean target?")
    );
    assert_eq!(
        parse_mount("type=cahce,target=/x")
            .unwrap_err()
            .hint
            .as_deref(),
        Some("did you mean cache?")
    );
}

#[test]
fn variables_are_left_for_the_builder() {
    let Mount::Cache { target, uid, .. } =
        parse_mount("type=cache,target=$HOME/.cache,uid=$UID").unwrap()
    else {
        panic!()
    };
    assert_eq!((target.as_str(), uid), ("$HOME/.cache", None));
    let m = parse_mount_with("type=cache,target=$HOME/.cache,uid=$UID", |v| {
        Ok(v.replace("$HOME", "/root").replace("$UID", "42"))
    })
    .unwrap();
    let Mount::Cache { target, uid, .. } = m else {
        panic!()
    };
    assert_eq!((target.as_str(), uid), ("/root/.cache", Some(42)));
}

#[test]
fn bad_mount_in_a_dockerfile_points_at_the_flag() {
    let src = "FROM a\nRUN --network=none --mount=type=cache,target=/c,mode=x make\n";
    let e = parse_stages(&parse_ok(src)).unwrap_err();
    assert_eq!(e.message, "invalid value x for mode");
    assert_eq!((e.span.line, e.span.column), (2, 28));
}

#[test]
fn mount_ids_follow_runcs_range() {
    let Mount::Cache { uid, gid, .. } =
        parse_mount("type=cache,target=/c,uid=2147483647,gid=0").unwrap()
    else {
        panic!()
    };
    assert_eq!((uid, gid), (Some(2147483647), Some(0)));
    for (spec, key, v) in [
        ("type=cache,target=/c,uid=4294967295", "uid", "4294967295"),
        ("type=secret,id=s,gid=2147483648", "gid", "2147483648"),
        ("type=cache,target=/c,uid=99999999999", "uid", "99999999999"),
    ] {
        let e = parse_mount(spec).unwrap_err();
        assert_eq!(
            e.message,
            format!("invalid value {v} for {key}: uids and gids must be in range 0-2147483647"),
            "{spec}"
        );
    }
    assert_eq!(
        parse_mount("type=cache,target=/c,uid=-1")
            .unwrap_err()
            .message,
        "invalid value -1 for uid"
    );
    // After expansion, too.
    let e = parse_mount_with("type=cache,target=/c,uid=$U", |v| {
        Ok(v.replace("$U", "4294967295"))
    })
    .unwrap_err();
    assert!(e.message.contains("must be in range"), "{}", e.message);
}

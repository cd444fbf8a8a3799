//! Image references through the binary: the distribution grammar (a
//! lower-case repository) wherever a name is read, and an error that names
//! the reference instead of "No such image" or a registry called `UPPER`.

mod common;

use common::{write_tree, Kiln};

const UPPER: &str = "\"UPPER/x\" is not a valid repository/tag: invalid reference format: \
                     repository name (UPPER/x) must be lowercase";

fn setup() -> Option<Kiln> {
    common::root_with_busybox("builds need root")
}

fn images(k: &Kiln) -> String {
    k.run(&["images", "--format", "json"]).ok().stdout()
}

#[test]
fn tag_refuses_an_upper_case_repository_and_keeps_the_images() {
    let Some(k) = setup() else { return };
    let before = images(&k);
    for (target, why) in [
        ("UPPER/x", UPPER.to_string()),
        (
            "upper/X:t",
            "repository name (upper/X) must be lowercase".to_string(),
        ),
        (
            "a..b/c",
            "\"a..b/c\" is not a valid repository/tag: invalid reference format".to_string(),
        ),
        ("x:-t", "tag \"-t\" must match".to_string()),
    ] {
        let r = k.run(&["tag", "busybox:latest", target]).fails();
        assert!(r.stderr().contains(&why), "{target}: {}", r.stderr());
        assert_eq!(r.stderr().lines().count(), 1, "{}", r.stderr());
    }
    assert_eq!(images(&k), before);
    // What the grammar allows: an upper-case tag, an upper-case host name.
    k.run(&["tag", "busybox:latest", "lower:UP"]).ok();
    k.run(&["tag", "busybox:latest", "Host.example/lower"]).ok();
    let after = images(&k);
    assert!(after.contains("lower:UP"), "{after}");
    assert!(after.contains("Host.example/lower:latest"), "{after}");
}

#[test]
fn every_command_reading_a_name_says_it_is_invalid() {
    let Some(k) = setup() else { return };
    for args in [
        vec!["rmi", "UPPER/x"],
        vec!["inspect", "UPPER/x"],
        vec!["history", "UPPER/x"],
        vec!["run", "--rm", "UPPER/x", "true"],
        vec!["pull", "UPPER/x"],
        vec!["push", "UPPER/x"],
        vec!["save", "-o", "/dev/null", "UPPER/x"],
    ] {
        let r = k.run(&args).fails();
        assert!(r.stderr().contains(UPPER), "{args:?}: {}", r.stderr());
        assert!(!r.stderr().contains("Unable to find"), "{}", r.stderr());
        assert!(!r.stderr().contains("kiln: kiln:"), "{}", r.stderr());
    }
    let ctx = tempfile::tempdir().unwrap();
    write_tree(ctx.path(), &[("Dockerfile", "FROM scratch\n")]);
    let r = k
        .run(&["build", "-t", "UPPER/x", ctx.path().to_str().unwrap()])
        .fails();
    assert!(
        r.stderr()
            .contains("repository name (UPPER/x) must be lowercase"),
        "{}",
        r.stderr()
    );
    // In a Dockerfile: FROM and COPY --from, at their line.
    for (df, line) in [
        ("FROM UPPER/x\n", "Dockerfile:1"),
        ("FROM busybox\nCOPY --from=UPPER/x /x /x\n", "Dockerfile:2"),
    ] {
        let ctx = tempfile::tempdir().unwrap();
        write_tree(ctx.path(), &[("Dockerfile", df)]);
        let r = k
            .run(&["build", "--progress=plain", ctx.path().to_str().unwrap()])
            .fails();
        let e = r.stderr();
        assert!(e.contains(&format!("ERROR: {UPPER}")), "{df}: {e}");
        assert!(e.contains(line), "{df}: {e}");
    }
}

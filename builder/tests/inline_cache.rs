//! A fleet of CI runners on one registry, beyond one cache ref: the inline
//! cache (`--cache-to type=inline`, read back with `--cache-from IMAGE`),
//! several `--cache-from` sources where the first hit wins and `--explain`
//! names where each hit came from, a re-export that replaces its ref, and
//! `kiln cache prune --registry` deleting what no kept cache names. Against
//! Debian's `docker-registry` (fixtures/registry/start-registry.sh), read
//! back over its HTTP API with curl.

mod common;

use std::process::Command;

use common::{cache_steps, is_root, require, write_tree, Kiln, Registry};
use serde_json::Value;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";

/// `curl` against the registry: (HTTP status, body).
fn curl(method: &str, url: &str) -> (u16, String) {
    // HEAD with -I: with -X HEAD curl waits for the body the headers announce.
    let how: &[&str] = if method == "HEAD" {
        &["-I"]
    } else {
        &["-X", method]
    };
    let out = Command::new("curl")
        .args(["--noproxy", "*", "-s", "--max-time", "20"])
        .args(how)
        .arg("-H")
        .arg(format!("Accept: {OCI_MANIFEST}"))
        .args(["-w", "\n%{http_code}", url])
        .output()
        .expect("curl runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n').unwrap_or(("", &text));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn json(s: &str) -> Value {
    serde_json::from_str(s).unwrap_or_else(|e| panic!("not JSON ({e}):\n{s}"))
}

struct Setup {
    reg: Registry,
    ctx: tempfile::TempDir,
}

impl Setup {
    /// `http://ADDR/v2/REPO/KIND/REF`.
    fn url(&self, repo: &str, kind: &str, reference: &str) -> String {
        format!("http://{}/v2/{repo}/{kind}/{reference}", self.reg.addr)
    }

    fn name(&self, repo_tag: &str) -> String {
        format!("{}/{repo_tag}", self.reg.addr)
    }

    /// The manifest `repo:reference` names (status 200 asserted).
    fn manifest(&self, repo: &str, reference: &str) -> Value {
        let (code, body) = curl("GET", &self.url(repo, "manifests", reference));
        assert_eq!(code, 200, "{repo}:{reference}: {body}");
        json(&body)
    }

    /// The blob of `repo` named by `digest`, as JSON.
    fn blob_json(&self, repo: &str, digest: &str) -> Value {
        let (code, body) = curl("GET", &self.url(repo, "blobs", digest));
        assert_eq!(code, 200, "{repo}@{digest}: {body}");
        json(&body)
    }

    fn has_blob(&self, repo: &str, digest: &str) -> bool {
        curl("HEAD", &self.url(repo, "blobs", digest)).0 == 200
    }

    fn tags(&self, repo: &str) -> Vec<String> {
        let (_, body) = curl("GET", &self.url(repo, "tags", "list"));
        let mut t: Vec<String> = json(&body)["tags"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(Value::as_str)
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        t.sort();
        t
    }

    /// The digest of the manifest `repo:tag` names.
    fn digest(&self, repo: &str, tag: &str) -> String {
        let out = Command::new("curl")
            .args(["--noproxy", "*", "-s", "-I", "-H"])
            .arg(format!("Accept: {OCI_MANIFEST}"))
            .arg(self.url(repo, "manifests", tag))
            .output()
            .expect("curl runs");
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .find_map(|l| {
                l.to_ascii_lowercase()
                    .strip_prefix("docker-content-digest:")
                    .map(|d| d.trim().to_string())
            })
            .unwrap_or_else(|| panic!("{repo}:{tag} has no digest"))
    }

    fn edit(&self, file: &str, text: &str) {
        std::fs::write(self.ctx.path().join(file), text).unwrap();
    }

    fn dir(&self) -> &str {
        self.ctx.path().to_str().unwrap()
    }
}

fn dockerfile(reg: &str) -> String {
    format!(
        "FROM {reg}/base/busybox:1\n\
         RUN echo built > /built && head -c 100000 /dev/urandom > /noise\n\
         COPY app.txt /app/\n\
         CMD [\"cat\", \"/app/app.txt\"]\n"
    )
}

fn setup_on(reg: Option<Registry>) -> Option<Setup> {
    if !require(
        is_root(),
        "these tests build and run containers: run as root",
    ) {
        return None;
    }
    let reg = reg?;
    let seed = Kiln::new();
    if !seed.with_busybox() {
        return None;
    }
    let base = format!("{}/base/busybox:1", reg.addr);
    seed.run(&["tag", "busybox:latest", &base]).ok();
    seed.run(&["push", "-q", &base]).ok();
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            ("Dockerfile", dockerfile(&reg.addr)),
            ("app.txt", "app v1\n".to_string()),
        ],
    );
    Some(Setup { reg, ctx })
}

fn setup() -> Option<Setup> {
    setup_on(Registry::start(false))
}

fn build(k: &Kiln, s: &Setup, extra: &[&str]) -> common::Run {
    let mut args = vec!["build", "--progress=plain"];
    args.extend_from_slice(extra);
    args.push(s.dir());
    k.run(&args).ok()
}

fn image_id(k: &Kiln, name: &str) -> String {
    let v = json(&k.run(&["inspect", name]).ok().stdout());
    v[0]["Id"].as_str().unwrap().to_string()
}

/// The cache steps that ran.
fn ran(stderr: &str) -> Vec<String> {
    cache_steps(stderr)
        .into_iter()
        .filter(|(_, o)| o == "RAN")
        .map(|(l, _)| l)
        .collect()
}

/// The `CACHED (from ...)` line of the step whose progress label contains
/// `step`: what it says after `from `.
fn hit_source(stderr: &str, step: &str) -> String {
    let mut label = None;
    for line in stderr.lines() {
        let Some((n, text)) = line.strip_prefix('#').and_then(|r| r.split_once(' ')) else {
            continue;
        };
        if text.starts_with('[') && text.contains(step) {
            label = Some(n.to_string());
        } else if label.as_deref() == Some(n) {
            if let Some(o) = text.strip_prefix("CACHED (from ") {
                return o.strip_suffix(')').unwrap_or(o).to_string();
            }
        }
    }
    panic!("no CACHED (from ...) line for {step}:\n{stderr}")
}

#[test]
fn an_inline_cache_round_trips_across_two_empty_roots() {
    let Some(s) = setup() else {
        return;
    };
    let image = s.name("app/img:main");
    // Runner 1: the image carries its cache in its config.
    let a = Kiln::new();
    build(
        &a,
        &s,
        &["--cache-to", "type=inline", "--push", "-t", &image],
    );
    let m = s.manifest("app/img", "main");
    let config = s.blob_json("app/img", m["config"]["digest"].as_str().unwrap());
    let records = config["kiln.cache.v1"]["records"].as_array().unwrap();
    // FROM, RUN, COPY, CMD: the image's own chain.
    assert_eq!(records.len(), 4, "{config}");
    assert!(
        records
            .iter()
            .all(|r| r["layer"].is_null() || r["layer"].is_string()),
        "layers travel by diffID: {config}"
    );

    // Runner 2, empty: every step cached from the image, the same ID.
    let b = Kiln::new();
    let run = build(
        &b,
        &s,
        &[
            "--explain",
            "--cache-from",
            &image,
            "--cache-to",
            "type=inline",
            "--push",
            "-t",
            &image,
        ],
    );
    let err = run.stderr();
    assert!(ran(&err).is_empty(), "runner 2 ran steps:\n{err}");
    assert_eq!(image_id(&b, &image), image_id(&a, &image));
    assert_eq!(
        hit_source(&err, "RUN echo built"),
        format!("type=registry,ref={image}")
    );
    assert!(
        err.contains("explain: where the cache hits came from:"),
        "{err}"
    );
    // `cache ls` says where the records came from; `cache why` of the image
    // keeps the report.
    let ls = json(&b.run(&["cache", "ls", "--format", "json"]).ok().stdout());
    let copy = ls
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["instruction"] == "COPY app.txt /app/")
        .expect("the COPY record");
    assert_eq!(
        copy["imported_from"],
        Value::String(format!("type=registry,ref={image}"))
    );
    let why = b.run(&["cache", "why", &image]).ok().stdout();
    assert!(why.contains("CACHED (from type=registry,ref="), "{why}");
    // Runner 2 pushed the same image again: it runs.
    let out = b.run(&["run", "--rm", &image]).ok().stdout();
    assert_eq!(out, "app v1\n");

    // A root that has the image locally reads the cache from it (no
    // registry needed for the records).
    let c = Kiln::new();
    c.run(&["pull", "-q", &image]).ok();
    let run = build(&c, &s, &["--explain", "--cache-from", &image]);
    assert!(ran(&run.stderr()).is_empty(), "{}", run.stderr());
    assert_eq!(
        hit_source(&run.stderr(), "COPY app.txt"),
        format!("{image} (local image)")
    );

    // A local image of that name without an inline cache: the registry's
    // is read instead.
    let e = Kiln::new();
    assert!(e.with_busybox());
    e.run(&["tag", "busybox:latest", &image]).ok();
    let run = build(&e, &s, &["--explain", "--cache-from", &image]);
    assert!(ran(&run.stderr()).is_empty(), "{}", run.stderr());
    assert_eq!(
        hit_source(&run.stderr(), "COPY app.txt"),
        format!("type=registry,ref={image}")
    );
}

#[test]
fn two_cache_sources_the_first_hit_wins_and_explain_names_each() {
    let Some(s) = setup() else {
        return;
    };
    let main_cache = s.name("app/cache:main");
    let pr_image = s.name("app/img:pr-7");
    // main: app v1, a registry cache of every step.
    build(
        &Kiln::new(),
        &s,
        &[
            "--cache-to",
            &format!("type=registry,ref={main_cache},mode=max"),
        ],
    );
    // The branch: app v2, its image pushed with an inline cache.
    s.edit("app.txt", "app v2\n");
    build(
        &Kiln::new(),
        &s,
        &["--cache-to", "type=inline", "--push", "-t", &pr_image],
    );
    let from_main = format!("type=registry,ref={main_cache}");
    let from_pr = format!("type=registry,ref={pr_image}");

    // main first: the RUN both have is main's; the COPY of v2 only the
    // branch has.
    let c = Kiln::new();
    let run = build(
        &c,
        &s,
        &[
            "--explain",
            "--cache-from",
            &from_main,
            "--cache-from",
            &pr_image,
        ],
    );
    let err = run.stderr();
    assert!(ran(&err).is_empty(), "{err}");
    assert_eq!(hit_source(&err, "RUN echo built"), from_main);
    assert_eq!(hit_source(&err, "COPY app.txt"), from_pr);
    let report = err
        .split("explain: where the cache hits came from:")
        .nth(1)
        .unwrap_or_else(|| panic!("no sources in the report:\n{err}"));
    assert!(
        report.contains(&format!("CACHED (from {from_main})"))
            && report.contains(&format!("CACHED (from {from_pr})")),
        "{report}"
    );

    // The branch first: it has both, so it wins both.
    let d = Kiln::new();
    let run = build(
        &d,
        &s,
        &[
            "--explain",
            "--cache-from",
            &pr_image,
            "--cache-from",
            &from_main,
        ],
    );
    let err = run.stderr();
    assert!(ran(&err).is_empty(), "{err}");
    assert_eq!(hit_source(&err, "RUN echo built"), from_pr);
    assert_eq!(hit_source(&err, "COPY app.txt"), from_pr);
    let ls = d.run(&["cache", "ls"]).ok().stdout();
    assert!(
        ls.contains("IMPORTED FROM") && ls.contains(&from_pr),
        "{ls}"
    );
}

/// The records of the cache `repo:tag` names.
fn records(s: &Setup, repo: &str, tag: &str) -> Vec<Value> {
    let m = s.manifest(repo, tag);
    s.blob_json(repo, m["config"]["digest"].as_str().unwrap())["records"]
        .as_array()
        .unwrap()
        .clone()
}

#[test]
fn a_re_export_replaces_its_ref() {
    let Some(s) = setup() else {
        return;
    };
    let cache = s.name("app/cache:main");
    let to = format!("type=registry,ref={cache},mode=max");
    let a = Kiln::new();
    build(&a, &s, &["--cache-to", &to]);
    let first = s.digest("app/cache", "main");
    let n = records(&s, "app/cache", "main").len();
    s.edit("app.txt", "app v2\n");
    let run = build(
        &a,
        &s,
        &[
            "--cache-from",
            &format!("type=registry,ref={cache}"),
            "--cache-to",
            &to,
        ],
    );
    // The tag moved; the cache it names is this build's, no bigger.
    let second = s.digest("app/cache", "main");
    assert_ne!(first, second);
    let now = records(&s, "app/cache", "main");
    assert_eq!(now.len(), n, "the same steps, not old + new records");
    let copies = now
        .iter()
        .filter(|r| r["description"] == "COPY app.txt /app/")
        .count();
    assert_eq!(copies, 1, "only this build's COPY: {now:?}");
    // The manifest the tag named before is gone from the registry.
    assert_eq!(curl("GET", &s.url("app/cache", "manifests", &first)).0, 404);
    assert!(
        run.stderr().contains("named before") && run.stderr().contains("was deleted"),
        "{}",
        run.stderr()
    );
    assert_eq!(s.tags("app/cache"), vec!["main"]);
}

/// Layer digests a cache manifest names.
fn layers(m: &Value) -> Vec<String> {
    m["layers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["digest"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn prune_keeps_the_newest_caches_and_deletes_what_only_the_others_name() {
    let Some(s) = setup() else {
        return;
    };
    let k = Kiln::new();
    // Three branches, built in turn (a second apart: caches are dated by
    // their newest record, in seconds), each with a COPY layer of its own.
    for (i, b) in ["b1", "b2", "b3"].iter().enumerate() {
        s.edit("app.txt", &format!("app of {b}\n"));
        let to = format!(
            "type=registry,ref={},mode=max",
            s.name(&format!("app/cache:{b}"))
        );
        build(&k, &s, &["--cache-to", &to]);
        if i < 2 {
            std::thread::sleep(std::time::Duration::from_millis(1100));
        }
    }
    let m1 = s.manifest("app/cache", "b1");
    let config1 = m1["config"]["digest"].as_str().unwrap().to_string();
    let kept: Vec<String> = ["b2", "b3"]
        .iter()
        .flat_map(|t| layers(&s.manifest("app/cache", t)))
        .collect();
    let only_b1: Vec<String> = layers(&m1)
        .into_iter()
        .filter(|l| !kept.contains(l))
        .collect();
    assert!(!only_b1.is_empty(), "b1 has a layer of its own");
    let repo = s.name("app/cache");

    // A dry run deletes nothing.
    let dry = k
        .run(&[
            "cache",
            "prune",
            "--registry",
            &repo,
            "--keep",
            "2",
            "--dry-run",
        ])
        .ok()
        .stdout();
    assert!(dry.contains("would delete 1 cache tags: b1"), "{dry}");
    assert_eq!(s.tags("app/cache"), vec!["b1", "b2", "b3"]);

    let out = k
        .run(&["cache", "prune", "--registry", &repo, "--keep", "2"])
        .ok()
        .stdout();
    assert!(out.contains("kept 2 cache tags: b3, b2"), "{out}");
    assert!(out.contains("deleted 1 cache tags: b1"), "{out}");
    assert_eq!(s.tags("app/cache"), vec!["b2", "b3"]);
    for d in only_b1.iter().chain(std::iter::once(&config1)) {
        assert!(!s.has_blob("app/cache", d), "{d} only b1 named is deleted");
    }
    for d in &kept {
        assert!(s.has_blob("app/cache", d), "{d} a kept cache names stays");
    }

    // What the kept refs name still works: an empty runner builds b3 from
    // its cache, every step cached, and runs it (layers fetched, verified).
    let r = Kiln::new();
    let run = build(
        &r,
        &s,
        &[
            "--cache-from",
            &format!("type=registry,ref={}", s.name("app/cache:b3")),
            "-t",
            "app:b3",
        ],
    );
    assert!(ran(&run.stderr()).is_empty(), "{}", run.stderr());
    let out = r.run(&["run", "--rm", "app:b3"]).ok().stdout();
    assert_eq!(out, "app of b3\n");

    // Bad input is said plainly.
    let err = k
        .run(&[
            "cache",
            "prune",
            "--registry",
            &s.name("app/cache:b3"),
            "--keep",
            "1",
        ])
        .fails()
        .stderr();
    assert!(err.contains("not a tag"), "{err}");
    let err = k
        .run(&["cache", "prune", "--registry", &repo])
        .fails()
        .stderr();
    assert!(err.contains("needs --keep N"), "{err}");
}

#[test]
fn a_registry_without_deletes_is_said_plainly_and_keeps_everything() {
    let Some(s) = setup_on(Registry::start_without_deletes()) else {
        return;
    };
    let k = Kiln::new();
    let to = format!("type=registry,ref={},mode=max", s.name("app/cache:main"));
    build(&k, &s, &["--cache-to", &to]);
    let first = s.digest("app/cache", "main");
    // A re-export still replaces the ref; the old manifest stays, untagged,
    // and the build says so.
    s.edit("app.txt", "app v2\n");
    let run = build(&k, &s, &["--cache-to", &to]);
    assert!(
        run.stderr().contains("does not allow deletes"),
        "{}",
        run.stderr()
    );
    assert_ne!(s.digest("app/cache", "main"), first);
    assert_eq!(curl("GET", &s.url("app/cache", "manifests", &first)).0, 200);

    let repo = s.name("app/cache");
    let err = k
        .run(&["cache", "prune", "--registry", &repo, "--keep", "0"])
        .fails()
        .stderr();
    assert!(
        err.contains("does not allow deletes")
            && err.contains("storage")
            && err.contains("enabled"),
        "{err}"
    );
    assert_eq!(s.tags("app/cache"), vec!["main"]);
}

#[test]
fn an_inline_cache_keeps_a_build_reproducible() {
    let Some(k) = common::root_with_busybox("the build runs a container: run as root") else {
        return;
    };
    let ctx = tempfile::tempdir().unwrap();
    write_tree(
        ctx.path(),
        &[
            (
                "Dockerfile",
                "FROM busybox:latest\nRUN echo hi > /hi\nCOPY a /a\n",
            ),
            ("a", "a\n"),
        ],
    );
    // The records in the config are dated by SOURCE_DATE_EPOCH, as the
    // image is: a second build from scratch gives the same config.
    let run = k
        .run(&[
            "build",
            "--progress=plain",
            "--check-reproducible",
            "--cache-to",
            "type=inline",
            ctx.path().to_str().unwrap(),
        ])
        .ok();
    assert!(
        run.stderr()
            .contains("reproducible: the second build gave the same image"),
        "{}",
        run.stderr()
    );
}

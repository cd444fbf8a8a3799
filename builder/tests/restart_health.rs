//! `kiln run --restart` and HEALTHCHECK through the binary on the offline
//! busybox image: the container's monitor restarts it by docker's rules
//! (count, `kiln stop` for good), runs the image's check or the
//! `--health-*` one inside the container, and `ps`/`inspect` say what
//! docker says; bad flags get docker's errors.

mod common;

use std::time::{Duration, Instant};

use common::Kiln;
use serde_json::Value;

fn setup() -> Option<Kiln> {
    common::root_with_busybox("containers need root")
}

fn inspect(k: &Kiln, name: &str) -> Value {
    let v: Value = serde_json::from_str(&k.run(&["inspect", name]).ok().stdout()).unwrap();
    v[0].clone()
}

fn ps_status(k: &Kiln, name: &str) -> String {
    let out = k.run(&["ps", "-a"]).ok().stdout();
    let line = out
        .lines()
        .find(|l| l.ends_with(&format!("   {name}")))
        .unwrap_or_else(|| panic!("{name} not in ps -a:\n{out}"))
        .to_string();
    line
}

/// Polls `inspect` until `done` holds (or panics after `secs`).
fn wait_for(k: &Kiln, name: &str, secs: u64, done: impl Fn(&Value) -> bool) -> Value {
    let end = Instant::now() + Duration::from_secs(secs);
    loop {
        let c = inspect(k, name);
        if done(&c) {
            return c;
        }
        assert!(Instant::now() < end, "timed out waiting on {name}: {c:#}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn status(c: &Value) -> &str {
    c["State"]["Status"].as_str().unwrap()
}

fn health(c: &Value) -> &str {
    c["State"]["Health"]["Status"].as_str().unwrap_or("")
}

#[test]
fn on_failure_3_restarts_exactly_three_times() {
    let Some(k) = setup() else { return };
    let args = [
        "run",
        "-d",
        "--name",
        "flaky",
        "--network",
        "none",
        "--restart",
        "on-failure:3",
        "busybox",
        "sh",
        "-c",
        // The container's files stay across restarts, as in docker.
        "echo x >> /runs; echo attempt $(wc -l < /runs); exit 3",
    ];
    k.run(&args).ok();
    // Backoff 100 + 200 + 400 ms: done well within 10 s.
    let c = wait_for(&k, "flaky", 10, |c| status(c) == "exited");
    assert_eq!(c["RestartCount"], 3, "{c:#}");
    assert_eq!(c["State"]["ExitCode"], 3);
    assert_eq!(c["State"]["Restarting"], false);
    assert_eq!(c["HostConfig"]["RestartPolicy"]["Name"], "on-failure");
    assert_eq!(c["HostConfig"]["RestartPolicy"]["MaximumRetryCount"], 3);
    let logs = k.run(&["logs", "flaky"]).ok().stdout();
    assert_eq!(
        logs.matches("attempt").count(),
        4,
        "one run + 3 restarts: {logs}"
    );
    assert!(
        logs.contains("attempt 4\n"),
        "same filesystem each run: {logs}"
    );
    assert!(ps_status(&k, "flaky").contains("Exited (3)"));
    // Staying exited: nothing restarts it later.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(inspect(&k, "flaky")["RestartCount"], 3);
    k.run(&["rm", "flaky"]).ok();
}

#[test]
fn always_restarts_until_stop_and_then_stays_stopped() {
    let Some(k) = setup() else { return };
    let args = [
        "run",
        "-d",
        "--name",
        "again",
        "--network",
        "none",
        "--restart",
        "always",
        "busybox",
        "sh",
        "-c",
        "sleep 0.2",
    ];
    k.run(&args).ok();
    // Exit code 0 restarts too with `always`.
    wait_for(&k, "again", 10, |c| c["RestartCount"].as_u64() >= Some(2));
    // Between restarts ps says docker's `Restarting (0) ... ago`.
    let seen_restarting = (0..200).any(|_| {
        std::thread::sleep(Duration::from_millis(10));
        ps_status(&k, "again").contains("Restarting (0) ")
    });
    assert!(seen_restarting, "never saw Restarting (0) in ps");
    // rm without -f refuses it, running or restarting (docker's words).
    let refused_restarting = (0..200).any(|_| {
        let r = k.run(&["rm", "again"]);
        assert_ne!(r.code(), 0, "rm without -f removed a live container");
        std::thread::sleep(Duration::from_millis(10));
        r.stderr().contains(
            "You cannot remove a restarting container again. Stop the container before \
             attempting removal or force remove",
        )
    });
    assert!(refused_restarting);
    k.run(&["stop", "again"]).ok();
    let c = inspect(&k, "again");
    assert_eq!(status(&c), "exited", "{c:#}");
    let count = c["RestartCount"].clone();
    std::thread::sleep(Duration::from_millis(1500));
    let c = inspect(&k, "again");
    assert_eq!(status(&c), "exited", "restarted after kiln stop: {c:#}");
    assert_eq!(c["RestartCount"], count);
    assert!(!k.run(&["ps"]).ok().stdout().contains("again"));
    k.run(&["rm", "again"]).ok();
}

#[test]
fn failing_image_healthcheck_turns_unhealthy_after_retries() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    common::write_tree(
        ctx.path(),
        &[(
            "Dockerfile",
            "FROM busybox\nHEALTHCHECK --interval=200ms --retries=3 CMD [\"sh\", \"-c\", \"echo sick; exit 1\"]\n",
        )],
    );
    k.build_dir(ctx.path(), &["-t", "sick:1"]).ok();
    k.run(&[
        "run",
        "-d",
        "--name",
        "sick",
        "--network",
        "none",
        "sick:1",
        "sleep",
        "100",
    ])
    .ok();
    let c = inspect(&k, "sick");
    assert_eq!(c["Config"]["Healthcheck"]["Retries"], 3, "{c:#}");
    assert_eq!(health(&c), "starting");
    assert!(ps_status(&k, "sick").contains("(health: starting)"));
    let c = wait_for(&k, "sick", 15, |c| health(c) == "unhealthy");
    let h = &c["State"]["Health"];
    assert!(h["FailingStreak"].as_u64().unwrap() >= 3, "{h:#}");
    let log = h["Log"].as_array().unwrap();
    assert!(log.len() >= 3 && log.len() <= 5, "{h:#}");
    assert_eq!(log[0]["ExitCode"], 1);
    assert_eq!(log[0]["Output"], "sick\n");
    assert!(ps_status(&k, "sick").contains("(unhealthy)"));
    // Keeps the last five.
    let c = wait_for(&k, "sick", 15, |c| {
        c["State"]["Health"]["FailingStreak"] == 7
    });
    assert_eq!(c["State"]["Health"]["Log"].as_array().unwrap().len(), 5);

    // --no-healthcheck turns the image's off.
    k.run(&[
        "run",
        "-d",
        "--name",
        "nocheck",
        "--network",
        "none",
        "--no-healthcheck",
        "sick:1",
        "sleep",
        "100",
    ])
    .ok();
    std::thread::sleep(Duration::from_millis(800));
    let c = inspect(&k, "nocheck");
    assert!(c["State"].get("Health").is_none(), "{c:#}");
    assert!(c["Config"].get("Healthcheck").is_none(), "{c:#}");
    let st = ps_status(&k, "nocheck");
    assert!(st.contains("Up ") && !st.contains('('), "{st}");
    k.run(&["rm", "-f", "sick", "nocheck"]).ok();
}

#[test]
fn passing_health_cmd_turns_healthy_and_a_slow_one_times_out() {
    let Some(k) = setup() else { return };
    k.run(&[
        "run",
        "-d",
        "--name",
        "fine",
        "--network",
        "none",
        "--health-cmd",
        "echo fine from $HOSTNAME",
        "--health-interval",
        "200ms",
        "busybox",
        "sleep",
        "100",
    ])
    .ok();
    let c = wait_for(&k, "fine", 10, |c| health(c) == "healthy");
    assert_eq!(
        c["Config"]["Healthcheck"]["Test"],
        serde_json::json!(["CMD-SHELL", "echo fine from $HOSTNAME"])
    );
    let log = &c["State"]["Health"]["Log"][0];
    assert_eq!(log["ExitCode"], 0);
    let id = c["Id"].as_str().unwrap();
    assert_eq!(
        log["Output"],
        format!("fine from {}\n", &id[..12]),
        "ran inside the container"
    );
    assert!(ps_status(&k, "fine").contains("(healthy)"));

    k.run(&[
        "run",
        "-d",
        "--name",
        "slow",
        "--network",
        "none",
        "--health-cmd",
        "sleep 5",
        "--health-interval",
        "100ms",
        "--health-timeout",
        "300ms",
        "--health-retries",
        "1",
        "busybox",
        "sleep",
        "100",
    ])
    .ok();
    let c = wait_for(&k, "slow", 10, |c| health(c) == "unhealthy");
    let log = &c["State"]["Health"]["Log"][0];
    assert_eq!(log["ExitCode"], -1, "{c:#}");
    assert_eq!(log["Output"], "Health check exceeded timeout (300ms)");
    k.run(&["rm", "-f", "fine", "slow"]).ok();
}

#[test]
fn bad_flags_get_dockers_errors() {
    // Flags are checked before the image is looked for: no root, no image.
    let k = Kiln::new();
    for (flags, err) in [
        (
            &["--restart", "bogus"][..],
            "invalid restart policy 'bogus'",
        ),
        (
            &["--restart", "on-failure:x"],
            "invalid restart policy format: maximum retry count must be an integer",
        ),
        (
            &["--restart", "always:3"],
            "maximum retry count cannot be used with restart policy 'always'",
        ),
        (
            &["--restart", "on-failure:-1"],
            "maximum retry count cannot be negative",
        ),
        (
            &["-d", "--rm", "--restart", "always"],
            "conflicting options: cannot specify both --restart and --rm",
        ),
        (&["--restart", "always"], "--restart always needs -d"),
        (
            &["--health-interval", "5"],
            "invalid argument \"5\" for \"--health-interval\" flag: time: missing unit in duration \"5\"",
        ),
        (
            &["--health-interval", "-1s"],
            "--health-interval cannot be negative",
        ),
        (
            &["--health-retries", "-1"],
            "--health-retries cannot be negative",
        ),
        (
            &["--health-retries", "x"],
            "invalid argument \"x\" for \"--health-retries\" flag: strconv.ParseInt: parsing \"x\": invalid syntax",
        ),
        (
            &["--no-healthcheck", "--health-cmd", "true"],
            "--no-healthcheck conflicts with --health-* options",
        ),
        (
            &["--health-timeout", "10us"],
            "Timeout in Healthcheck cannot be less than 1ms",
        ),
    ] {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        args.extend_from_slice(&["busybox", "true"]);
        let r = k.run(&args);
        assert_eq!(r.code(), 125, "{flags:?}: {}", r.stderr());
        assert!(r.stderr().contains(err), "{flags:?}: {}", r.stderr());
    }
}

#[test]
fn oom_killed_is_the_last_runs() {
    let Some(k) = setup() else { return };
    let host = kiln_runner::cgroups::detect(&kiln_runner::cgroups::HostFs).expect("mountinfo");
    let mem = kiln_runner::cgroups::Controller::Memory;
    let here = matches!(
        host.location(mem),
        kiln_runner::cgroups::Location::At { .. }
    );
    if !common::require(here, &format!("no cgroup memory controller here ({host})")) {
        return;
    }
    // First run: OOM-killed (137); the restart exits 5 without allocating.
    k.run(&[
        "run",
        "-d",
        "--name",
        "hog",
        "--network",
        "none",
        "--memory",
        "32m",
        "--restart",
        "on-failure:1",
        "busybox",
        "sh",
        "-c",
        "test -e /ran && exit 5; touch /ran; dd if=/dev/zero of=/dev/null bs=96M count=1",
    ])
    .ok();
    let c = wait_for(&k, "hog", 10, |c| status(c) == "exited");
    assert_eq!(c["RestartCount"], 1, "{c:#}");
    assert_eq!(c["State"]["ExitCode"], 5);
    assert_eq!(
        c["State"]["OOMKilled"], false,
        "the last run was not: {c:#}"
    );
    k.run(&["rm", "hog"]).ok();
}

#[test]
fn a_foreground_run_is_probed_too() {
    let Some(k) = setup() else { return };
    let mut child = k
        .cmd()
        .args([
            "run",
            "--name",
            "fg",
            "--network",
            "none",
            "--health-cmd",
            "true",
            "--health-interval",
            "200ms",
            "busybox",
            "sleep",
            "4",
        ])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let end = Instant::now() + Duration::from_secs(10);
    let healthy = loop {
        let out = k.run(&["ps"]).stdout();
        if out.contains("(healthy)") {
            break true;
        }
        if Instant::now() > end {
            break false;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(child.wait().unwrap().success());
    assert!(healthy, "ps never said (healthy)");
    k.run(&["rm", "fg"]).ok();
}

//! `kiln run --restart` and the `--health-*` flags: docker's syntax and
//! errors, and the HEALTHCHECK the container runs (the image's under the
//! flags, dockerd's merge).

use anyhow::Result;
use kiln_runner::{HealthConfig, RestartPolicy};

use crate::cli::RunArgs;
use crate::error::Failure;

fn fail(msg: impl Into<String>) -> anyhow::Error {
    Failure::new(125, msg).into()
}

/// The restart policy, checked against the other flags.
pub(crate) fn restart_policy(args: &RunArgs) -> Result<RestartPolicy> {
    let policy = RestartPolicy::parse(&args.restart).map_err(|e| fail(format!("kiln: {e}")))?;
    if policy.is_none() {
        return Ok(policy);
    }
    if args.rm {
        return Err(fail(
            "kiln: conflicting options: cannot specify both --restart and --rm",
        ));
    }
    if !args.detach {
        return Err(fail(format!(
            "kiln: --restart {} needs -d: kiln has no daemon, a detached container's own \
             monitor restarts it (a foreground run ends when its container does)",
            args.restart
        )));
    }
    Ok(policy)
}

/// A `--health-*` duration: Go's syntax, docker's errors.
fn duration(v: &Option<String>, flag: &str) -> Result<i64> {
    let Some(v) = v else { return Ok(0) };
    let ns = kiln_runner::health::parse_go_duration(v).map_err(|e| {
        fail(format!(
            "kiln: invalid argument \"{v}\" for \"{flag}\" flag: {e}"
        ))
    })?;
    if ns < 0 {
        return Err(fail(format!("kiln: {flag} cannot be negative")));
    }
    Ok(ns)
}

/// The check to run, or None (none in the image, `NONE`, or
/// `--no-healthcheck`). `shell`: the image's SHELL, for `CMD-SHELL`.
pub(crate) fn healthcheck(
    args: &RunArgs,
    image: Option<&kiln_store::image::HealthConfig>,
    shell: Option<&Vec<String>>,
) -> Result<Option<HealthConfig>> {
    let interval = duration(&args.health_interval, "--health-interval")?;
    let timeout = duration(&args.health_timeout, "--health-timeout")?;
    let start_period = duration(&args.health_start_period, "--health-start-period")?;
    let retries = match &args.health_retries {
        None => 0,
        Some(v) => v.parse::<i64>().map_err(|_| {
            fail(format!(
                "kiln: invalid argument \"{v}\" for \"--health-retries\" flag: \
                 strconv.ParseInt: parsing \"{v}\": invalid syntax"
            ))
        })?,
    };
    if retries < 0 {
        return Err(fail("kiln: --health-retries cannot be negative"));
    }
    let flags_given = args.health_cmd.is_some()
        || interval != 0
        || timeout != 0
        || start_period != 0
        || retries != 0;
    if args.no_healthcheck {
        if flags_given {
            return Err(fail(
                "kiln: --no-healthcheck conflicts with --health-* options",
            ));
        }
        return Ok(None);
    }
    // dockerd: below a millisecond is refused (0 means the default).
    for (ns, what) in [
        (interval, "Interval"),
        (timeout, "Timeout"),
        (start_period, "StartPeriod"),
    ] {
        if ns != 0 && ns < 1_000_000 {
            return Err(fail(format!(
                "kiln: {what} in Healthcheck cannot be less than 1ms"
            )));
        }
    }
    let img = image.cloned().unwrap_or_default();
    let pick = |flag: i64, img: Option<i64>| if flag != 0 { flag } else { img.unwrap_or(0) };
    let test = match &args.health_cmd {
        Some(c) => vec!["CMD-SHELL".to_string(), c.clone()],
        None => img.test.clone(),
    };
    if test.is_empty() || test[0] == "NONE" {
        return Ok(None);
    }
    Ok(Some(HealthConfig {
        test,
        interval: pick(interval, img.interval),
        timeout: pick(timeout, img.timeout),
        start_period: pick(start_period, img.start_period),
        retries: pick(retries, img.retries),
        shell: shell.cloned().unwrap_or_default(),
    }))
}

/// docker's `Config.Healthcheck` in `inspect` (zero fields left out).
pub(crate) fn config_json(h: &HealthConfig) -> serde_json::Value {
    let mut v = serde_json::json!({ "Test": h.test });
    for (k, n) in [
        ("Interval", h.interval),
        ("Timeout", h.timeout),
        ("StartPeriod", h.start_period),
        ("Retries", h.retries),
    ] {
        if n != 0 {
            v[k] = n.into();
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn run_args(flags: &[&str]) -> RunArgs {
        let mut argv = vec!["kiln", "run"];
        argv.extend_from_slice(flags);
        argv.push("busybox");
        match crate::cli::Cli::try_parse_from(argv).unwrap().command {
            crate::cli::Command::Run(a) => a,
            _ => unreachable!(),
        }
    }

    #[test]
    fn flags_override_the_images_check_field_by_field() {
        let image = kiln_store::HealthConfig {
            test: vec!["CMD".into(), "curl".into(), "-f".into(), "localhost".into()],
            interval: Some(5_000_000_000),
            retries: Some(7),
            ..Default::default()
        };
        let shell = vec!["/bin/bash".to_string(), "-c".to_string()];
        let h = healthcheck(&run_args(&["--health-retries", "2"]), Some(&image), None)
            .unwrap()
            .unwrap();
        assert_eq!(h.test, image.test, "the image's command");
        assert_eq!((h.interval, h.retries), (5_000_000_000, 2));
        let h = healthcheck(
            &run_args(&["--health-cmd", "true", "--health-interval", "1s"]),
            Some(&image),
            Some(&shell),
        )
        .unwrap()
        .unwrap();
        assert_eq!(h.test, ["CMD-SHELL", "true"]);
        assert_eq!((h.interval, h.retries), (1_000_000_000, 7));
        assert_eq!(
            h.argv().unwrap(),
            ["/bin/bash", "-c", "true"],
            "image SHELL"
        );
        assert_eq!(
            healthcheck(&run_args(&["--no-healthcheck"]), Some(&image), None).unwrap(),
            None
        );
        let none = kiln_store::HealthConfig {
            test: vec!["NONE".into()],
            ..Default::default()
        };
        assert_eq!(
            healthcheck(&run_args(&[]), Some(&none), None).unwrap(),
            None
        );
        assert_eq!(healthcheck(&run_args(&[]), None, None).unwrap(), None);
    }

    #[test]
    fn restart_needs_detach_and_no_rm() {
        assert_eq!(
            restart_policy(&run_args(&["-d", "--restart", "on-failure:2"])).unwrap(),
            RestartPolicy::OnFailure { max: 2 }
        );
        assert!(restart_policy(&run_args(&["--restart", "always"])).is_err());
        assert!(restart_policy(&run_args(&["-d", "--rm", "--restart", "always"])).is_err());
        assert!(restart_policy(&run_args(&["--rm"])).unwrap().is_none());
    }
}

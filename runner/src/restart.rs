//! `--restart`: docker's restart policies and its restart manager's
//! backoff, carried out by the container's monitor (there is no daemon).

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Docker's `RestartPolicy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum RestartPolicy {
    /// `no` (the default): never restarted.
    #[default]
    No,
    /// `on-failure[:N]`: after a non-zero exit, at most `max` times (0: no
    /// maximum).
    OnFailure { max: u32 },
    /// `always`: after any exit, until `kiln stop`.
    Always,
    /// `unless-stopped`: as `always` (kiln has no daemon that would bring
    /// containers back after a reboot, where the two differ in docker).
    UnlessStopped,
}

impl RestartPolicy {
    /// Docker's syntax and its errors (docker 20.10's `ParseRestartPolicy`,
    /// then dockerd's `validateRestartPolicy`).
    pub fn parse(s: &str) -> Result<RestartPolicy, String> {
        let (name, count) = match s.split_once(':') {
            Some((name, n)) if !n.is_empty() => {
                let c = n.parse::<i64>().map_err(|_| {
                    "invalid restart policy format: maximum retry count must be an integer"
                        .to_string()
                })?;
                (name, Some(c))
            }
            Some((name, _)) => (name, None),
            None => (s, None),
        };
        match name {
            "" | "no" | "always" | "unless-stopped" if count.is_some_and(|c| c != 0) => Err(
                format!("maximum retry count cannot be used with restart policy '{name}'"),
            ),
            "" | "no" => Ok(RestartPolicy::No),
            "always" => Ok(RestartPolicy::Always),
            "unless-stopped" => Ok(RestartPolicy::UnlessStopped),
            "on-failure" => match count.unwrap_or(0) {
                c if c < 0 => Err("maximum retry count cannot be negative".into()),
                c => Ok(RestartPolicy::OnFailure {
                    max: u32::try_from(c).unwrap_or(u32::MAX),
                }),
            },
            other => Err(format!("invalid restart policy '{other}'")),
        }
    }

    pub fn is_none(&self) -> bool {
        *self == RestartPolicy::No
    }

    /// Docker's `HostConfig.RestartPolicy` object.
    pub fn name(&self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::OnFailure { .. } => "on-failure",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
        }
    }

    pub fn max_retries(&self) -> u32 {
        match self {
            RestartPolicy::OnFailure { max } => *max,
            _ => 0,
        }
    }
}

/// dockerd's restart manager: the delay before restart N doubles from
/// 100 ms up to a minute, and falls back to 100 ms once a run lasted 10 s.
#[derive(Debug, Clone, Default)]
pub(crate) struct RestartManager {
    policy: RestartPolicy,
    timeout: Duration,
    /// Restarts so far (docker's `RestartCount`).
    pub count: u32,
}

const DEFAULT_TIMEOUT: Duration = Duration::from_millis(100);
const MAX_TIMEOUT: Duration = Duration::from_secs(60);

impl RestartManager {
    pub(crate) fn new(policy: RestartPolicy) -> RestartManager {
        RestartManager {
            policy,
            timeout: Duration::ZERO,
            count: 0,
        }
    }

    /// After an exit: the delay before the next start, or None to stay
    /// exited. `stopped`: `kiln stop`/`rm -f` asked for it (no policy
    /// restarts then, `always` included, as with `docker stop`).
    pub(crate) fn should_restart(
        &mut self,
        code: i32,
        stopped: bool,
        ran: Duration,
    ) -> Option<Duration> {
        if self.policy.is_none() || stopped {
            return None;
        }
        if ran >= Duration::from_secs(10) {
            self.timeout = Duration::ZERO;
        }
        self.timeout = if self.timeout.is_zero() {
            DEFAULT_TIMEOUT
        } else {
            (self.timeout * 2).min(MAX_TIMEOUT)
        };
        let restart = match self.policy {
            RestartPolicy::No => false,
            RestartPolicy::Always | RestartPolicy::UnlessStopped => true,
            RestartPolicy::OnFailure { max } => (max == 0 || self.count < max) && code != 0,
        };
        if !restart {
            return None;
        }
        self.count += 1;
        Some(self.timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policies_parse_with_dockers_errors() {
        assert_eq!(RestartPolicy::parse("no"), Ok(RestartPolicy::No));
        assert_eq!(
            RestartPolicy::parse("on-failure"),
            Ok(RestartPolicy::OnFailure { max: 0 })
        );
        assert_eq!(
            RestartPolicy::parse("on-failure:3"),
            Ok(RestartPolicy::OnFailure { max: 3 })
        );
        assert_eq!(RestartPolicy::parse("always"), Ok(RestartPolicy::Always));
        assert_eq!(
            RestartPolicy::parse("unless-stopped"),
            Ok(RestartPolicy::UnlessStopped)
        );
        let err = |s| RestartPolicy::parse(s).unwrap_err();
        assert_eq!(err("bogus"), "invalid restart policy 'bogus'");
        let format = "invalid restart policy format: maximum retry count must be an integer";
        assert_eq!(err("on-failure:x"), format);
        assert_eq!(
            err("on-failure:-1"),
            "maximum retry count cannot be negative"
        );
        assert_eq!(
            err("a:b:c"),
            format,
            "docker 20.10.24 cuts at the first ':'"
        );
        assert_eq!(
            err("always:2"),
            "maximum retry count cannot be used with restart policy 'always'"
        );
        assert_eq!(RestartPolicy::parse("always:0"), Ok(RestartPolicy::Always));
    }

    #[test]
    fn on_failure_restarts_n_times_with_doubling_backoff() {
        let mut m = RestartManager::new(RestartPolicy::OnFailure { max: 3 });
        let short = Duration::from_millis(5);
        assert_eq!(
            m.should_restart(1, false, short),
            Some(Duration::from_millis(100))
        );
        assert_eq!(
            m.should_restart(1, false, short),
            Some(Duration::from_millis(200))
        );
        assert_eq!(
            m.should_restart(1, false, short),
            Some(Duration::from_millis(400))
        );
        assert_eq!(m.should_restart(1, false, short), None);
        assert_eq!(m.count, 3);
        let mut m = RestartManager::new(RestartPolicy::OnFailure { max: 0 });
        assert_eq!(m.should_restart(0, false, short), None, "success: done");
    }

    #[test]
    fn always_resets_after_ten_seconds_and_never_after_stop() {
        let mut m = RestartManager::new(RestartPolicy::Always);
        for _ in 0..12 {
            m.should_restart(0, false, Duration::ZERO);
        }
        assert_eq!(m.timeout, MAX_TIMEOUT, "capped at a minute");
        assert_eq!(
            m.should_restart(0, false, Duration::from_secs(10)),
            Some(DEFAULT_TIMEOUT)
        );
        assert_eq!(m.should_restart(0, true, Duration::ZERO), None);
        let mut n = RestartManager::new(RestartPolicy::No);
        assert_eq!(n.should_restart(1, false, Duration::ZERO), None);
    }
}

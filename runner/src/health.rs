//! HEALTHCHECK: docker's probe loop, run by the container's monitor
//! through `exec` ([`crate::exec::probe`]), and the state it keeps
//! (`health.json` in the container's dir: docker's `State.Health`).

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};

/// The check as the container runs it: the image's `Healthcheck` under the
/// `--health-*` flags (merged by the caller); zero durations and retries
/// take docker's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HealthConfig {
    /// `["CMD", arg...]` or `["CMD-SHELL", command]` (`NONE` never gets here).
    pub test: Vec<String>,
    /// Nanoseconds, as in docker's config; 0: the default.
    pub interval: i64,
    pub timeout: i64,
    pub start_period: i64,
    pub retries: i64,
    /// The image's SHELL for `CMD-SHELL` (default `/bin/sh -c`).
    pub shell: Vec<String>,
}

const DEFAULT_INTERVAL: Duration = Duration::from_secs(30);
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(30);
const DEFAULT_RETRIES: u32 = 3;
/// docker keeps the last 5 results and 4 KiB of each one's output.
const MAX_LOG: usize = 5;
pub(crate) const MAX_OUTPUT: usize = 4096;

fn dur(ns: i64, default: Duration) -> Duration {
    if ns > 0 {
        Duration::from_nanos(ns as u64)
    } else {
        default
    }
}

impl HealthConfig {
    pub fn interval(&self) -> Duration {
        dur(self.interval, DEFAULT_INTERVAL)
    }
    pub fn timeout(&self) -> Duration {
        dur(self.timeout, DEFAULT_TIMEOUT)
    }
    pub fn start_period(&self) -> Duration {
        dur(self.start_period, Duration::ZERO)
    }
    pub fn retries(&self) -> u32 {
        if self.retries > 0 {
            u32::try_from(self.retries).unwrap_or(u32::MAX)
        } else {
            DEFAULT_RETRIES
        }
    }

    /// The probe's argv, or why there is none.
    pub fn argv(&self) -> Result<Vec<String>, String> {
        match self.test.first().map(String::as_str) {
            Some("CMD") if self.test.len() > 1 => Ok(self.test[1..].to_vec()),
            Some("CMD-SHELL") if self.test.len() == 2 => {
                let mut a = if self.shell.is_empty() {
                    vec!["/bin/sh".to_string(), "-c".to_string()]
                } else {
                    self.shell.clone()
                };
                a.push(self.test[1].clone());
                Ok(a)
            }
            _ => Err(format!("unknown healthcheck type {:?}", self.test)),
        }
    }
}

/// docker's `State.Health`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthState {
    /// "starting", "healthy" or "unhealthy".
    pub status: String,
    pub failing_streak: u32,
    pub log: Vec<HealthResult>,
}

/// One probe: docker's `HealthcheckResult`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct HealthResult {
    pub start: String,
    pub end: String,
    /// 0 healthy, 1 (or anything else) unhealthy, -1 when it could not run
    /// or exceeded its timeout.
    pub exit_code: i32,
    pub output: String,
}

impl HealthState {
    /// A (re)started container: `starting`, the streak reset, the log kept.
    pub(crate) fn restart(&mut self) {
        self.status = "starting".into();
        self.failing_streak = 0;
    }

    /// dockerd's `handleProbeResult`: success makes healthy; a failure
    /// counts unless no probe has succeeded yet and the start period is
    /// not over; `retries` failures in a row make unhealthy.
    pub(crate) fn record(&mut self, r: HealthResult, since_start: Duration, cfg: &HealthConfig) {
        if self.log.len() >= MAX_LOG {
            self.log.drain(..self.log.len() + 1 - MAX_LOG);
        }
        let code = r.exit_code;
        self.log.push(r);
        if code == 0 {
            self.failing_streak = 0;
            self.status = "healthy".into();
        } else if !(self.status == "starting" && since_start < cfg.start_period()) {
            self.failing_streak += 1;
            if self.failing_streak >= cfg.retries() {
                self.status = "unhealthy".into();
            }
        }
    }
}

pub(crate) fn load(dir: &Path) -> Option<HealthState> {
    let data = std::fs::read(dir.join("health.json")).ok()?;
    serde_json::from_slice(&data).ok()
}

fn save(dir: &Path, h: &HealthState) {
    if let Ok(b) = serde_json::to_vec(h) {
        let _ = crate::state::write_atomic(&dir.join("health.json"), &b);
    }
}

fn stamp(t: SystemTime) -> String {
    humantime::format_rfc3339_nanos(t).to_string()
}

/// The probe loop of one run of the container, on a thread of its
/// monitor; ends (within 50 ms, or when a probe in flight returns) once
/// the returned flag is set.
pub(crate) struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<()>,
}

impl Prober {
    pub(crate) fn start(dir: PathBuf, cfg: HealthConfig, job: crate::exec::ExecJob) -> Prober {
        let mut h = load(&dir).unwrap_or_default();
        h.restart();
        save(&dir, &h);
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || probe_loop(&dir, &cfg, &job, &flag, h));
        Prober { stop, thread }
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::SeqCst);
        let _ = self.thread.join();
    }
}

fn probe_loop(
    dir: &Path,
    cfg: &HealthConfig,
    job: &crate::exec::ExecJob,
    stop: &AtomicBool,
    mut h: HealthState,
) {
    let started = Instant::now();
    let runner = crate::RunnerConfig::default();
    loop {
        let next = Instant::now() + cfg.interval();
        while Instant::now() < next {
            if stop.load(Ordering::SeqCst) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50).min(next - Instant::now()));
        }
        let t0 = SystemTime::now();
        let since_start = started.elapsed();
        let (exit_code, output) = match crate::exec::probe(&runner, job, cfg.timeout()) {
            Ok(r) => r,
            Err(e) => (-1, e),
        };
        if stop.load(Ordering::SeqCst) {
            // The container is gone: a probe that failed with it says
            // nothing about its health.
            return;
        }
        let r = HealthResult {
            start: stamp(t0),
            end: stamp(SystemTime::now()),
            exit_code,
            output,
        };
        h.record(r, since_start, cfg);
        save(dir, &h);
    }
}

/// Go's `time.ParseDuration` (what docker's `--health-*` flags take):
/// "300ms", "1.5h", "2h45m", "-1s"; a bare "0" is zero.
pub fn parse_go_duration(s: &str) -> Result<i64, String> {
    let bad = || format!("time: invalid duration \"{s}\"");
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Ok(0);
    }
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .ok_or_else(|| format!("time: missing unit in duration \"{s}\""))?;
        let n: f64 = rest[..num_len].parse().map_err(|_| bad())?;
        rest = &rest[num_len..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let mult = match &rest[..unit_len] {
            "ns" => 1.0,
            "us" | "µs" | "μs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            u => return Err(format!("time: unknown unit \"{u}\" in duration \"{s}\"")),
        };
        rest = &rest[unit_len..];
        total += n * mult;
    }
    if total > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(if neg { -(total as i64) } else { total as i64 })
}

/// Go's `Duration.String()`: "30s", "1m30s", "500ms", "1h0m0s".
pub fn format_go_duration(ns: i64) -> String {
    if ns == 0 {
        return "0s".into();
    }
    let (sign, ns) = if ns < 0 { ("-", -ns) } else { ("", ns) };
    if ns < 1_000_000_000 {
        let (v, u) = if ns < 1_000 {
            return format!("{sign}{ns}ns");
        } else if ns < 1_000_000 {
            (ns as f64 / 1e3, "µs")
        } else {
            (ns as f64 / 1e6, "ms")
        };
        return format!("{sign}{}{u}", trim_float(v));
    }
    let h = ns / 3_600_000_000_000;
    let m = ns / 60_000_000_000 % 60;
    let s = (ns % 60_000_000_000) as f64 / 1e9;
    let s = format!("{}s", trim_float(s));
    match (h, m) {
        (0, 0) => format!("{sign}{s}"),
        (0, m) => format!("{sign}{m}m{s}"),
        (h, m) => format!("{sign}{h}h{m}m{s}"),
    }
}

fn trim_float(v: f64) -> String {
    let t = format!("{v:.9}");
    t.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn res(code: i32) -> HealthResult {
        HealthResult {
            start: String::new(),
            end: String::new(),
            exit_code: code,
            output: format!("{code}"),
        }
    }

    #[test]
    fn failures_become_unhealthy_after_retries_and_success_heals() {
        let cfg = HealthConfig {
            test: vec!["CMD".into(), "false".into()],
            retries: 2,
            ..Default::default()
        };
        let mut h = HealthState::default();
        h.restart();
        h.record(res(1), Duration::from_secs(1), &cfg);
        assert_eq!((h.status.as_str(), h.failing_streak), ("starting", 1));
        h.record(res(2), Duration::from_secs(2), &cfg);
        assert_eq!((h.status.as_str(), h.failing_streak), ("unhealthy", 2));
        h.record(res(0), Duration::from_secs(3), &cfg);
        assert_eq!((h.status.as_str(), h.failing_streak), ("healthy", 0));
        for _ in 0..6 {
            h.record(res(1), Duration::from_secs(9), &cfg);
        }
        assert_eq!(h.log.len(), 5, "the last five results");
        assert_eq!(h.status, "unhealthy");
    }

    #[test]
    fn start_period_failures_do_not_count_until_a_success() {
        let cfg = HealthConfig {
            test: vec!["CMD-SHELL".into(), "exit 1".into()],
            retries: 1,
            start_period: 10_000_000_000,
            ..Default::default()
        };
        let mut h = HealthState::default();
        h.restart();
        h.record(res(1), Duration::from_secs(1), &cfg);
        assert_eq!((h.status.as_str(), h.failing_streak), ("starting", 0));
        h.record(res(1), Duration::from_secs(11), &cfg);
        assert_eq!(h.status, "unhealthy");
        assert_eq!(
            cfg.argv().unwrap(),
            ["/bin/sh", "-c", "exit 1"],
            "CMD-SHELL through the default shell"
        );
        assert_eq!(cfg.interval(), DEFAULT_INTERVAL);
    }

    #[test]
    fn go_durations() {
        assert_eq!(parse_go_duration("5s"), Ok(5_000_000_000));
        assert_eq!(parse_go_duration("1m30s"), Ok(90_000_000_000));
        assert_eq!(parse_go_duration("300ms"), Ok(300_000_000));
        assert_eq!(parse_go_duration("1.5h"), Ok(5_400_000_000_000));
        assert_eq!(parse_go_duration("-1s"), Ok(-1_000_000_000));
        assert_eq!(parse_go_duration("0"), Ok(0));
        assert_eq!(
            parse_go_duration("5"),
            Err("time: missing unit in duration \"5\"".into())
        );
        assert_eq!(
            parse_go_duration("5x"),
            Err("time: unknown unit \"x\" in duration \"5x\"".into())
        );
        assert_eq!(
            parse_go_duration("abc"),
            Err("time: invalid duration \"abc\"".into())
        );
        assert_eq!(format_go_duration(30_000_000_000), "30s");
        assert_eq!(format_go_duration(90_000_000_000), "1m30s");
        assert_eq!(format_go_duration(500_000_000), "500ms");
        assert_eq!(format_go_duration(3_600_000_000_000), "1h0m0s");
        assert_eq!(format_go_duration(1_500_000_000), "1.5s");
    }
}

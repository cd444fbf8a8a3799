//! `docker run`'s resource flags: their syntax (docker's units), their
//! checks (dockerd's messages) and the cgroup files they become on v1 and
//! v2 (runc's conversions). Pure: no I/O.

use serde::{Deserialize, Serialize};

use super::detect::{Controller, Version};

/// Resource limits of one container, in docker's terms (`HostConfig`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// `--memory`, bytes.
    #[serde(default)]
    pub memory: Option<i64>,
    /// `--memory-swap`, memory plus swap in bytes; -1 unlimited swap. None:
    /// docker's default, twice `memory`.
    #[serde(default)]
    pub memory_swap: Option<i64>,
    /// `--cpus` × 10⁹.
    #[serde(default)]
    pub nano_cpus: Option<i64>,
    /// `--cpu-shares`, the v1 weight (default 1024).
    #[serde(default)]
    pub cpu_shares: Option<u64>,
    /// `--pids-limit`; None (or ≤ 0 on the command line): unlimited.
    #[serde(default)]
    pub pids_limit: Option<i64>,
}

/// dockerd's `linuxMinMemory`.
pub const MIN_MEMORY: i64 = 6 * 1024 * 1024;
/// The CFS period docker uses with `--cpus`, in microseconds.
pub const CPU_PERIOD_US: i64 = 100_000;
const MIN_SHARES: u64 = 2;
const MAX_SHARES: u64 = 262_144;

impl Resources {
    pub fn is_empty(&self) -> bool {
        self.controllers().is_empty()
    }

    /// The controllers these limits need, each once.
    pub fn controllers(&self) -> Vec<Controller> {
        let mut out = Vec::new();
        if self.memory.is_some() || self.memory_swap.is_some_and(|s| s > 0) {
            out.push(Controller::Memory);
        }
        if self.nano_cpus.is_some() || self.cpu_shares.is_some() {
            out.push(Controller::Cpu);
        }
        if self.pids_limit.is_some() {
            out.push(Controller::Pids);
        }
        out
    }

    /// The flag that needs `c`, for error messages.
    pub fn flag_for(&self, c: Controller) -> &'static str {
        match c {
            Controller::Memory if self.memory.is_none() => "--memory-swap",
            Controller::Memory => "--memory",
            Controller::Cpu if self.nano_cpus.is_some() => "--cpus",
            Controller::Cpu => "--cpu-shares",
            Controller::Pids => "--pids-limit",
        }
    }

    /// dockerd's checks and defaults (`verifyPlatformContainerResources`,
    /// `adaptContainerSettings`): errors with its messages; the warnings it
    /// prints when it adjusts a value. `ncpu`: CPUs of the host.
    pub fn check(&mut self, ncpu: usize) -> Result<Vec<String>, String> {
        let mut warnings = Vec::new();
        let memory = self.memory.unwrap_or(0);
        let swap = self.memory_swap.unwrap_or(0);
        if memory < 0 {
            return Err(format!("invalid memory limit {memory}"));
        }
        if memory != 0 && memory < MIN_MEMORY {
            return Err("Minimum memory limit allowed is 6MB".into());
        }
        if memory > 0 && swap > 0 && swap < memory {
            return Err(
                "Minimum memoryswap limit should be larger than memory limit, see usage".into(),
            );
        }
        if memory == 0 && swap > 0 {
            return Err(
                "You should always set the Memory limit when using Memoryswap limit, see usage"
                    .into(),
            );
        }
        if memory == 0 {
            self.memory = None;
        }
        if swap == 0 || memory == 0 {
            // 0 is "unset"; -1 without --memory limits nothing.
            self.memory_swap = None;
        }
        if let Some(n) = self.nano_cpus {
            let max = ncpu as i64 * 1_000_000_000;
            if !(10_000_000..=max).contains(&n) {
                return Err(format!(
                    "Range of CPUs is from 0.01 to {ncpu}.00, as there are only {ncpu} CPUs available"
                ));
            }
        }
        match self.cpu_shares {
            Some(0) => self.cpu_shares = None,
            Some(s) if s < MIN_SHARES => {
                warnings.push(format!(
                    "Changing requested CPUShares of {s} to minimum allowed of {MIN_SHARES}"
                ));
                self.cpu_shares = Some(MIN_SHARES);
            }
            Some(s) if s > MAX_SHARES => {
                warnings.push(format!(
                    "Changing requested CPUShares of {s} to maximum allowed of {MAX_SHARES}"
                ));
                self.cpu_shares = Some(MAX_SHARES);
            }
            _ => {}
        }
        if self.pids_limit.is_some_and(|p| p <= 0) {
            self.pids_limit = None;
        }
        Ok(warnings)
    }

    /// Memory plus swap as it will be set: docker's default is twice the
    /// memory limit; -1 unlimited.
    pub fn effective_swap(&self) -> Option<i64> {
        let m = self.memory?;
        Some(self.memory_swap.unwrap_or(2 * m))
    }

    /// The CFS quota for `--cpus`, microseconds per [`CPU_PERIOD_US`].
    pub fn cpu_quota_us(&self) -> Option<i64> {
        self.nano_cpus.map(|n| n * CPU_PERIOD_US / 1_000_000_000)
    }
}

/// One value to write into a cgroup's file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    pub controller: Controller,
    pub file: &'static str,
    pub value: String,
    /// The limit comes from a flag the user gave (not a default): a file
    /// the host lacks is then an error, else a warning.
    pub explicit: bool,
}

/// What `r` writes for `c` on a hierarchy of `version`, in the order the
/// files must be written (memory before memory+swap on v1).
pub fn settings(r: &Resources, c: Controller, version: Version) -> Vec<Setting> {
    let mut out = Vec::new();
    let mut put = |file: &'static str, value: String, explicit: bool| {
        out.push(Setting {
            controller: c,
            file,
            value,
            explicit,
        })
    };
    match (c, version) {
        (Controller::Memory, Version::V1) => {
            if let Some(m) = r.memory {
                put("memory.limit_in_bytes", m.to_string(), true);
            }
            if let Some(s) = r.effective_swap() {
                put(
                    "memory.memsw.limit_in_bytes",
                    s.to_string(),
                    r.memory_swap.is_some(),
                );
            }
        }
        (Controller::Memory, Version::V2) => {
            if let Some(m) = r.memory {
                put("memory.max", m.to_string(), true);
            }
            if let (Some(m), Some(s)) = (r.memory, r.effective_swap()) {
                // v2 limits swap alone (runc's ConvertMemorySwapToCgroupV2Value).
                let v = if s < 0 {
                    "max".to_string()
                } else {
                    (s - m).to_string()
                };
                put("memory.swap.max", v, r.memory_swap.is_some());
            }
        }
        (Controller::Cpu, Version::V1) => {
            if let Some(s) = r.cpu_shares {
                put("cpu.shares", s.to_string(), true);
            }
            if let Some(q) = r.cpu_quota_us() {
                put("cpu.cfs_period_us", CPU_PERIOD_US.to_string(), true);
                put("cpu.cfs_quota_us", q.to_string(), true);
            }
        }
        (Controller::Cpu, Version::V2) => {
            if let Some(s) = r.cpu_shares {
                put("cpu.weight", shares_to_weight(s).to_string(), true);
            }
            if let Some(q) = r.cpu_quota_us() {
                put("cpu.max", format!("{q} {CPU_PERIOD_US}"), true);
            }
        }
        (Controller::Pids, _) => {
            if let Some(p) = r.pids_limit {
                put("pids.max", p.to_string(), true);
            }
        }
    }
    out
}

/// v1 `cpu.shares` [2, 262144] (default 1024) to v2 `cpu.weight`
/// [1, 10000] (default 100), as runc does since opencontainers/cgroups
/// 0.0.2 (runc 1.3.2): a quadratic in log2 that maps the minimum, the
/// default and the maximum onto each other. (The older linear formula
/// `1 + (s-2)*9999/262142` made 1024 into 39, below the default.)
pub fn shares_to_weight(shares: u64) -> u64 {
    if shares == 0 {
        return 0;
    }
    if shares <= MIN_SHARES {
        return 1;
    }
    if shares >= MAX_SHARES {
        return 10_000;
    }
    let l = (shares as f64).log2();
    let exponent = (l * l + 125.0 * l) / 612.0 - 7.0 / 34.0;
    10f64.powf(exponent).ceil() as u64
}

/// docker's `RAMInBytes` (go-units): `512m`, `1g`, `1.5GiB`, `1024`;
/// binary multiples, case-insensitive, an optional `i` and `b`.
pub fn parse_memory(s: &str) -> Result<i64, String> {
    let bad = || format!("invalid size: '{s}'");
    let t = s.trim_end();
    let num_end = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, rest) = t.split_at(num_end);
    if num.is_empty() || num.starts_with('.') || num.ends_with('.') || num.contains("..") {
        return Err(bad());
    }
    let rest = rest.strip_prefix(' ').unwrap_or(rest).to_ascii_lowercase();
    let mut chars = rest.chars().peekable();
    let mult: f64 = match chars.peek() {
        Some('k') => 1024f64,
        Some('m') => 1024f64.powi(2),
        Some('g') => 1024f64.powi(3),
        Some('t') => 1024f64.powi(4),
        Some('p') => 1024f64.powi(5),
        _ => 1.0,
    };
    if mult > 1.0 {
        chars.next();
    }
    if chars.peek() == Some(&'i') {
        chars.next();
    }
    if chars.peek() == Some(&'b') {
        chars.next();
    }
    if chars.next().is_some() {
        return Err(bad());
    }
    // go-units accepts "1.2.3" through its regexp, then fails to parse it.
    let n: f64 = num.parse().map_err(|_| bad())?;
    let v = n * mult;
    if v >= i64::MAX as f64 {
        return Err(bad());
    }
    Ok(v as i64)
}

/// `--memory-swap`: a size, or -1 for unlimited swap.
pub fn parse_memory_swap(s: &str) -> Result<i64, String> {
    if s == "-1" {
        return Ok(-1);
    }
    parse_memory(s)
}

/// `--cpus 1.5` to nano-CPUs, exactly (docker's big.Rat parse): more than
/// nine decimals is "value is too precise".
pub fn parse_cpus(s: &str) -> Result<i64, String> {
    let bad = || format!("failed to parse {s} as a rational number");
    let (int, frac) = s.split_once('.').unwrap_or((s, ""));
    let digits = |d: &str| d.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return Err(bad());
    }
    let frac = frac.trim_end_matches('0');
    if frac.len() > 9 {
        return Err("value is too precise".into());
    }
    let int: i64 = if int.is_empty() {
        0
    } else {
        int.parse().map_err(|_| bad())?
    };
    let frac_nanos: i64 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().map_err(|_| bad())?
    };
    int.checked_mul(1_000_000_000)
        .and_then(|n| n.checked_add(frac_nanos))
        .ok_or_else(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_units_are_dockers() {
        assert_eq!(parse_memory("512m").unwrap(), 512 << 20);
        assert_eq!(parse_memory("1g").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1G").unwrap(), 1 << 30);
        assert_eq!(parse_memory("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_memory("32mb").unwrap(), 32 << 20);
        assert_eq!(parse_memory("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_memory("1024").unwrap(), 1024);
        assert_eq!(parse_memory("10 k").unwrap(), 10240);
        assert_eq!(parse_memory("7b").unwrap(), 7);
        for bad in [
            "", "m", "abc", "1x", "-1", "1.2.3", ".5m", "5.m", "1mm", "1 gb x",
        ] {
            assert_eq!(
                parse_memory(bad).unwrap_err(),
                format!("invalid size: '{bad}'"),
                "{bad}"
            );
        }
        assert_eq!(parse_memory_swap("-1").unwrap(), -1);
        assert!(parse_memory_swap("-2").is_err());
    }

    #[test]
    fn cpus_are_exact_nanos() {
        assert_eq!(parse_cpus("1.5").unwrap(), 1_500_000_000);
        assert_eq!(parse_cpus("0.5").unwrap(), 500_000_000);
        assert_eq!(parse_cpus(".25").unwrap(), 250_000_000);
        assert_eq!(parse_cpus("2").unwrap(), 2_000_000_000);
        assert_eq!(parse_cpus("0.000000001").unwrap(), 1);
        assert_eq!(parse_cpus("1.1000000000").unwrap(), 1_100_000_000);
        assert_eq!(
            parse_cpus("0.0000000001").unwrap_err(),
            "value is too precise"
        );
        assert_eq!(
            parse_cpus("x").unwrap_err(),
            "failed to parse x as a rational number"
        );
        assert!(parse_cpus("-1").is_err());
        assert!(parse_cpus(".").is_err());
    }

    fn res(f: impl FnOnce(&mut Resources)) -> Resources {
        let mut r = Resources::default();
        f(&mut r);
        r
    }

    #[test]
    fn dockerd_checks_and_defaults() {
        let mut r = res(|r| r.memory = Some(5 << 20));
        assert_eq!(
            r.check(2).unwrap_err(),
            "Minimum memory limit allowed is 6MB"
        );
        let mut r = res(|r| {
            r.memory = Some(64 << 20);
            r.memory_swap = Some(32 << 20)
        });
        assert!(r
            .check(2)
            .unwrap_err()
            .starts_with("Minimum memoryswap limit"));
        let mut r = res(|r| r.memory_swap = Some(32 << 20));
        assert!(r
            .check(2)
            .unwrap_err()
            .starts_with("You should always set the Memory limit"));
        let mut r = res(|r| r.nano_cpus = Some(3_000_000_000));
        assert_eq!(
            r.check(2).unwrap_err(),
            "Range of CPUs is from 0.01 to 2.00, as there are only 2 CPUs available"
        );
        let mut r = res(|r| r.nano_cpus = Some(1_000_000));
        assert!(r.check(2).is_err(), "below the kernel's 1 ms quota");
        let mut r = res(|r| r.cpu_shares = Some(1));
        assert_eq!(
            r.check(2).unwrap(),
            vec!["Changing requested CPUShares of 1 to minimum allowed of 2"]
        );
        assert_eq!(r.cpu_shares, Some(2));
        let mut r = res(|r| {
            r.pids_limit = Some(-1);
            r.memory = Some(0);
            r.memory_swap = Some(-1);
            r.cpu_shares = Some(0)
        });
        assert!(r.check(2).unwrap().is_empty());
        assert!(r.is_empty(), "{r:?}");
    }

    #[test]
    fn swap_defaults_to_twice_memory() {
        let r = res(|r| r.memory = Some(32 << 20));
        assert_eq!(r.effective_swap(), Some(64 << 20));
        let v1 = settings(&r, Controller::Memory, Version::V1);
        assert_eq!(v1[0].file, "memory.limit_in_bytes");
        assert_eq!(v1[0].value, (32 << 20).to_string());
        assert_eq!(v1[1].file, "memory.memsw.limit_in_bytes");
        assert_eq!(v1[1].value, (64 << 20).to_string());
        assert!(!v1[1].explicit);
        let v2 = settings(&r, Controller::Memory, Version::V2);
        assert_eq!(v2[0].file, "memory.max");
        assert_eq!(v2[1].file, "memory.swap.max");
        assert_eq!(v2[1].value, (32 << 20).to_string(), "swap alone on v2");

        let r = res(|r| {
            r.memory = Some(32 << 20);
            r.memory_swap = Some(-1)
        });
        assert_eq!(settings(&r, Controller::Memory, Version::V1)[1].value, "-1");
        let v2 = settings(&r, Controller::Memory, Version::V2);
        assert_eq!(v2[1].value, "max");
        assert!(v2[1].explicit);
        let r = res(|r| {
            r.memory = Some(32 << 20);
            r.memory_swap = Some(32 << 20)
        });
        assert_eq!(settings(&r, Controller::Memory, Version::V2)[1].value, "0");
    }

    #[test]
    fn cpus_become_quota_over_period() {
        let r = res(|r| r.nano_cpus = Some(1_500_000_000));
        let v1 = settings(&r, Controller::Cpu, Version::V1);
        assert_eq!(
            v1.iter()
                .map(|s| (s.file, s.value.as_str()))
                .collect::<Vec<_>>(),
            vec![
                ("cpu.cfs_period_us", "100000"),
                ("cpu.cfs_quota_us", "150000")
            ]
        );
        let v2 = settings(&r, Controller::Cpu, Version::V2);
        assert_eq!(v2[0].file, "cpu.max");
        assert_eq!(v2[0].value, "150000 100000");
        let r = res(|r| r.nano_cpus = Some(10_000_000));
        assert_eq!(r.cpu_quota_us(), Some(1000));
    }

    #[test]
    fn shares_map_to_weight_like_runc() {
        assert_eq!(shares_to_weight(0), 0);
        assert_eq!(shares_to_weight(2), 1);
        assert_eq!(shares_to_weight(1024), 100);
        assert_eq!(shares_to_weight(262_144), 10_000);
        assert_eq!(shares_to_weight(512), 59);
        assert_eq!(shares_to_weight(2048), 174);
        let r = res(|r| r.cpu_shares = Some(512));
        assert_eq!(settings(&r, Controller::Cpu, Version::V1)[0].value, "512");
        assert_eq!(
            settings(&r, Controller::Cpu, Version::V2)[0].file,
            "cpu.weight"
        );
    }

    #[test]
    fn pids_max_is_the_same_file_on_both() {
        let r = res(|r| r.pids_limit = Some(10));
        for v in [Version::V1, Version::V2] {
            let s = settings(&r, Controller::Pids, v);
            assert_eq!((s[0].file, s[0].value.as_str()), ("pids.max", "10"));
        }
        assert_eq!(r.controllers(), vec![Controller::Pids]);
    }
}

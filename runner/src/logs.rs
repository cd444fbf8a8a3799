//! A detached container's log (Docker's json-file format: one
//! `{"log","stream","time"}` record per line) and `kiln logs`' reading of
//! it: `--tail`, `--since`, `--until`, `-t` and `-f` with docker's rules.
//!
//! Docker's order is kept: `--tail N` picks the last N records of the
//! file, then `--since`/`--until` filter those (so `--tail 5 --since 1h`
//! can print fewer than five lines, as with docker).

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::error::RunError;

/// One line of the container's output, as the monitor records it.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct LogEntry {
    pub log: String,
    pub stream: String,
    /// RFC 3339 with nanoseconds, UTC (`2026-12-07T10:00:00.123456789Z`).
    pub time: String,
}

/// What `kiln logs` prints.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LogOptions {
    /// `-f`: keep printing until the container has exited.
    pub follow: bool,
    /// `-t`: each line starts with its RFC 3339 time and a space.
    pub timestamps: bool,
    /// `--since`: records at or after this time.
    pub since: Option<SystemTime>,
    /// `--until`: records at or before this time.
    pub until: Option<SystemTime>,
    /// `-n/--tail`: only the last N records (None: all).
    pub tail: Option<usize>,
}

/// `--tail`'s value: `all` (or a negative number, as docker takes it) for
/// every record, else a count.
pub fn parse_tail(s: &str) -> Result<Option<usize>, String> {
    if s == "all" {
        return Ok(None);
    }
    match s.parse::<i64>() {
        Ok(n) if n < 0 => Ok(None),
        Ok(n) => Ok(Some(n as usize)),
        Err(_) => Err(format!(
            "invalid value {s:?} for --tail: want a number of lines or \"all\""
        )),
    }
}

/// A `--since`/`--until` value with docker's rules: a duration before
/// `now` (`10m`, `1h30m`, `90s`), a Unix time (`1733570000`,
/// `1733570000.5`), or an RFC 3339 date/time (`2026-12-07`,
/// `2026-12-07T10:00`, `2026-12-07T10:00:00.5Z`, `...+01:00`); a time
/// without a zone is the local time, as docker reads it.
pub fn parse_log_time(s: &str, now: SystemTime) -> Result<SystemTime, String> {
    let bad = || {
        format!(
            "invalid time {s:?}: want a duration before now (10m, 1h30m), a Unix timestamp \
             (1733570000[.nnn]) or an RFC 3339 date/time (2026-12-07, 2026-12-07T10:00:00Z)"
        )
    };
    let s = s.trim();
    if s.is_empty() {
        return Err(bad());
    }
    if let Ok(d) = humantime::parse_duration(s) {
        return Ok(now.checked_sub(d).unwrap_or(UNIX_EPOCH));
    }
    if !s.contains(['-', ':']) {
        return unix_time(s).ok_or_else(bad);
    }
    rfc3339ish(s).ok_or_else(bad)
}

fn unix_time(s: &str) -> Option<SystemTime> {
    let (secs, frac) = s.split_once('.').unwrap_or((s, ""));
    let secs: u64 = secs.parse().ok()?;
    if !frac.chars().all(|c| c.is_ascii_digit()) || frac.len() > 9 {
        return None;
    }
    let nanos: u32 = if frac.is_empty() {
        0
    } else {
        format!("{frac:0<9}").parse().ok()?
    };
    Some(UNIX_EPOCH + Duration::new(secs, nanos))
}

/// `YYYY-MM-DD[THH:MM[:SS[.f]]][Z|±HH:MM]`.
fn rfc3339ish(s: &str) -> Option<SystemTime> {
    let (body, zone) = split_zone(s);
    let body = match body.len() {
        10 => format!("{body}T00:00:00"),
        16 => format!("{body}:00"),
        _ => body.to_string(),
    };
    // Read as UTC first; the zone (or the local one) moves it after.
    let as_utc = humantime::parse_rfc3339_weak(&body).ok()?;
    let offset = match zone {
        Some(secs) => secs,
        None => local_offset(as_utc),
    };
    shift(as_utc, -offset)
}

/// The body and the zone's offset east of UTC in seconds (None: no zone).
fn split_zone(s: &str) -> (&str, Option<i64>) {
    if let Some(b) = s.strip_suffix(['Z', 'z']) {
        return (b, Some(0));
    }
    // An offset follows the time part: look after the date's dashes.
    if s.len() > 16 {
        let (head, tail) = s.split_at(s.len() - 6);
        let t = tail.as_bytes();
        if (t[0] == b'+' || t[0] == b'-') && t[3] == b':' {
            let h: i64 = tail[1..3].parse().unwrap_or(99);
            let m: i64 = tail[4..6].parse().unwrap_or(99);
            if h < 24 && m < 60 {
                let sign = if t[0] == b'-' { -1 } else { 1 };
                return (head, Some(sign * (h * 3600 + m * 60)));
            }
        }
    }
    (s, None)
}

fn shift(t: SystemTime, secs: i64) -> Option<SystemTime> {
    if secs >= 0 {
        t.checked_add(Duration::from_secs(secs as u64))
    } else {
        t.checked_sub(Duration::from_secs(secs.unsigned_abs()))
    }
}

/// The local zone's offset east of UTC at (about) `t`, from the C
/// library's zone rules (TZ, /etc/localtime).
fn local_offset(t: SystemTime) -> i64 {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: an all-zero `tm` is a valid value of the plain C struct.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: localtime_r reads `secs` and writes only into `tm`, both
    // alive for the call.
    let ok = unsafe { !libc::localtime_r(&secs, &mut tm).is_null() };
    if ok {
        tm.tm_gmtoff
    } else {
        0
    }
}

/// Where the container's two streams go: `err` takes its stderr when
/// given (what `docker logs` does with its own stderr).
pub(crate) struct Sink<'a> {
    pub out: &'a mut dyn Write,
    pub err: Option<&'a mut dyn Write>,
}

impl Sink<'_> {
    fn write(&mut self, e: &LogEntry, timestamps: bool) -> Result<(), RunError> {
        let w: &mut dyn Write = match self.err.as_deref_mut() {
            Some(err) if e.stream == "stderr" => err,
            _ => &mut *self.out,
        };
        let io = |e| RunError::io("writing logs", e);
        if timestamps {
            write!(w, "{} ", e.time).map_err(io)?;
        }
        w.write_all(e.log.as_bytes()).map_err(io)
    }

    fn flush(&mut self) -> Result<(), RunError> {
        let io = |e| RunError::io("writing logs", e);
        self.out.flush().map_err(io)?;
        if let Some(e) = self.err.as_deref_mut() {
            e.flush().map_err(io)?;
        }
        Ok(())
    }
}

/// What a record's time says against `--since`/`--until`.
enum Verdict {
    Print,
    Skip,
    /// Past `--until`: this record and all after it.
    Done,
}

fn judge(e: &LogEntry, opts: &LogOptions) -> Verdict {
    let Ok(t) = humantime::parse_rfc3339(&e.time) else {
        return Verdict::Print;
    };
    if opts.until.is_some_and(|u| t > u) {
        return Verdict::Done;
    }
    if opts.since.is_some_and(|s| t < s) {
        return Verdict::Skip;
    }
    Verdict::Print
}

/// Print the log at `path` as `opts` asks; with `follow`, go on while
/// `running()` says the container is up.
pub(crate) fn show(
    path: &Path,
    opts: &LogOptions,
    sink: &mut Sink<'_>,
    running: &mut dyn FnMut() -> bool,
) -> Result<(), RunError> {
    let mut reader = LogReader::default();
    let mut first = reader.read_new(path)?;
    if let Some(n) = opts.tail {
        first.drain(..first.len().saturating_sub(n));
    }
    if !print_all(&first, opts, sink)? {
        return Ok(());
    }
    if !opts.follow {
        return Ok(());
    }
    loop {
        let up = running();
        let more = reader.read_new(path)?;
        if !print_all(&more, opts, sink)? {
            return Ok(());
        }
        if !up || opts.until.is_some_and(|u| SystemTime::now() > u) {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// false once a record was past `--until`. The records after it are
/// still looked at: stdout and stderr are logged by two threads, so the
/// file is not in time order across the two streams (a stderr line can
/// come before an earlier stdout one).
fn print_all(
    entries: &[LogEntry],
    opts: &LogOptions,
    sink: &mut Sink<'_>,
) -> Result<bool, RunError> {
    let mut go_on = true;
    for e in entries {
        match judge(e, opts) {
            Verdict::Print => sink.write(e, opts.timestamps)?,
            Verdict::Skip => {}
            Verdict::Done => go_on = false,
        }
    }
    sink.flush()?;
    Ok(go_on)
}

/// Reads whole records appended since the last read.
#[derive(Default)]
struct LogReader {
    pos: u64,
    partial: String,
}

impl LogReader {
    fn read_new(&mut self, path: &Path) -> Result<Vec<LogEntry>, RunError> {
        let mut f = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(RunError::io(format!("opening {}", path.display()), e)),
        };
        let io = |e| RunError::io("reading the log", e);
        f.seek(SeekFrom::Start(self.pos)).map_err(io)?;
        let mut buf = String::new();
        self.pos += f.read_to_string(&mut buf).map_err(io)? as u64;
        self.partial.push_str(&buf);
        let mut out = Vec::new();
        while let Some(nl) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=nl).collect();
            // A record torn by a crash is skipped, not fatal.
            if let Ok(e) = serde_json::from_str::<LogEntry>(line.trim_end()) {
                out.push(e);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> SystemTime {
        humantime::parse_rfc3339(s).unwrap()
    }

    #[test]
    fn tail_values_read_like_docker() {
        assert_eq!(parse_tail("all"), Ok(None));
        assert_eq!(parse_tail("-1"), Ok(None));
        assert_eq!(parse_tail("0"), Ok(Some(0)));
        assert_eq!(parse_tail("12"), Ok(Some(12)));
        assert!(parse_tail("ten").unwrap_err().contains("--tail"));
    }

    #[test]
    fn times_read_like_docker() {
        let now = at("2026-12-07T12:00:00Z");
        assert_eq!(parse_log_time("10m", now), Ok(at("2026-12-07T11:50:00Z")));
        assert_eq!(parse_log_time("1h30m", now), Ok(at("2026-12-07T10:30:00Z")));
        assert_eq!(
            parse_log_time("1733570000", now),
            Ok(UNIX_EPOCH + Duration::from_secs(1_733_570_000))
        );
        assert_eq!(
            parse_log_time("1733570000.25", now),
            Ok(UNIX_EPOCH + Duration::from_millis(1_733_570_000_250))
        );
        assert_eq!(
            parse_log_time("2026-12-07T10:00:00Z", now),
            Ok(at("2026-12-07T10:00:00Z"))
        );
        assert_eq!(
            parse_log_time("2026-12-07T10:00:00.5Z", now),
            Ok(at("2026-12-07T10:00:00.5Z"))
        );
        assert_eq!(
            parse_log_time("2026-12-07T10:00:00+01:30", now),
            Ok(at("2026-12-07T08:30:00Z"))
        );
        assert_eq!(
            parse_log_time("2026-12-07T10:00:00-02:00", now),
            Ok(at("2026-12-07T12:00:00Z"))
        );
        for bad in ["", "yesterday", "2026-13-07", "12:00:00x", "1.2.3"] {
            let e = parse_log_time(bad, now).unwrap_err();
            assert!(e.contains("RFC 3339"), "{bad}: {e}");
        }
    }

    #[test]
    fn zoneless_times_are_local() {
        let now = at("2026-12-07T12:00:00Z");
        let utc = at("2026-12-07T10:00:00Z");
        let off = local_offset(utc);
        let want = shift(utc, -off).unwrap();
        assert_eq!(parse_log_time("2026-12-07T10:00:00", now), Ok(want));
        assert_eq!(parse_log_time("2026-12-07T10:00", now), Ok(want));
        let midnight = shift(at("2026-12-07T00:00:00Z"), -local_offset(utc)).unwrap();
        assert_eq!(parse_log_time("2026-12-07", now), Ok(midnight));
    }

    fn log_file(dir: &Path) -> std::path::PathBuf {
        let p = dir.join("container.log");
        let mut s = String::new();
        for (i, stream) in ["stdout", "stderr", "stdout", "stdout"].iter().enumerate() {
            let e = LogEntry {
                log: format!("line {i}\n"),
                stream: stream.to_string(),
                time: format!("2026-12-07T10:0{i}:00.000000000Z"),
            };
            s.push_str(&serde_json::to_string(&e).unwrap());
            s.push('\n');
        }
        // A torn last record is not printed.
        s.push_str("{\"log\":\"tor");
        std::fs::write(&p, s).unwrap();
        p
    }

    fn run(opts: LogOptions) -> (String, String) {
        let t = tempfile::tempdir().unwrap();
        let p = log_file(t.path());
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut sink = Sink {
            out: &mut out,
            err: Some(&mut err),
        };
        show(&p, &opts, &mut sink, &mut || false).unwrap();
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(err).unwrap(),
        )
    }

    #[test]
    fn until_keeps_an_earlier_record_that_the_other_stream_wrote_later() {
        let t = tempfile::tempdir().unwrap();
        let p = t.path().join("container.log");
        let mut s = String::new();
        for (log, stream, time) in [
            ("err\n", "stderr", "2026-12-07T10:00:02.000000000Z"),
            ("out\n", "stdout", "2026-12-07T10:00:01.000000000Z"),
        ] {
            let e = LogEntry {
                log: log.into(),
                stream: stream.into(),
                time: time.into(),
            };
            s.push_str(&serde_json::to_string(&e).unwrap());
            s.push('\n');
        }
        std::fs::write(&p, s).unwrap();
        let (mut out, mut err) = (Vec::new(), Vec::new());
        let mut sink = Sink {
            out: &mut out,
            err: Some(&mut err),
        };
        let opts = LogOptions {
            until: Some(at("2026-12-07T10:00:01Z")),
            ..Default::default()
        };
        show(&p, &opts, &mut sink, &mut || false).unwrap();
        assert_eq!((out.as_slice(), err.as_slice()), (&b"out\n"[..], &b""[..]));
    }

    #[test]
    fn filters_apply_after_tail_as_in_docker() {
        let (o, e) = run(LogOptions::default());
        assert_eq!(o, "line 0\nline 2\nline 3\n");
        assert_eq!(e, "line 1\n");
        let tail2 = LogOptions {
            tail: Some(2),
            ..Default::default()
        };
        assert_eq!(run(tail2).0, "line 2\nline 3\n");
        let since = LogOptions {
            since: Some(at("2026-12-07T10:02:00Z")),
            ..Default::default()
        };
        assert_eq!(run(since).0, "line 2\nline 3\n");
        let until = LogOptions {
            until: Some(at("2026-12-07T10:01:30Z")),
            ..Default::default()
        };
        assert_eq!(run(until), ("line 0\n".into(), "line 1\n".into()));
        // Tail first: the last three, of which since keeps one.
        let both = LogOptions {
            tail: Some(3),
            since: Some(at("2026-12-07T10:03:00Z")),
            ..Default::default()
        };
        assert_eq!(run(both), ("line 3\n".into(), String::new()));
        let ts = LogOptions {
            tail: Some(1),
            timestamps: true,
            ..Default::default()
        };
        assert_eq!(run(ts).0, "2026-12-07T10:03:00.000000000Z line 3\n");
        let none = LogOptions {
            tail: Some(0),
            ..Default::default()
        };
        assert_eq!(run(none), (String::new(), String::new()));
    }
}

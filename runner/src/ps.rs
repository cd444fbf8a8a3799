//! `ps` output, Docker's way.

use crate::state::{ContainerInfo, ContainerStatus};

/// Docker's `units.HumanDuration`: "Less than a second", "3 seconds",
/// "About a minute", "5 minutes", "About an hour", "3 hours", "2 days", ...
pub fn human_duration(secs: i64) -> String {
    let secs = secs.max(0);
    let minutes = secs / 60;
    // Docker rounds hours.
    let hours = (secs + 1800) / 3600;
    if secs < 1 {
        "Less than a second".into()
    } else if secs == 1 {
        "1 second".into()
    } else if secs < 60 {
        format!("{secs} seconds")
    } else if minutes == 1 {
        "About a minute".into()
    } else if minutes < 60 {
        format!("{minutes} minutes")
    } else if hours == 1 {
        "About an hour".into()
    } else if hours < 48 {
        format!("{hours} hours")
    } else if hours < 24 * 7 * 2 {
        format!("{} days", hours / 24)
    } else if hours < 24 * 30 * 2 {
        format!("{} weeks", hours / 24 / 7)
    } else if hours < 24 * 365 * 2 {
        format!("{} months", hours / 24 / 30)
    } else {
        format!("{} years", hours / 24 / 365)
    }
}

pub(crate) fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl ContainerInfo {
    /// "Up 3 seconds", "Up 5 seconds (healthy)", "Restarting (1) 2
    /// seconds ago", "Exited (0) 2 minutes ago", "Created" (docker's
    /// `State.String()`).
    pub fn status_text(&self) -> String {
        self.status_text_at(now())
    }

    pub(crate) fn status_text_at(&self, now: i64) -> String {
        match self.status {
            ContainerStatus::Created => "Created".into(),
            ContainerStatus::Running { .. } => {
                let up = human_duration(now - self.started);
                match self.health.as_ref().map(|h| h.status.as_str()) {
                    Some("starting") => format!("Up {up} (health: starting)"),
                    Some(s) if !s.is_empty() => format!("Up {up} ({s})"),
                    _ => format!("Up {up}"),
                }
            }
            ContainerStatus::Restarting { code, finished } => {
                format!("Restarting ({code}) {} ago", human_duration(now - finished))
            }
            ContainerStatus::Exited { code, finished } => {
                format!("Exited ({code}) {} ago", human_duration(now - finished))
            }
        }
    }

    /// "0.0.0.0:5000->5000/tcp, 127.0.0.1:8080->80/tcp".
    pub fn ports_text(&self) -> String {
        self.ports
            .iter()
            .map(|p| p.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn truncate_command(cmd: &str) -> String {
    const MAX: usize = 20;
    let chars: Vec<char> = cmd.chars().collect();
    if chars.len() > MAX {
        format!("\"{}…\"", chars[..MAX - 1].iter().collect::<String>())
    } else {
        format!("\"{cmd}\"")
    }
}

/// Columns: CONTAINER ID, IMAGE, COMMAND, CREATED, STATUS, PORTS, NAMES,
/// separated by at least three spaces like Docker's tabwriter. `quiet`:
/// short IDs only, one per line.
pub fn format_ps_table(list: &[ContainerInfo], quiet: bool) -> String {
    format_at(list, quiet, now())
}

pub(crate) fn format_at(list: &[ContainerInfo], quiet: bool, now: i64) -> String {
    if quiet {
        return list.iter().map(|c| format!("{}\n", short(&c.id))).collect();
    }
    let mut rows = vec![[
        "CONTAINER ID".to_string(),
        "IMAGE".into(),
        "COMMAND".into(),
        "CREATED".into(),
        "STATUS".into(),
        "PORTS".into(),
        "NAMES".into(),
    ]];
    for c in list {
        rows.push([
            short(&c.id).to_string(),
            c.image.clone(),
            truncate_command(&c.command),
            format!("{} ago", human_duration(now - c.created)),
            c.status_text_at(now),
            c.ports_text(),
            c.name.clone(),
        ]);
    }
    let mut widths = [0usize; 7];
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r.iter()) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    for r in &rows {
        let mut line = String::new();
        for (i, cell) in r.iter().enumerate() {
            line.push_str(cell);
            if i < 6 {
                let pad = widths[i] - cell.chars().count() + 3;
                line.extend(std::iter::repeat_n(' ', pad));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn short(id: &str) -> &str {
    &id[..12.min(id.len())]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{PortMapping, Protocol};

    #[test]
    fn durations_like_docker() {
        assert_eq!(human_duration(0), "Less than a second");
        assert_eq!(human_duration(1), "1 second");
        assert_eq!(human_duration(3), "3 seconds");
        assert_eq!(human_duration(60), "About a minute");
        assert_eq!(human_duration(150), "2 minutes");
        assert_eq!(human_duration(3600), "About an hour");
        assert_eq!(human_duration(5 * 3600), "5 hours");
        assert_eq!(human_duration(3 * 86400), "3 days");
        assert_eq!(human_duration(20 * 86400), "2 weeks");
        assert_eq!(human_duration(90 * 86400), "3 months");
        assert_eq!(human_duration(800 * 86400), "2 years");
    }

    fn info(status: ContainerStatus) -> ContainerInfo {
        ContainerInfo {
            id: "0123456789abcdef".repeat(4),
            name: "web".into(),
            image: "flask_app:0.1".into(),
            command: "python -m flask run --host=0.0.0.0".into(),
            created: 1000,
            started: 1000,
            status,
            ports: vec![PortMapping {
                host_ip: "0.0.0.0".parse().unwrap(),
                host_port: 5000,
                container_port: 5000,
                protocol: Protocol::Tcp,
            }],
            oom_killed: false,
            resources: Default::default(),
            cgroups: vec![],
            spec: Default::default(),
            auto_remove: false,
            restart_policy: Default::default(),
            restart_count: 0,
            healthcheck: None,
            health: None,
        }
    }

    #[test]
    fn table_has_docker_columns() {
        let list = [
            info(ContainerStatus::Running { pid: 42 }),
            info(ContainerStatus::Exited {
                code: 137,
                finished: 1100,
            }),
        ];
        let t = format_at(&list, false, 1000 + 180);
        let lines: Vec<&str> = t.lines().collect();
        assert!(lines[0].starts_with("CONTAINER ID   IMAGE           COMMAND"));
        assert!(lines[1].starts_with(
            "0123456789ab   flask_app:0.1   \"python -m flask run…\"   3 minutes ago   Up 3 minutes"
        ));
        assert!(lines[1].ends_with("0.0.0.0:5000->5000/tcp   web"));
        assert!(lines[2].contains("Exited (137) About a minute ago"));
        assert_eq!(format_at(&list, true, 0), "0123456789ab\n0123456789ab\n");
        assert_eq!(info(ContainerStatus::Created).status_text(), "Created");
        let r = info(ContainerStatus::Restarting {
            code: 1,
            finished: 1178,
        });
        assert_eq!(r.status_text_at(1180), "Restarting (1) 2 seconds ago");
        let mut h = info(ContainerStatus::Running { pid: 7 });
        for (status, text) in [
            ("starting", "Up 5 seconds (health: starting)"),
            ("healthy", "Up 5 seconds (healthy)"),
            ("unhealthy", "Up 5 seconds (unhealthy)"),
        ] {
            h.health = Some(crate::HealthState {
                status: status.into(),
                ..Default::default()
            });
            assert_eq!(h.status_text_at(1005), text);
        }
    }
}

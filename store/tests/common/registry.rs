//! A throwaway CNCF distribution registry (Debian's `docker-registry`) for
//! the registry tests, started by `fixtures/registry/start-registry.sh` and
//! stopped when the guard drops.

use std::path::{Path, PathBuf};
use std::process::Command;

use kiln_store::image::ImageConfig;
use kiln_store::{ImageRecord, LayerOptions, Store};

pub struct RegistryGuard {
    pub dir: tempfile::TempDir,
    /// `127.0.0.1:PORT`
    pub addr: String,
    pid: i32,
}

impl RegistryGuard {
    /// Starts a registry (plain http, or TLS + htpasswd auth). `None` when
    /// `docker-registry` is missing and `CI` is not set (the caller skips,
    /// loudly); with `CI` set a missing registry fails the test.
    pub fn start(tls_auth: bool) -> Option<RegistryGuard> {
        let have = Command::new("sh")
            .args(["-c", "command -v docker-registry"])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !kiln_testkit::require(
            have,
            "docker-registry is not installed (apt-get install docker-registry)",
        ) {
            return None;
        }
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../fixtures/registry/start-registry.sh");
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = Command::new("bash");
        cmd.arg(&script).arg(dir.path());
        if tls_auth {
            cmd.arg("--tls-auth");
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "start-registry.sh failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let addr = std::fs::read_to_string(dir.path().join("addr"))
            .unwrap()
            .trim()
            .to_string();
        let pid: i32 = std::fs::read_to_string(dir.path().join("pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        Some(RegistryGuard { dir, addr, pid })
    }

    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn username(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("username"))
            .unwrap()
            .trim()
            .to_string()
    }

    pub fn password(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("password"))
            .unwrap()
            .trim()
            .to_string()
    }
}

impl Drop for RegistryGuard {
    fn drop(&mut self) {
        // The registry runs in its own session, started by the script: it
        // is not our child, so there is nothing to wait for.
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
        }
    }
}

/// An image made with the store's own API: two layers of small files.
pub fn make_image(store: &Store, seed: &str) -> ImageRecord {
    let mut layers = Vec::new();
    for i in 0..2 {
        let p = store.new_snapshot().unwrap();
        let d = p.upper().join(format!("layer{i}"));
        std::fs::create_dir_all(d.join("sub")).unwrap();
        std::fs::write(
            d.join("hello.txt"),
            format!("hello from {seed} layer {i}\n"),
        )
        .unwrap();
        // Some bulk that compresses differently under gzip and zstd.
        let bulk: Vec<u8> = (0..300_000u32).map(|n| ((n * 7 + i) % 251) as u8).collect();
        std::fs::write(d.join("sub/bulk.bin"), bulk).unwrap();
        layers.push(store.commit_snapshot(p, &LayerOptions::default()).unwrap());
    }
    let config = ImageConfig {
        architecture: kiln_store::image::host_architecture().into(),
        os: "linux".into(),
        created: Some("2026-01-01T00:00:00Z".into()),
        ..Default::default()
    };
    store.write_image(&config, &layers).unwrap()
}

//! The build report: what a build leaves for `kiln cache why`.

use anyhow::{anyhow, Result};
use std::path::PathBuf;

use kiln_store::Store;

/// What a build leaves for `kiln cache why`: each step that was not a
/// cache hit, with the reason.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Report {
    pub image: String,
    pub steps: usize,
    pub missed: Vec<(String, String)>,
}

pub fn render_report(r: &Report) -> String {
    if r.missed.is_empty() {
        return format!("explain: all {} steps were cache hits\n", r.steps);
    }
    let mut s = "explain: why steps were not cache hits:\n".to_string();
    for (step, why) in &r.missed {
        s.push_str(&format!("  {step}: {why}\n"));
    }
    s
}

fn report_path(store: &Store, image: &kiln_store::Digest) -> PathBuf {
    store
        .root()
        .join("builds")
        .join(format!("{}.json", image.hex()))
}

/// Kept under `<root>/builds/`, one file per image (the last build that
/// produced it), written atomically.
pub fn save_report(store: &Store, image: &kiln_store::Digest, r: &Report) -> Result<()> {
    let dir = store.root().join("builds");
    std::fs::create_dir_all(&dir)?;
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)?;
    serde_json::to_writer(&mut tmp, r)?;
    tmp.persist(report_path(store, image))
        .map_err(|e| anyhow!("saving the build report: {e}"))?;
    Ok(())
}

pub fn load_report(store: &Store, image: &kiln_store::Digest) -> Result<Option<Report>> {
    match std::fs::read(report_path(store, image)) {
        Ok(b) => Ok(Some(serde_json::from_slice(&b)?)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(e.into()),
    }
}

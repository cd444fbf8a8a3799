//! The build report: what a build leaves for `kiln cache why`.

use anyhow::{Context, Result};

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

/// Kept by the store's build records, one per image (the last build that
/// produced it).
pub fn save_report(store: &Store, image: &kiln_store::Digest, r: &Report) -> Result<()> {
    let json = serde_json::to_vec(r)?;
    store
        .cache()
        .build_records()
        .put(image, &json)
        .context("saving the build report")?;
    Ok(())
}

pub fn load_report(store: &Store, image: &kiln_store::Digest) -> Result<Option<Report>> {
    match store.cache().build_records().get(image)? {
        Some(b) => Ok(Some(serde_json::from_slice(&b)?)),
        None => Ok(None),
    }
}

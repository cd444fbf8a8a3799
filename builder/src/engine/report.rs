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
    /// When some hits came from an imported cache: every step that hit,
    /// with the `--cache-from` source of its record (`None`: a record made
    /// on this root).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub hits: Vec<(String, Option<String>)>,
}

pub fn render_report(r: &Report) -> String {
    let mut s = if r.missed.is_empty() {
        format!("explain: all {} steps were cache hits\n", r.steps)
    } else {
        let mut s = "explain: why steps were not cache hits:\n".to_string();
        for (step, why) in &r.missed {
            s.push_str(&format!("  {step}: {why}\n"));
        }
        s
    };
    if !r.hits.is_empty() {
        s.push_str("explain: where the cache hits came from:\n");
        for (step, origin) in &r.hits {
            match origin {
                Some(o) => s.push_str(&format!("  {step}: CACHED (from {o})\n")),
                None => s.push_str(&format!("  {step}: CACHED (made on this root)\n")),
            }
        }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hits_name_their_source_when_some_were_imported() {
        let mut r = Report {
            image: String::new(),
            steps: 2,
            missed: vec![],
            hits: vec![],
        };
        assert_eq!(render_report(&r), "explain: all 2 steps were cache hits\n");
        r.hits = vec![
            (
                "RUN a (Dockerfile:2)".into(),
                Some("type=registry,ref=h/a:c".into()),
            ),
            ("COPY b /b (Dockerfile:3)".into(), None),
        ];
        assert_eq!(
            render_report(&r),
            "explain: all 2 steps were cache hits\n\
             explain: where the cache hits came from:\n  \
             RUN a (Dockerfile:2): CACHED (from type=registry,ref=h/a:c)\n  \
             COPY b /b (Dockerfile:3): CACHED (made on this root)\n"
        );
    }
}

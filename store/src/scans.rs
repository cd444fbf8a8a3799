//! Files read out of an image's layers ([`crate::layer::FileView`]), with
//! each layer's part kept in the database by layer digest and selector:
//! a layer's content never changes, so the same selector over the same
//! layer is read once.

use rusqlite::OptionalExtension;

use crate::error::Result;
use crate::layer::{FileView, LayerScan};
use crate::store::{LayerInfo, Store};

impl Store {
    /// The files `layers` (bottom first) leave at the paths `want` picks.
    /// `selector` names `want` (and must change when `want` does): each
    /// layer's scan is kept under it.
    pub fn layer_files(
        &self,
        layers: &[LayerInfo],
        selector: &str,
        want: &dyn Fn(&str) -> bool,
        max_file_bytes: u64,
    ) -> Result<FileView> {
        let mut view = FileView::new(max_file_bytes);
        let limits = self.layer_limits();
        let key = format!("{selector}\0max={max_file_bytes}");
        for l in layers {
            let kept: Option<Vec<u8>> = self
                .conn()
                .prepare_cached("SELECT data FROM layer_scans WHERE digest = ?1 AND selector = ?2")?
                .query_row([l.digest.as_str(), key.as_str()], |r| r.get(0))
                .optional()?;
            if let Some(scan) = kept.and_then(|b| serde_json::from_slice::<LayerScan>(&b).ok()) {
                view.merge(scan);
                continue;
            }
            let mut blob = self.open_blob(&l.digest)?;
            let scan = view.scan(&mut blob, &limits, want)?;
            self.conn()
                .prepare_cached(
                    "INSERT OR REPLACE INTO layer_scans (digest, selector, data) VALUES (?1, ?2, ?3)",
                )?
                .execute(rusqlite::params![l.digest.as_str(), key, serde_json::to_vec(&scan)?])?;
            view.merge(scan);
        }
        Ok(view)
    }
}

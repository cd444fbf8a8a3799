//! A stage's root that is unpacked (and, for layers known remotely, not
//! local, fetched) only when something looks into it: a COPY to a
//! destination ending in `/` or a WORKDIR without USER finds its cache hit
//! without touching the layers below, so a fully cached build from a
//! registry cache downloads no layer.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use anyhow::{anyhow, Context as _, Result};
use kiln_store::{LayerInfo, Store};

use crate::fsutil::RootView;

pub(super) struct LazyView {
    store: Arc<Store>,
    layers: Vec<LayerInfo>,
    view: OnceLock<std::result::Result<RootView, String>>,
}

impl LazyView {
    pub(super) fn new(store: Arc<Store>, layers: &[LayerInfo]) -> LazyView {
        LazyView {
            store,
            layers: layers.to_vec(),
            view: OnceLock::new(),
        }
    }

    /// The root, its snapshots unpacked (fetched first when remote) on the
    /// first call.
    pub(super) fn get(&self) -> Result<&RootView> {
        self.view
            .get_or_init(|| {
                self.layers
                    .iter()
                    .rev()
                    .map(|l| {
                        self.store
                            .ensure_snapshot(l)
                            .with_context(|| format!("unpacking layer {}", l.digest))
                    })
                    .collect::<Result<Vec<_>>>()
                    .map(RootView::new)
                    .map_err(|e| format!("{e:#}"))
            })
            .as_ref()
            .map_err(|e| anyhow!("{e}"))
    }
}

/// The snapshot dirs of `layers`, unpacked now, top-most first (overlay
/// lower order).
pub(super) fn snapshots(store: &Store, layers: &[LayerInfo]) -> Result<Vec<PathBuf>> {
    layers
        .iter()
        .rev()
        .map(|l| {
            store
                .ensure_snapshot(l)
                .with_context(|| format!("unpacking layer {}", l.digest))
        })
        .collect()
}

/// `layers` as a root, unpacked now.
pub(super) fn view(store: &Store, layers: &[LayerInfo]) -> Result<RootView> {
    Ok(RootView::new(snapshots(store, layers)?))
}

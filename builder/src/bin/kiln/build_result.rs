//! What a build leaves in the store: its image (in an index with its
//! attestations when asked for), or for several platforms one image per
//! platform in one OCI image index; tagged, and exported to every
//! `--output`.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{anyhow, Result};
use kiln_builder::engine::inline;
use kiln_builder::engine::output::{export_output, export_platforms, Output};
use kiln_builder::engine::{Builder, StageResult};
use kiln_store::{Digest, ImageConfig, ImageRecord, IndexRecord};

use crate::cli;

/// The images a build wrote.
pub struct Built {
    /// One per target platform, in `--platform` order.
    pub images: Vec<ImageRecord>,
    /// The index the tags name: the platforms', or one image's with its
    /// attestations.
    pub index: Option<IndexRecord>,
}

impl Built {
    /// What `-q` and `--iidfile` give: the image ID, or the index's
    /// digest for several platforms (as BuildKit does).
    pub fn id(&self) -> Digest {
        match (&self.index, self.images.as_slice()) {
            (Some(i), [_, _, ..]) => i.digest.clone(),
            _ => self.images[0].config_digest.clone(),
        }
    }
}

/// The image config of target `t`: labels added, layers listed, dated by
/// its newest history entry, and its platform the target's when
/// `--platform` named it (BuildKit sets it whatever the last stage's base).
fn final_config(builder: &Builder, result: &StageResult, t: usize) -> ImageConfig {
    let mut config = result.config.clone();
    for (k, v) in &builder.opts.labels {
        config.config.labels.insert(k.clone(), v.clone());
    }
    config.rootfs.diff_ids = result.layers.iter().map(|l| l.diff_id.clone()).collect();
    config.created = config
        .history
        .iter()
        .rev()
        .find_map(|h| h.created.clone())
        .or(config.created.clone());
    let target = &builder.plan.targets[t];
    if target.explicit {
        config.os = target.platform.os.clone();
        config.architecture = target.platform.arch.clone();
        config.variant = target.platform.variant.clone();
    }
    config
}

pub fn write_images(
    builder: &Builder,
    results: &[Arc<StageResult>],
    args: &cli::BuildArgs,
    outputs: &[Output],
    attest: &crate::attach::AttestRequest,
    started_on: String,
    inline: bool,
) -> Result<Built> {
    let id = builder.progress.start("exporting to image");
    let mut images = Vec::new();
    for (t, result) in results.iter().enumerate() {
        let mut config = final_config(builder, result, t);
        if inline {
            // `--cache-to type=inline`: the records of the image's own
            // chain ride in its config.
            let doc = inline::document(
                &builder.store,
                &builder.chain_keys(result),
                builder.opts.source_date_epoch,
            )?;
            let n = doc["records"].as_array().map_or(0, Vec::len);
            inline::attach(&mut config, doc);
            builder.progress.info(&format!(
                "exporting {n} cache records inline, in the image config"
            ));
        }
        let image = builder.store.write_image(&config, &result.layers)?;
        if results.len() > 1 {
            builder.progress.info(&format!(
                "exporting manifest {} for {}",
                image.manifest_digest, builder.plan.targets[t].platform
            ));
        }
        images.push(image);
    }
    let index = if images.len() > 1 {
        let refs: Vec<&ImageRecord> = images.iter().collect();
        let i = builder.store.write_index(&refs, &[])?;
        builder
            .progress
            .info(&format!("exporting manifest list {}", i.digest));
        Some(i)
    } else if attest.any() {
        let name = args.tags.first().map(String::as_str).unwrap_or("");
        let input = crate::attach::provenance_input(builder, args, started_on);
        Some(crate::attach::attach(
            &builder.store,
            &images[0],
            name,
            attest,
            &input,
        )?)
    } else {
        None
    };
    let named = index
        .as_ref()
        .map_or(&images[0].manifest_digest, |i| &i.digest);
    for t in &args.tags {
        builder
            .store
            .tag(t, named)
            .map_err(|e| anyhow!("invalid tag {t:?}: {e}"))?;
        builder.progress.info(&format!("naming to {t}"));
    }
    let built = Built { images, index };
    builder
        .progress
        .info(&format!("writing image {} done", built.id()));
    builder.progress.done(id, Duration::ZERO);
    for out in outputs {
        if results.len() == 1 {
            export_output(
                &builder.store,
                &built.images[0],
                &results[0].layers,
                out,
                &args.tags,
            )?;
        } else {
            let per: Vec<_> = builder
                .plan
                .targets
                .iter()
                .zip(results)
                .map(|(t, r)| (t.platform.clone(), r.layers.clone()))
                .collect();
            let index = built
                .index
                .as_ref()
                .expect("several platforms make an index");
            export_platforms(&builder.store, index, &per, out, &args.tags)?;
        }
    }
    Ok(built)
}

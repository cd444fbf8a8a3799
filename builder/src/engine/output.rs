//! `--output`: the built image as a directory, a tar of its tree, or an
//! OCI / Docker archive.

use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context as _, Result};
use kiln_store::{LayerInfo, Store};

use super::options::parse_kv;

#[derive(Debug)]
pub enum Output {
    Local(PathBuf),
    Tar(PathBuf),
    Oci(PathBuf),
    Docker(PathBuf),
}

pub fn parse_output(spec: &str) -> Result<Output> {
    let mut ty = None;
    let mut dest = None;
    for part in spec.split(',') {
        let (k, v) = parse_kv(part, "--output field")?;
        match k.as_str() {
            "type" => ty = Some(v),
            "dest" => dest = Some(PathBuf::from(v)),
            other => bail!("--output: unsupported field {other:?} (kiln knows type= and dest=)"),
        }
    }
    let dest = dest.ok_or_else(|| anyhow!("--output {spec:?}: dest= is required"))?;
    Ok(match ty.as_deref() {
        Some("local") => Output::Local(dest),
        Some("tar") => Output::Tar(dest),
        Some("oci") => Output::Oci(dest),
        Some("docker") => Output::Docker(dest),
        other => bail!(
            "--output type {:?} is not supported (local, tar, oci, docker)",
            other.unwrap_or("")
        ),
    })
}

pub fn export_output(
    store: &Store,
    image: &kiln_store::ImageRecord,
    layers: &[LayerInfo],
    out: &Output,
    tags: &[String],
) -> Result<()> {
    match out {
        Output::Local(dir) => {
            std::fs::create_dir_all(dir)?;
            flatten_into(store, layers, dir)
        }
        Output::Tar(file) => {
            let tmp = store.tempdir("output")?;
            flatten_into(store, layers, tmp.path())?;
            let mut f = std::fs::File::create(file)?;
            let opts = kiln_store::LayerOptions {
                compression: kiln_store::Compression::None,
                ..Default::default()
            };
            kiln_store::layer::write_layer(tmp.path(), &opts, &mut f)?;
            Ok(())
        }
        Output::Oci(file) | Output::Docker(file) => {
            let format = if matches!(out, Output::Oci(_)) {
                kiln_store::ArchiveFormat::Oci
            } else {
                kiln_store::ArchiveFormat::Docker
            };
            let refs: Vec<String> = if tags.is_empty() {
                vec![image.config_digest.to_string()]
            } else {
                tags.to_vec()
            };
            let mut f = std::fs::File::create(file)?;
            store.save(&refs, format, &mut f)?;
            Ok(())
        }
    }
}

/// Applies the layers in order into `dir` (whiteouts delete).
pub fn flatten_into(store: &Store, layers: &[LayerInfo], dir: &Path) -> Result<()> {
    for l in layers {
        let mut blob = store.open_blob(&l.digest)?;
        let diff_id = kiln_store::layer::apply_layer(
            &mut blob,
            dir,
            kiln_store::layer::WhiteoutMode::Apply,
            &store.layer_limits(),
        )
        .with_context(|| format!("layer {} cannot be unpacked", l.digest))?;
        if diff_id != l.diff_id {
            bail!(
                "layer {} unpacked to {} but the image says {}",
                l.digest,
                diff_id,
                l.diff_id
            );
        }
    }
    Ok(())
}

/// `--output` of a multi-platform build, as BuildKit writes it: `local`
/// and `tar` hold one directory per platform (`linux_amd64/`,
/// `linux_arm64/`); `oci` is the index with every platform's image;
/// `docker` cannot hold an index (BuildKit refuses it too).
pub fn export_platforms(
    store: &Store,
    index: &kiln_store::IndexRecord,
    per: &[(super::platform::Platform, Vec<LayerInfo>)],
    out: &Output,
    tags: &[String],
) -> Result<()> {
    let fill = |root: &Path| -> Result<()> {
        for (p, layers) in per {
            let dir = root.join(p.dir_name());
            std::fs::create_dir_all(&dir)?;
            flatten_into(store, layers, &dir).with_context(|| format!("{p}"))?;
        }
        Ok(())
    };
    match out {
        Output::Local(dir) => fill(dir),
        Output::Tar(file) => {
            let tmp = store.tempdir("output")?;
            fill(tmp.path())?;
            let mut f = std::fs::File::create(file)?;
            let opts = kiln_store::LayerOptions {
                compression: kiln_store::Compression::None,
                ..Default::default()
            };
            kiln_store::layer::write_layer(tmp.path(), &opts, &mut f)?;
            Ok(())
        }
        Output::Oci(file) => {
            if tags.is_empty() {
                bail!(
                    "--output type=oci of several platforms needs -t NAME:TAG: the layout names the index {} by it",
                    index.digest
                );
            }
            let mut f = std::fs::File::create(file)?;
            store.save(tags, kiln_store::ArchiveFormat::Oci, &mut f)?;
            Ok(())
        }
        Output::Docker(_) => bail!(
            "--output type=docker: docker exporter does not currently support exporting manifest lists; \
             build one platform, or use type=oci"
        ),
    }
}

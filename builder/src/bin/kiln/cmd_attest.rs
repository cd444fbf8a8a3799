//! `kiln sbom IMAGE`: the packages an image contains, as an SPDX 2.3
//! document (or the in-toto statement BuildKit attaches), read from the
//! image's layers without running anything from it.

use std::io::Write;
use std::process::ExitCode;

use anyhow::{Context, Result};
use kiln_attest::intoto::{Statement, Subject, PREDICATE_SPDX};
use kiln_attest::spdx::{self, DocumentInfo};
use kiln_store::layer::FileView;
use kiln_store::{ImageRecord, Store};

use crate::cli::{SbomArgs, SbomFormat};
use crate::cmd_images::no_such_image;

/// The largest package database file read into memory (a dpkg status of a
/// full desktop install is ~5 MB; Python METADATA files are KBs).
const MAX_DB_FILE: u64 = 64 << 20;

pub fn sbom(store: &Store, args: &SbomArgs) -> Result<ExitCode> {
    let img = store
        .resolve_image(&args.image)?
        .ok_or_else(|| no_such_image(&args.image))?;
    let (doc, count) = sbom_document(store, &img, &args.image)?;
    let json = match args.format {
        SbomFormat::SpdxJson => serde_json::to_vec_pretty(&doc)?,
        SbomFormat::InToto => {
            let subject = image_subject(&args.image, &img);
            serde_json::to_vec_pretty(&Statement::new(PREDICATE_SPDX, vec![subject], doc))?
        }
    };
    match &args.output {
        Some(path) => std::fs::write(path, &json)
            .with_context(|| format!("cannot write {}", path.display()))?,
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(&json)?;
            out.write_all(b"\n")?;
        }
    }
    eprintln!("{count} packages in {}", args.image);
    Ok(ExitCode::SUCCESS)
}

/// The SPDX document of an image (and how many packages it lists).
pub fn sbom_document(
    store: &Store,
    img: &ImageRecord,
    name: &str,
) -> Result<(spdx::Document, usize)> {
    let view = image_files(store, img)?;
    for s in view.skipped() {
        eprintln!(
            "kiln: warning: /{s} is over {} MiB and was not read; its packages are not listed",
            MAX_DB_FILE >> 20
        );
    }
    let packages = kiln_attest::find_packages(view.files());
    let created = created_time(img);
    let info = DocumentInfo {
        name,
        created: &created,
        tool: concat!("kiln-", env!("CARGO_PKG_VERSION")),
    };
    Ok((spdx::document(&info, &packages), packages.len()))
}

/// The package-database files the image's layers leave, bottom layer first
/// (each layer's part kept by the store: a base's layers are read once).
fn image_files(store: &Store, img: &ImageRecord) -> Result<FileView> {
    store
        .layer_files(
            &img.layers,
            SBOM_SELECTOR,
            &kiln_attest::wanted,
            MAX_DB_FILE,
        )
        .context("reading the image's package databases")
}

/// Names what [`kiln_attest::wanted`] picks; bump it when that changes.
const SBOM_SELECTOR: &str = "kiln-sbom-v1";

/// SOURCE_DATE_EPOCH when set, else the image's own creation time: the same
/// image gives the same document.
fn created_time(img: &ImageRecord) -> String {
    if let Some(secs) = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|v| v.parse::<i64>().ok())
    {
        if let Some(t) = chrono::DateTime::from_timestamp(secs, 0) {
            return t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        }
    }
    // SPDX wants whole seconds in UTC (`2024-01-01T00:00:00Z`).
    img.config
        .created
        .as_deref()
        .and_then(|c| chrono::DateTime::parse_from_rfc3339(c).ok())
        .map(|t| {
            t.with_timezone(&chrono::Utc)
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        })
        .unwrap_or_else(|| "1970-01-01T00:00:00Z".to_string())
}

pub fn image_subject(name: &str, img: &ImageRecord) -> Subject {
    let platform = match &img.config.variant {
        Some(v) => format!("{}/{}/{}", img.config.os, img.config.architecture, v),
        None => format!("{}/{}", img.config.os, img.config.architecture),
    };
    let (repo, tag) = match kiln_store::reference::parse(name) {
        Ok(r) => (
            format!("{}/{}", r.domain(), r.path()),
            r.tag().map(str::to_string),
        ),
        Err(_) => (name.to_string(), None),
    };
    Subject::image(&repo, tag.as_deref(), &platform, img.manifest_digest.hex())
}

/// `kiln inspect --attestations IMAGE...`: the in-toto statements attached
/// to each image, as one JSON array per image (`[]` when it has none).
pub fn inspect_attestations(store: &Store, names: &[String]) -> Result<ExitCode> {
    let mut out = Vec::new();
    for n in names {
        if store.resolve_image(n)?.is_none() {
            return Err(no_such_image(n));
        }
        let statements: Vec<serde_json::Value> = store
            .attestations(n)?
            .iter()
            .map(|s| {
                serde_json::from_slice(&s.bytes).with_context(|| {
                    format!("an attestation of {n} ({}) is not JSON", s.predicate_type)
                })
            })
            .collect::<Result<_>>()?;
        out.push(serde_json::json!({"Name": n, "Attestations": statements}));
    }
    println!("{}", serde_json::to_string_pretty(&out)?);
    Ok(ExitCode::SUCCESS)
}

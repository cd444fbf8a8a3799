//! The image readers: manifest / index / config JSON (parsed, re-encoded
//! canonically, parsed again, matched against each other), references and
//! platforms, and `Store::load`, the docker-archive / OCI-layout reader.
//!
//! The input is either a raw archive (first byte even) or, so that the
//! fuzzer spends its time on the JSON rather than on tar checksums, up to
//! four files separated by `\n--\n` that are wrapped into a valid tar as
//! `manifest.json` (or `index.json`), a config, a layer and a blob.
#![no_main]

use std::cell::RefCell;
use std::io::Read;

use kiln_store::image::{canonical_json, Index, Manifest};
use kiln_store::{ImageConfig, Platform, Store};
use libfuzzer_sys::fuzz_target;

thread_local! {
    static STORE: RefCell<Option<(tempfile::TempDir, Store, u32)>> = const { RefCell::new(None) };
}

/// A store on tmpfs, replaced every 500 runs so that loaded blobs do not pile up.
fn with_store(f: impl FnOnce(&Store)) {
    STORE.with(|s| {
        let mut s = s.borrow_mut();
        if s.as_ref().is_none_or(|(_, _, n)| *n >= 500) {
            *s = None;
            let dir = tempfile::Builder::new()
                .prefix("kiln-fuzz-readers")
                .tempdir_in("/dev/shm")
                .or_else(|_| tempfile::tempdir())
                .expect("temp dir");
            let store = Store::open(&dir.path().join("root")).expect("store opens");
            *s = Some((dir, store, 0));
        }
        let (_, store, n) = s.as_mut().expect("store");
        *n += 1;
        f(store);
    });
}

fn json_readers(data: &[u8]) {
    if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
        let again: Manifest = serde_json::from_slice(&canonical_json(&m).unwrap()).unwrap();
        assert_eq!(m, again, "a manifest changes through canonical JSON");
    }
    if let Ok(i) = serde_json::from_slice::<Index>(data) {
        let again: Index = serde_json::from_slice(&canonical_json(&i).unwrap()).unwrap();
        assert_eq!(i, again, "an index changes through canonical JSON");
    }
    if let Ok(c) = serde_json::from_slice::<ImageConfig>(data) {
        let bytes = canonical_json(&c).unwrap();
        let again: ImageConfig = serde_json::from_slice(&bytes).unwrap();
        assert_eq!(canonical_json(&again).unwrap(), bytes, "config not stable");
        if let Ok(m) = serde_json::from_slice::<Manifest>(data) {
            if let Some(l) = m.layer_infos(&c) {
                assert_eq!(l.len(), m.layers.len());
            }
        }
    }
    if let Ok(s) = std::str::from_utf8(data) {
        if let Ok(r) = kiln_store::reference::parse(s) {
            let again = kiln_store::reference::parse(&r.full()).expect("full form reparses");
            assert_eq!(again.full(), r.full());
        }
        let _ = Platform::parse(s);
    }
}

fn wrap(data: &[u8]) -> Vec<u8> {
    let parts: Vec<&[u8]> = split(data);
    let oci = parts.first().is_some_and(|p| p.windows(9).any(|w| w == b"manifests"));
    let mut names = vec![if oci { "index.json" } else { "manifest.json" }.to_string()];
    names.push("config.json".into());
    names.push("layer/layer.tar".into());
    names.push("blobs/sha256/0000".into());
    let mut b = tar::Builder::new(Vec::new());
    for (name, body) in names.iter().zip(parts) {
        let mut h = tar::Header::new_ustar();
        h.set_size(body.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, body).unwrap();
    }
    b.into_inner().unwrap()
}

fn split(data: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = data;
    while out.len() < 3 {
        match rest.windows(4).position(|w| w == b"\n--\n") {
            Some(i) => {
                out.push(&rest[..i]);
                rest = &rest[i + 4..];
            }
            None => break,
        }
    }
    out.push(rest);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, body)) = data.split_first() else {
        return;
    };
    for part in split(body) {
        json_readers(part);
    }
    let archive = if mode % 2 == 0 { body.to_vec() } else { wrap(body) };
    with_store(|store| {
        let mut r: &[u8] = &archive;
        let _ = store.load(&mut r as &mut dyn Read);
    });
});

//! The package-database readers and the SPDX writer on hostile files: the
//! input is split on NUL bytes into the files an image could leave at the
//! paths the readers look at. Nothing may panic, and the document must
//! serialise.
#![no_main]

use std::collections::BTreeMap;

use kiln_attest::spdx::{document, DocumentInfo};
use libfuzzer_sys::fuzz_target;

const PATHS: &[&str] = &[
    "var/lib/dpkg/status",
    "etc/os-release",
    "lib/apk/db/installed",
    "usr/lib/python3/site-packages/a-1.dist-info/METADATA",
    "usr/share/doc/a/copyright",
    "var/lib/dpkg/status.d/a",
];

fuzz_target!(|data: &[u8]| {
    let files: BTreeMap<String, Vec<u8>> = data
        .split(|&b| b == 0)
        .zip(PATHS)
        .map(|(bytes, p)| (p.to_string(), bytes.to_vec()))
        .collect();
    let packages = kiln_attest::find_packages(&files);
    let info = DocumentInfo {
        name: "fuzz",
        created: "1970-01-01T00:00:00Z",
        tool: "fuzz",
    };
    serde_json::to_vec(&document(&info, &packages)).expect("serialises");
});

//! `kiln sbom`: the packages of a built image, read from its layers.

mod common;

use common::{write_tree, Kiln};
use serde_json::Value;

fn setup() -> Option<Kiln> {
    common::root_with_busybox("kiln build runs containers: needs root")
}

const STATUS: &str = "\
Package: tool
Status: install ok installed
Architecture: amd64
Version: 1:2.0-1+b1
Source: tool-src (2.0-1)

Package: removed
Status: deinstall ok config-files
Architecture: amd64
Version: 0.9
";

fn packages(doc: &Value) -> Vec<(String, String, String)> {
    doc["packages"]
        .as_array()
        .expect("packages")
        .iter()
        .skip(1)
        .map(|p| {
            (
                p["name"].as_str().unwrap().to_string(),
                p["licenseDeclared"].as_str().unwrap().to_string(),
                p["externalRefs"][0]["referenceLocator"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            )
        })
        .collect()
}

#[test]
fn sbom_lists_what_the_final_layers_leave_and_not_what_a_later_step_deleted() {
    let Some(k) = setup() else { return };
    let ctx = tempfile::tempdir().unwrap();
    let site = "usr/lib/python3/site-packages";
    write_tree(
        ctx.path(),
        &[
            ("status", STATUS),
            ("os-release", "ID=debian\nVERSION_ID=\"12\"\n"),
            ("copyright", "Format: x\n\nFiles: *\nLicense: GPL-2+\n"),
            ("keep/METADATA", "Metadata-Version: 2.1\nName: Keep_Me\nVersion: 1.0\nLicense-Expression: MIT\n\nbody\n"),
            ("gone/METADATA", "Name: gone\nVersion: 3\n"),
            (
                "Dockerfile",
                &format!(
                    "FROM busybox\n\
                     COPY status /var/lib/dpkg/status\n\
                     COPY os-release /etc/os-release\n\
                     COPY copyright /usr/share/doc/tool/copyright\n\
                     COPY keep/METADATA /{site}/keep_me-1.0.dist-info/METADATA\n\
                     COPY gone/METADATA /{site}/gone-3.dist-info/METADATA\n\
                     RUN rm -r /{site}/gone-3.dist-info\n"
                ),
            ),
        ],
    );
    k.build_dir(ctx.path(), &["-t", "sbom-test:1"]).ok();
    let out = k.run(&["sbom", "sbom-test:1"]).ok();
    let doc: Value = serde_json::from_str(&out.stdout()).expect("JSON on stdout");
    assert_eq!(doc["spdxVersion"], "SPDX-2.3");
    assert_eq!(doc["name"], "sbom-test:1");
    assert_eq!(
        packages(&doc),
        vec![
            (
                "tool".to_string(),
                "GPL-2.0-or-later".to_string(),
                "pkg:deb/debian/tool@1%3A2.0-1%2Bb1?arch=amd64&distro=debian-12&upstream=tool-src"
                    .to_string()
            ),
            (
                "Keep_Me".to_string(),
                "MIT".to_string(),
                "pkg:pypi/keep-me@1.0".to_string()
            ),
        ]
    );
    assert!(
        out.stderr().contains("2 packages in sbom-test:1"),
        "{}",
        out.stderr()
    );

    // The same image gives the same document, byte for byte.
    let again = k.run(&["sbom", "sbom-test:1"]).ok();
    assert_eq!(out.stdout(), again.stdout());

    // The in-toto form names the image manifest by digest.
    let st: Value = serde_json::from_str(
        &k.run(&["sbom", "--format", "in-toto", "sbom-test:1"])
            .ok()
            .stdout(),
    )
    .unwrap();
    let inspect: Value =
        serde_json::from_str(&k.run(&["inspect", "sbom-test:1"]).ok().stdout()).unwrap();
    let manifest = inspect[0]["ManifestDigest"].as_str().unwrap();
    assert_eq!(st["predicateType"], "https://spdx.dev/Document");
    assert_eq!(
        format!(
            "sha256:{}",
            st["subject"][0]["digest"]["sha256"].as_str().unwrap()
        ),
        manifest
    );
    assert_eq!(
        st["subject"][0]["name"],
        "pkg:docker/docker.io/library/sbom-test@1?platform=linux%2Famd64"
    );
    assert_eq!(
        st["predicate"]["documentNamespace"],
        doc["documentNamespace"]
    );
}

#[test]
fn sbom_of_a_missing_image_says_so() {
    let k = Kiln::new();
    let r = k.run(&["sbom", "no-such:image"]).fails();
    assert!(
        r.stderr().contains("No such image: no-such:image"),
        "{}",
        r.stderr()
    );
    assert!(r.stdout().is_empty());
}

#[test]
fn sbom_of_the_python_base_lists_debian_and_python_packages() {
    let Some(k) = setup() else { return };
    if !k.with_python() {
        return;
    }
    let out = k.run(&["sbom", "python:3.11-slim"]).ok();
    let doc: Value = serde_json::from_str(&out.stdout()).unwrap();
    let pk = packages(&doc);
    let find = |name: &str| pk.iter().find(|p| p.0 == name).cloned();
    let libc = find("libc6").expect("libc6 listed");
    assert!(libc.2.starts_with("pkg:deb/debian/libc6@"), "{libc:?}");
    assert!(libc.2.contains("distro=debian-12"), "{libc:?}");
    let pip = find("pip").expect("pip listed");
    assert!(pip.2.starts_with("pkg:pypi/pip@"), "{pip:?}");
    assert!(pk.len() > 80, "{} packages", pk.len());
}

//! Image indexes: one tag for the images of several platforms and the
//! attestations about them, as BuildKit writes them.

use kiln_store::image::Index;
use kiln_store::*;

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("root")).unwrap();
    (dir, s)
}

fn rootfs(content: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(content.len() as u64);
    h.set_mode(0o755);
    h.set_mtime(1);
    b.append_data(&mut h, "bin/tool", content).unwrap();
    b.into_inner().unwrap()
}

/// An untagged image for `arch` (a tag is needed to import; it is removed).
fn image(s: &Store, arch: &str) -> ImageRecord {
    let cfg = ImageConfig {
        os: "linux".into(),
        architecture: arch.into(),
        variant: (arch == "arm64").then(|| "v8".to_string()),
        ..Default::default()
    };
    let tag = format!("tmp-{arch}:1");
    let rec = s
        .import_rootfs_tar(&mut &rootfs(arch.as_bytes())[..], &tag, Some(cfg))
        .unwrap();
    s.untag(&tag).unwrap();
    rec
}

fn statement(kind: &str) -> Statement {
    Statement {
        predicate_type: format!("https://example.org/{kind}"),
        bytes: format!("{{\"_type\":\"https://in-toto.io/Statement/v0.1\",\"kind\":\"{kind}\"}}")
            .into_bytes(),
    }
}

/// amd64 and arm64 images, an attestation about the amd64 one, tagged multi:1.
fn multi(s: &Store) -> (ImageRecord, ImageRecord, IndexRecord) {
    let amd = image(s, "amd64");
    let arm = image(s, "arm64");
    let att = s
        .write_attestation(
            &amd.manifest_digest,
            &[statement("sbom"), statement("provenance")],
        )
        .unwrap();
    let idx = s.write_index(&[&amd, &arm], &[att]).unwrap();
    s.tag("multi:1", &idx.digest).unwrap();
    (amd, arm, idx)
}

#[test]
fn a_tag_on_an_index_resolves_to_the_host_image_and_lists_once() {
    let (_d, s) = store();
    let (amd, arm, idx) = multi(&s);
    assert_eq!(
        s.resolve_image("multi:1").unwrap().unwrap().manifest_digest,
        amd.manifest_digest
    );
    let by_digest = format!("multi@{}", idx.digest);
    assert_eq!(
        s.resolve_image(&by_digest)
            .unwrap()
            .unwrap()
            .manifest_digest,
        amd.manifest_digest
    );
    assert_eq!(s.resolve_index("multi:1").unwrap().unwrap(), idx);

    let list = s.list_images().unwrap();
    assert_eq!(list.len(), 1, "{list:?}");
    assert_eq!(list[0].references, ["multi:1"]);
    assert_eq!(list[0].manifest_digest, idx.digest);
    assert_eq!(list[0].config_digest, amd.config_digest);
    assert_eq!(list[0].platforms, ["linux/amd64", "linux/arm64/v8"]);

    // The index blob is what BuildKit writes: images with platforms, the
    // attestation with unknown/unknown and its reference annotations.
    let index: Index = serde_json::from_slice(&s.read_blob(&idx.digest).unwrap()).unwrap();
    assert_eq!(index.manifests.len(), 3);
    assert_eq!(index.manifests[1].digest, arm.manifest_digest);
    assert_eq!(
        index.manifests[1].platform.as_ref().unwrap()["variant"],
        "v8"
    );
    let att = &index.manifests[2];
    assert_eq!(att.platform.as_ref().unwrap()["os"], "unknown");
    assert_eq!(
        att.annotations["vnd.docker.reference.type"],
        "attestation-manifest"
    );
    assert_eq!(
        att.annotations["vnd.docker.reference.digest"],
        amd.manifest_digest.to_string()
    );
}

#[test]
fn attestations_come_back_with_their_predicate_types() {
    let (_d, s) = store();
    multi(&s);
    let got = s.attestations("multi:1").unwrap();
    assert_eq!(got.len(), 2);
    assert_eq!(got[0], statement("sbom"));
    assert_eq!(got[1].predicate_type, "https://example.org/provenance");
    assert!(s.attestations("nothing:here").unwrap().is_empty());
}

#[test]
fn prune_keeps_a_tagged_index_whole_and_rmi_takes_its_images() {
    let (_d, s) = store();
    let (amd, _arm, idx) = multi(&s);
    let opts = PruneOptions {
        dangling_images: true,
        ..Default::default()
    };
    s.prune(&opts).unwrap();
    s.prune(&PruneOptions {
        all: true,
        ..Default::default()
    })
    .unwrap();
    assert!(s.fsck(false).unwrap().is_clean());
    assert_eq!(s.attestations("multi:1").unwrap().len(), 2);
    assert!(s
        .resolve_image(&amd.manifest_digest.to_string())
        .unwrap()
        .is_some());

    let lines = s.remove_image("multi:1", false).unwrap();
    assert_eq!(
        lines,
        [
            "Untagged: multi:1".to_string(),
            format!("Deleted: {}", idx.digest)
        ]
    );
    assert!(s.list_images().unwrap().is_empty());
    assert!(s
        .resolve_image(&amd.manifest_digest.to_string())
        .unwrap()
        .is_none());
    s.prune(&PruneOptions {
        all: true,
        ..Default::default()
    })
    .unwrap();
    assert!(!s.has_blob(&idx.digest), "the index blob is reclaimed");
    assert!(s.fsck(false).unwrap().is_clean());
}

#[test]
fn an_untagged_index_is_dangling_and_a_second_tag_only_untags() {
    let (_d, s) = store();
    let (_amd, _arm, idx) = multi(&s);
    s.tag("other:2", &idx.digest).unwrap();
    assert_eq!(
        s.remove_image("multi:1", false).unwrap(),
        ["Untagged: multi:1"]
    );
    assert_eq!(s.list_images().unwrap()[0].references, ["other:2"]);
    s.untag("other:2").unwrap();
    let r = s
        .prune(&PruneOptions {
            dangling_images: true,
            ..Default::default()
        })
        .unwrap();
    assert!(r.images.contains(&idx.digest.to_string()), "{:?}", r.images);
    assert!(s.list_images().unwrap().is_empty());
}

#[test]
fn an_index_without_the_host_platform_says_what_it_has() {
    let (_d, s) = store();
    let arm = image(&s, "arm64");
    let s390 = image(&s, "s390x");
    let idx = s.write_index(&[&arm, &s390], &[]).unwrap();
    s.tag("foreign:1", &idx.digest).unwrap();
    let e = s.resolve_image("foreign:1").unwrap_err().to_string();
    assert!(e.contains("no image for linux/amd64"), "{e}");
    assert!(e.contains("linux/arm64/v8, linux/s390x"), "{e}");
}

#[test]
fn fsck_finds_a_lost_attestation_and_repair_removes_the_index() {
    let (_d, s) = store();
    let (_amd, _arm, idx) = multi(&s);
    let att = idx
        .entries
        .iter()
        .find(|e| matches!(e.kind, EntryKind::Attestation { .. }))
        .unwrap();
    let blob = s.root().join("blobs/sha256").join(att.manifest.hex());
    std::fs::remove_file(blob).unwrap();
    let rep = s.fsck(false).unwrap();
    assert!(
        rep.problems
            .iter()
            .any(|p| p.contains("image index") && p.contains(att.manifest.as_str())),
        "{:?}",
        rep.problems
    );
    s.fsck(true).unwrap();
    assert!(s.resolve_index("multi:1").unwrap().is_none());
}

#[test]
fn an_attestation_must_be_about_an_image_of_the_index() {
    let (_d, s) = store();
    let amd = image(&s, "amd64");
    let arm = image(&s, "arm64");
    let att = s
        .write_attestation(&arm.manifest_digest, &[statement("x")])
        .unwrap();
    let e = s.write_index(&[&amd], &[att]).unwrap_err().to_string();
    assert!(e.contains("not an image of this index"), "{e}");
}

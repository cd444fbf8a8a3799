//! The SBOM as an SPDX 2.3 JSON document: one package for the image, one
//! per package found, `DOCUMENT DESCRIBES image`, `image CONTAINS pkg`.
//! The document is a function of its inputs: the same image (and the same
//! creation time, e.g. from SOURCE_DATE_EPOCH) gives the same bytes.

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::license;
use crate::packages::Package;
use crate::purl::purl;

/// What the document is about and when it was made.
pub struct DocumentInfo<'a> {
    /// The image's name (`flask_app:0.1`), or its ID when it has none.
    pub name: &'a str,
    /// RFC 3339 creation time.
    pub created: &'a str,
    /// `kiln-0.1.0`.
    pub tool: &'a str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Document {
    spdx_version: &'static str,
    data_license: &'static str,
    #[serde(rename = "SPDXID")]
    spdx_id: &'static str,
    name: String,
    document_namespace: String,
    creation_info: CreationInfo,
    packages: Vec<SpdxPackage>,
    relationships: Vec<Relationship>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    has_extracted_licensing_infos: Vec<ExtractedLicense>,
}

#[derive(Serialize)]
struct CreationInfo {
    created: String,
    creators: Vec<String>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct SpdxPackage {
    name: String,
    #[serde(rename = "SPDXID")]
    spdx_id: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    version_info: Option<String>,
    supplier: String,
    download_location: &'static str,
    files_analyzed: bool,
    license_concluded: &'static str,
    license_declared: String,
    copyright_text: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    homepage: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    source_info: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    primary_package_purpose: Option<&'static str>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    external_refs: Vec<ExternalRef>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExternalRef {
    reference_category: &'static str,
    reference_type: &'static str,
    reference_locator: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct Relationship {
    spdx_element_id: String,
    relationship_type: &'static str,
    related_spdx_element: String,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ExtractedLicense {
    license_id: String,
    name: String,
    extracted_text: String,
}

const IMAGE_ID: &str = "SPDXRef-Image";

/// The SPDX 2.3 document for an image containing `packages`.
pub fn document(info: &DocumentInfo, packages: &[Package]) -> Document {
    let mut pkgs = vec![image_package(info.name)];
    let mut rels = vec![relationship("SPDXRef-DOCUMENT", "DESCRIBES", IMAGE_ID)];
    let mut refs: Vec<String> = Vec::new();
    let mut hasher = Sha256::new();
    hasher.update(info.name.as_bytes());
    for p in packages {
        let locator = purl(p);
        hasher.update(locator.as_bytes());
        hasher.update(p.found_in.as_bytes());
        let sp = spdx_package(p, locator);
        rels.push(relationship(IMAGE_ID, "CONTAINS", &sp.spdx_id));
        for r in license::refs(&sp.license_declared) {
            if !refs.iter().any(|x| x == r) {
                refs.push(r.to_string());
            }
        }
        pkgs.push(sp);
    }
    refs.sort();
    Document {
        spdx_version: "SPDX-2.3",
        data_license: "CC0-1.0",
        spdx_id: "SPDXRef-DOCUMENT",
        name: info.name.to_string(),
        document_namespace: format!(
            "https://kiln.invalid/spdx/{}-{}",
            sanitize(info.name),
            &hex::encode(hasher.finalize())[..32]
        ),
        creation_info: CreationInfo {
            created: info.created.to_string(),
            creators: vec![format!("Tool: {}", info.tool)],
        },
        packages: pkgs,
        relationships: rels,
        has_extracted_licensing_infos: refs.into_iter().map(extracted).collect(),
    }
}

fn image_package(name: &str) -> SpdxPackage {
    SpdxPackage {
        name: name.to_string(),
        spdx_id: IMAGE_ID.to_string(),
        version_info: None,
        supplier: "NOASSERTION".into(),
        download_location: "NOASSERTION",
        files_analyzed: false,
        license_concluded: "NOASSERTION",
        license_declared: "NOASSERTION".into(),
        copyright_text: "NOASSERTION",
        homepage: None,
        source_info: None,
        primary_package_purpose: Some("CONTAINER"),
        external_refs: Vec::new(),
    }
}

fn spdx_package(p: &Package, locator: String) -> SpdxPackage {
    let id_hash = Sha256::digest(format!("{locator}\n{}", p.found_in).as_bytes());
    SpdxPackage {
        name: p.name.clone(),
        spdx_id: format!(
            "SPDXRef-Package-{}-{}-{}",
            p.ecosystem.purl_type(),
            sanitize(&p.name),
            &hex::encode(id_hash)[..16]
        ),
        version_info: Some(p.version.clone()),
        supplier: p
            .supplier
            .as_deref()
            .map(|s| format!("Person: {}", s.replace('<', "(").replace('>', ")")))
            .unwrap_or_else(|| "NOASSERTION".into()),
        download_location: "NOASSERTION",
        files_analyzed: false,
        license_concluded: "NOASSERTION",
        license_declared: p.license.clone().unwrap_or_else(|| "NOASSERTION".into()),
        copyright_text: "NOASSERTION",
        homepage: p
            .homepage
            .clone()
            .filter(|h| h.starts_with("http://") || h.starts_with("https://")),
        source_info: Some(format!("recorded in /{}", p.found_in)),
        primary_package_purpose: None,
        external_refs: vec![ExternalRef {
            reference_category: "PACKAGE-MANAGER",
            reference_type: "purl",
            reference_locator: locator,
        }],
    }
}

fn relationship(a: &str, kind: &'static str, b: &str) -> Relationship {
    Relationship {
        spdx_element_id: a.to_string(),
        relationship_type: kind,
        related_spdx_element: b.to_string(),
    }
}

fn extracted(id: String) -> ExtractedLicense {
    let name = id.trim_start_matches("LicenseRef-").replace('-', " ");
    ExtractedLicense {
        extracted_text: format!(
            "The package's metadata names this licence \"{name}\"; it has no SPDX identifier and its text was not read."
        ),
        name,
        license_id: id,
    }
}

/// Only letters, digits, `.` and `-` (what SPDX ids allow).
fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packages::Ecosystem;

    fn pkg(name: &str, license: Option<&str>) -> Package {
        Package {
            ecosystem: Ecosystem::Python,
            name: name.into(),
            version: "1.0".into(),
            arch: None,
            license: license.map(str::to_string),
            supplier: Some("A Person <a@example.org>".into()),
            homepage: Some("not a url".into()),
            source: None,
            found_in: format!("site-packages/{name}-1.0.dist-info/METADATA"),
            distro: None,
        }
    }

    fn doc(pkgs: &[Package]) -> serde_json::Value {
        let info = DocumentInfo {
            name: "flask_app:0.1",
            created: "2024-01-01T00:00:00Z",
            tool: "kiln-test",
        };
        serde_json::to_value(document(&info, pkgs)).unwrap()
    }

    #[test]
    fn packages_relationships_and_declared_licence_refs() {
        let d = doc(&[
            pkg("flask", Some("BSD-3-Clause")),
            pkg("odd", Some("LicenseRef-BSD OR MIT")),
        ]);
        assert_eq!(d["spdxVersion"], "SPDX-2.3");
        let pk = d["packages"].as_array().unwrap();
        assert_eq!(pk.len(), 3);
        assert_eq!(pk[0]["primaryPackagePurpose"], "CONTAINER");
        assert_eq!(pk[1]["name"], "flask");
        assert_eq!(
            pk[1]["externalRefs"][0]["referenceLocator"],
            "pkg:pypi/flask@1.0"
        );
        assert_eq!(pk[1]["supplier"], "Person: A Person (a@example.org)");
        assert!(pk[1].get("homepage").is_none());
        let rels = d["relationships"].as_array().unwrap();
        assert_eq!(rels.len(), 3);
        assert_eq!(rels[1]["relationshipType"], "CONTAINS");
        assert_eq!(rels[1]["relatedSpdxElement"], pk[1]["SPDXID"]);
        let ex = d["hasExtractedLicensingInfos"].as_array().unwrap();
        assert_eq!(ex.len(), 1);
        assert_eq!(ex[0]["licenseId"], "LicenseRef-BSD");
    }

    #[test]
    fn the_same_inputs_give_the_same_document_and_other_inputs_another_namespace() {
        let a = doc(&[pkg("flask", None)]);
        assert_eq!(a, doc(&[pkg("flask", None)]));
        let b = doc(&[pkg("flask", None), pkg("click", None)]);
        assert_ne!(a["documentNamespace"], b["documentNamespace"]);
        assert!(a.get("hasExtractedLicensingInfos").is_none());
        assert_eq!(a["packages"][1]["licenseDeclared"], "NOASSERTION");
    }
}

//! in-toto statements (v0.1, what BuildKit attaches): a subject (the image
//! manifest by digest, named as a purl) and a typed predicate.

use serde::Serialize;

/// in-toto's statement type.
pub const STATEMENT_V01: &str = "https://in-toto.io/Statement/v0.1";
/// The predicate type of an SPDX document.
pub const PREDICATE_SPDX: &str = "https://spdx.dev/Document";

/// One statement.
#[derive(Serialize)]
pub struct Statement<P: Serialize> {
    #[serde(rename = "_type")]
    pub kind: &'static str,
    #[serde(rename = "predicateType")]
    pub predicate_type: &'static str,
    pub subject: Vec<Subject>,
    pub predicate: P,
}

/// What a statement is about: an artifact by name and sha256 digest.
#[derive(Serialize, Clone, Debug, PartialEq, Eq)]
pub struct Subject {
    pub name: String,
    pub digest: std::collections::BTreeMap<String, String>,
}

impl Subject {
    /// BuildKit's subject for an image: `pkg:docker/REPO@TAG?platform=OS%2FARCH`
    /// (the tag `latest` when there is none) and the manifest's digest.
    pub fn image(
        repo: &str,
        tag: Option<&str>,
        platform: &str,
        manifest_sha256_hex: &str,
    ) -> Subject {
        let name = format!(
            "pkg:docker/{}@{}?platform={}",
            repo,
            tag.unwrap_or("latest"),
            platform.replace('/', "%2F")
        );
        Subject {
            name,
            digest: [("sha256".to_string(), manifest_sha256_hex.to_string())].into(),
        }
    }
}

impl<P: Serialize> Statement<P> {
    /// A v0.1 statement of `predicate_type` about `subject`.
    pub fn new(predicate_type: &'static str, subject: Vec<Subject>, predicate: P) -> Self {
        Statement {
            kind: STATEMENT_V01,
            predicate_type,
            subject,
            predicate,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_image_subject_and_statement_fields() {
        let s = Subject::image(
            "docker.io/library/flask_app",
            Some("0.1"),
            "linux/amd64",
            "ab12",
        );
        assert_eq!(
            s.name,
            "pkg:docker/docker.io/library/flask_app@0.1?platform=linux%2Famd64"
        );
        let st = Statement::new(PREDICATE_SPDX, vec![s], serde_json::json!({"x": 1}));
        let v = serde_json::to_value(&st).unwrap();
        assert_eq!(v["_type"], STATEMENT_V01);
        assert_eq!(v["predicateType"], PREDICATE_SPDX);
        assert_eq!(v["subject"][0]["digest"]["sha256"], "ab12");
    }
}

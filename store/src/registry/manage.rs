//! Reading and tidying a repository rather than one image: its tags, the
//! digest a tag names now, and deleting manifests and blobs (what pruning
//! a registry build cache needs). A registry that refuses deletes (the CNCF
//! distribution registry unless `storage.delete.enabled: true`) answers
//! 405, which is reported as [`RegistryError::DeleteDisabled`].

use serde_json::Value;

use super::http::{self, Req, Scope};
use super::{display_ref, name_of, read_capped, repo_of, Client, ACCEPT_ALL, MANIFEST_MAX};
use crate::digest::Digest;
use crate::reference::Reference;
use crate::registry::RegistryError;

/// Tags asked for per page of the tag list.
const TAGS_PAGE: usize = 1000;
/// Pages of the tag list read at most (a million tags).
const TAGS_PAGES: usize = 1000;

fn delete_scope(r: &Reference) -> Scope {
    Scope {
        domain: r.domain().to_string(),
        scopes: vec![format!("repository:{}:pull,push,delete", repo_of(r))],
        action: "delete",
        name: name_of(r),
        creds: None,
    }
}

impl Client {
    /// Every tag of `repo`'s repository, in the registry's (lexical) order.
    pub fn list_tags(&self, repo: &Reference) -> Result<Vec<String>, RegistryError> {
        let scope = Scope::pull(repo.domain(), repo_of(repo));
        let mut tags: Vec<String> = Vec::new();
        for _ in 0..TAGS_PAGES {
            let mut path = format!("/v2/{}/tags/list?n={TAGS_PAGE}", repo_of(repo));
            if let Some(last) = tags.last() {
                path.push_str(&format!("&last={last}"));
            }
            let resp = self.http.send(&scope, &Req::new("GET", path))?;
            match resp.status().as_u16() {
                200 => {}
                // The repository does not exist (yet): no tags.
                404 => return Ok(tags),
                _ => {
                    return Err(self.http.status_error(
                        &scope,
                        "GET",
                        &format!("the tags of {}", name_of(repo)),
                        resp,
                    ))
                }
            }
            let more = http::header_string(&resp, "link").is_some();
            let mut reader = resp.into_body().into_reader();
            let bytes = read_capped(&mut reader, MANIFEST_MAX).map_err(|_| {
                RegistryError::protocol(repo.domain(), "the tag list is unreadable or too large")
            })?;
            let v: Value = serde_json::from_slice(&bytes).map_err(|e| {
                RegistryError::protocol(repo.domain(), format!("the tag list is not JSON: {e}"))
            })?;
            let page: Vec<String> = v
                .get("tags")
                .and_then(Value::as_array)
                .map(|a| {
                    a.iter()
                        .filter_map(Value::as_str)
                        .map(str::to_string)
                        .collect()
                })
                .unwrap_or_default();
            let n = page.len();
            tags.extend(page);
            if !more || n == 0 {
                return Ok(tags);
            }
        }
        Ok(tags)
    }

    /// The digest of the manifest `r` names now (a HEAD request), `None`
    /// when it names none.
    pub fn manifest_digest(&self, r: &Reference) -> Result<Option<Digest>, RegistryError> {
        let scope = Scope::pull(r.domain(), repo_of(r));
        let reference = match (r.digest(), r.tag()) {
            (Some(d), _) => d.to_string(),
            (None, Some(t)) => t.to_string(),
            (None, None) => "latest".to_string(),
        };
        let path = format!("/v2/{}/manifests/{reference}", repo_of(r));
        let resp = self.http.send(
            &scope,
            &Req::new("HEAD", path).header("Accept", ACCEPT_ALL.join(", ")),
        )?;
        match resp.status().as_u16() {
            200 => {}
            404 => return Ok(None),
            _ => {
                return Err(self
                    .http
                    .status_error(&scope, "HEAD", &display_ref(r), resp))
            }
        }
        match http::header_string(&resp, "docker-content-digest") {
            Some(h) => h.trim().parse().map(Some).map_err(|_| {
                RegistryError::protocol(r.domain(), format!("bad Docker-Content-Digest {h:?}"))
            }),
            // No header: the digest of the bytes themselves.
            None => self.get_manifest(r, &[]).map(|(_, _, d)| Some(d)),
        }
    }

    /// Deletes the manifest `digest` from `repo`'s repository, and with it
    /// every tag that names it. Already gone is not an error.
    pub fn delete_manifest(&self, repo: &Reference, digest: &Digest) -> Result<(), RegistryError> {
        self.delete(repo, "manifests", digest)
    }

    /// Unlinks the blob `digest` from `repo`'s repository (the registry's
    /// garbage collector frees its bytes once no repository links it).
    /// Already gone is not an error.
    pub fn delete_blob(&self, repo: &Reference, digest: &Digest) -> Result<(), RegistryError> {
        self.delete(repo, "blobs", digest)
    }

    fn delete(&self, repo: &Reference, kind: &str, digest: &Digest) -> Result<(), RegistryError> {
        let scope = delete_scope(repo);
        let path = format!("/v2/{}/{kind}/{digest}", repo_of(repo));
        let resp = self.http.send(&scope, &Req::new("DELETE", path))?;
        match resp.status().as_u16() {
            200..=299 | 404 => Ok(()),
            405 => Err(RegistryError::DeleteDisabled {
                registry: repo.domain().to_string(),
                message: http::error_message(resp),
            }),
            _ => Err(self.http.status_error(
                &scope,
                "DELETE",
                &format!("{} {digest} of {}", &kind[..kind.len() - 1], name_of(repo)),
                resp,
            )),
        }
    }
}

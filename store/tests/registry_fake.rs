//! The registry client against a fake registry that misbehaves: a small
//! HTTP/1.1 server (std only, one request per connection) serving a tiny
//! image, with each test overriding what it answers.
mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use kiln_store::registry::{
    credentials, Client, Credentials, Event, Platform, RegistryConfig, RegistryError,
};
use kiln_store::{reference, sha256_digest, Digest, Store};

// ----- the server -----

#[derive(Debug, Clone)]
struct Request {
    method: String,
    /// Path and query.
    path: String,
    headers: HashMap<String, String>,
    body: Vec<u8>,
}

enum Response {
    Full {
        status: u16,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    },
    /// Bytes written as they are, then the connection is closed.
    Raw(Vec<u8>),
}

fn resp(status: u16, headers: &[(&str, &str)], body: impl Into<Vec<u8>>) -> Response {
    Response::Full {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: body.into(),
    }
}

type Handler = dyn Fn(&Request) -> Response + Send + Sync;

struct Server {
    addr: String,
    log: Arc<Mutex<Vec<Request>>>,
}

impl Server {
    fn start(ip: &str, handler: Arc<Handler>) -> Server {
        let l = TcpListener::bind((ip, 0)).unwrap();
        let addr = l.local_addr().unwrap().to_string();
        let log: Arc<Mutex<Vec<Request>>> = Arc::default();
        let log2 = log.clone();
        std::thread::spawn(move || {
            for conn in l.incoming() {
                let Ok(conn) = conn else { return };
                let (h, log) = (handler.clone(), log2.clone());
                std::thread::spawn(move || serve(conn, &*h, &log));
            }
        });
        Server { addr, log }
    }

    fn requests(&self) -> Vec<Request> {
        self.log.lock().unwrap().clone()
    }
}

fn serve(conn: TcpStream, handler: &Handler, log: &Mutex<Vec<Request>>) {
    let mut r = BufReader::new(conn.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let mut headers = HashMap::new();
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: u64 = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = Vec::new();
    let _ = (&mut r).take(len).read_to_end(&mut body);
    let req = Request {
        method,
        path,
        headers,
        body,
    };
    log.lock().unwrap().push(req.clone());
    let mut w = conn;
    match handler(&req) {
        Response::Raw(bytes) => {
            let _ = w.write_all(&bytes);
        }
        Response::Full {
            status,
            headers,
            body,
        } => {
            let mut out = format!("HTTP/1.1 {status} X\r\nConnection: close\r\n");
            if !headers
                .iter()
                .any(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            {
                out.push_str(&format!("Content-Length: {}\r\n", body.len()));
            }
            for (k, v) in headers {
                out.push_str(&format!("{k}: {v}\r\n"));
            }
            out.push_str("\r\n");
            let _ = w.write_all(out.as_bytes());
            if req.method != "HEAD" {
                let _ = w.write_all(&body);
            }
        }
    }
    let _ = w.flush();
    let _ = w.shutdown(std::net::Shutdown::Both);
}

// ----- the image it serves -----

const MT_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
const MT_INDEX: &str = "application/vnd.oci.image.index.v1+json";

#[derive(Clone)]
struct FakeImage {
    layer: Vec<u8>,
    layer_digest: Digest,
    config: Vec<u8>,
    config_digest: Digest,
    manifest: Vec<u8>,
    manifest_digest: Digest,
    index: Vec<u8>,
    index_digest: Digest,
}

fn fake_image(foreign_url: Option<&str>) -> FakeImage {
    let mut tar = tar::Builder::new(Vec::new());
    let data = b"hello from the fake registry\n";
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_cksum();
    tar.append_data(&mut h, "hello.txt", &data[..]).unwrap();
    let tar = tar.into_inner().unwrap();
    let diff_id = sha256_digest(&tar);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).unwrap();
    let layer = gz.finish().unwrap();
    let layer_digest = sha256_digest(&layer);
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["/hello"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
    }))
    .unwrap();
    let config_digest = sha256_digest(&config);
    let mut layer_desc = serde_json::json!({
        "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip",
        "digest": layer_digest, "size": layer.len(),
    });
    if let Some(u) = foreign_url {
        layer_desc["urls"] = serde_json::json!([u]);
        layer_desc["mediaType"] =
            serde_json::json!("application/vnd.docker.image.rootfs.foreign.diff.tar.gzip");
    }
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MT_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "digest": config_digest, "size": config.len()},
        "layers": [layer_desc],
    }))
    .unwrap();
    let manifest_digest = sha256_digest(&manifest);
    let other = sha256_digest(b"not fetched");
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2, "mediaType": MT_INDEX,
        "manifests": [
            {"mediaType": MT_MANIFEST, "digest": other, "size": 10, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
            {"mediaType": MT_MANIFEST, "digest": manifest_digest, "size": manifest.len(), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": MT_MANIFEST, "digest": other, "size": 10, "platform": {"os": "unknown", "architecture": "unknown"}},
        ],
    }))
    .unwrap();
    let index_digest = sha256_digest(&index);
    FakeImage {
        layer,
        layer_digest,
        config,
        config_digest,
        manifest,
        manifest_digest,
        index,
        index_digest,
    }
}

/// What a well-behaved registry answers for `lib/img`.
fn well_behaved(img: &FakeImage, req: &Request) -> Response {
    let p = req.path.split('?').next().unwrap_or("");
    if p == "/v2/" {
        return resp(200, &[], "{}");
    }
    let Some(rest) = p.strip_prefix("/v2/lib/img/") else {
        return resp(
            404,
            &[],
            r#"{"errors":[{"code":"NAME_UNKNOWN","message":"repository name not known to registry"}]}"#,
        );
    };
    let (kind, r) = rest.split_once('/').unwrap_or(("", ""));
    match kind {
        "manifests" if r == "latest" || r == img.index_digest.as_str() => resp(
            200,
            &[
                ("Content-Type", MT_INDEX),
                ("Docker-Content-Digest", img.index_digest.as_str()),
            ],
            img.index.clone(),
        ),
        "manifests" if r == "single" || r == img.manifest_digest.as_str() => {
            resp(200, &[("Content-Type", MT_MANIFEST)], img.manifest.clone())
        }
        "blobs" if r == img.layer_digest.as_str() => resp(200, &[], img.layer.clone()),
        "blobs" if r == img.config_digest.as_str() => resp(200, &[], img.config.clone()),
        _ => resp(
            404,
            &[],
            r#"{"errors":[{"code":"MANIFEST_UNKNOWN","message":"manifest unknown"}]}"#,
        ),
    }
}

// ----- helpers -----

fn store() -> (tempfile::TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("root")).unwrap();
    (dir, s)
}

fn client(docker: &std::path::Path) -> Client {
    Client::new(RegistryConfig {
        docker_config_dir: Some(docker.to_path_buf()),
        retries: 2,
        ..Default::default()
    })
    .unwrap()
}

fn pull(srv: &Server, tag: &str, s: &Store) -> Result<kiln_store::ImageRecord, RegistryError> {
    let docker = tempfile::tempdir().unwrap();
    let r = reference::parse(&format!("{}/lib/img:{tag}", srv.addr)).unwrap();
    client(docker.path()).pull(
        s,
        &r,
        &Platform::parse("linux/amd64").unwrap(),
        &|_: Event| {},
    )
}

fn nothing_committed(s: &Store, img: &FakeImage) {
    assert!(!s.has_blob(&img.layer_digest), "layer blob was committed");
    assert!(s.list_images().unwrap().is_empty(), "an image was recorded");
    let ingest: Vec<_> = std::fs::read_dir(s.root().join("ingest"))
        .unwrap()
        .collect();
    assert!(ingest.is_empty(), "partial data left in ingest/");
}

fn serve_with(
    img: &FakeImage,
    f: impl Fn(&Request) -> Option<Response> + Send + Sync + 'static,
) -> Server {
    let img = img.clone();
    Server::start(
        "127.0.0.1",
        Arc::new(move |req: &Request| f(req).unwrap_or_else(|| well_behaved(&img, req))),
    )
}

fn is_layer(img: &FakeImage, req: &Request) -> bool {
    req.path == format!("/v2/lib/img/blobs/{}", img.layer_digest)
}

// ----- the tests -----

#[test]
fn pulls_the_host_platform_from_an_index() {
    let img = fake_image(None);
    let srv = serve_with(&img, |_| None);
    let (_d, s) = store();
    let rec = pull(&srv, "latest", &s).unwrap();
    // The platform manifest's digest, as the registry computes it.
    assert_eq!(rec.manifest_digest, img.manifest_digest);
    assert_eq!(rec.config_digest, img.config_digest);
    assert_eq!(s.read_blob(&rec.manifest_digest).unwrap(), img.manifest);
    let snap = s.ensure_snapshot(&rec.layers[0]).unwrap();
    assert_eq!(
        std::fs::read(snap.join("hello.txt")).unwrap(),
        b"hello from the fake registry\n"
    );
    // Saved as an OCI layout, the Docker schema2 manifest is described as
    // what it is, not relabelled OCI.
    let mut tar_bytes = Vec::new();
    s.save(
        &[rec.config_digest.to_string()],
        kiln_store::ArchiveFormat::Oci,
        &mut tar_bytes,
    )
    .unwrap();
    let mut ar = tar::Archive::new(&tar_bytes[..]);
    let index: serde_json::Value = ar
        .entries()
        .unwrap()
        .map(|e| e.unwrap())
        .find(|e| e.path().unwrap().to_str() == Some("index.json"))
        .map(|e| serde_json::from_reader(e).unwrap())
        .expect("index.json in the layout");
    assert_eq!(index["manifests"][0]["mediaType"], MT_MANIFEST);
    assert_eq!(
        index["manifests"][0]["digest"],
        img.manifest_digest.as_str()
    );
    // Another platform: not in the index.
    let (_e, e) = store();
    let docker = tempfile::tempdir().unwrap();
    let r = reference::parse(&format!("{}/lib/img", srv.addr)).unwrap();
    let err = client(docker.path())
        .pull(
            &e,
            &r,
            &Platform::parse("linux/s390x").unwrap(),
            &|_: Event| {},
        )
        .unwrap_err();
    assert!(
        matches!(err, RegistryError::NoMatchingPlatform { .. }),
        "{err}"
    );
    assert!(
        err.to_string().contains("linux/arm64/v8, linux/amd64"),
        "{err}"
    );
}

#[test]
fn flipped_byte_is_a_digest_mismatch_and_nothing_is_kept() {
    let img = fake_image(None);
    let bad = {
        let mut l = img.layer.clone();
        let mid = l.len() / 2;
        l[mid] ^= 0x01;
        l
    };
    let img2 = img.clone();
    let srv = serve_with(&img, move |req| {
        is_layer(&img2, req).then(|| resp(200, &[], bad.clone()))
    });
    let (_d, s) = store();
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "blob {} from {}/lib/img: digest mismatch (got sha256:",
            img.layer_digest, srv.addr
        )),
        "{msg}"
    );
    nothing_committed(&s, &img);
}

#[test]
fn lying_content_lengths() {
    let img = fake_image(None);
    let n = img.layer.len();
    // Declared shorter / longer than the descriptor: refused before reading.
    for declared in [n - 5, n + 100] {
        let img2 = img.clone();
        let srv = serve_with(&img, move |req| {
            is_layer(&img2, req).then(|| {
                let mut raw = format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {declared}\r\nConnection: close\r\n\r\n"
                )
                .into_bytes();
                raw.extend_from_slice(&img2.layer[..declared.min(img2.layer.len())]);
                Response::Raw(raw)
            })
        });
        let (_d, s) = store();
        let err = pull(&srv, "latest", &s).unwrap_err();
        assert!(
            matches!(err, RegistryError::SizeMismatch { expected, actual, .. } if expected == n as u64 && actual == declared as u64),
            "{err:?}"
        );
        nothing_committed(&s, &img);
    }
    // The right length declared, the connection closed early: retried from
    // the first byte, then a clear error; nothing partial kept.
    let img2 = img.clone();
    let hits = Arc::new(AtomicUsize::new(0));
    let hits2 = hits.clone();
    let srv = serve_with(&img, move |req| {
        is_layer(&img2, req).then(|| {
            hits2.fetch_add(1, Ordering::SeqCst);
            let mut raw =
                format!("HTTP/1.1 200 OK\r\nContent-Length: {n}\r\nConnection: close\r\n\r\n")
                    .into_bytes();
            raw.extend_from_slice(&img2.layer[..n / 2]);
            Response::Raw(raw)
        })
    });
    let (_d, s) = store();
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(matches!(err, RegistryError::Transport { .. }), "{err:?}");
    assert!(err.to_string().contains("connection broke"), "{err}");
    assert_eq!(hits.load(Ordering::SeqCst), 3, "1 try + 2 retries");
    nothing_committed(&s, &img);
    // No length at all and more bytes than the descriptor says.
    let img2 = img.clone();
    let srv = serve_with(&img, move |req| {
        is_layer(&img2, req).then(|| {
            let mut raw = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n".to_vec();
            raw.extend_from_slice(&img2.layer);
            raw.extend_from_slice(b"trailing junk");
            Response::Raw(raw)
        })
    });
    let (_d, s) = store();
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(matches!(err, RegistryError::SizeMismatch { .. }), "{err:?}");
    nothing_committed(&s, &img);
}

#[test]
fn huge_manifests_are_refused_before_reading() {
    let img = fake_image(None);
    // Declared 10 GiB.
    let srv = serve_with(&img, |req| {
        req.path.contains("/manifests/").then(|| {
            Response::Raw(
                format!("HTTP/1.1 200 OK\r\nContent-Type: {MT_MANIFEST}\r\nContent-Length: {}\r\n\r\n{{\"schemaVersion\":2", 10u64 << 30)
                    .into_bytes(),
            )
        })
    });
    let (_d, s) = store();
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(
        matches!(err, RegistryError::TooLarge { size, .. } if size == 10 << 30),
        "{err:?}"
    );
    // Undeclared, and 5 MiB of it: cut off at the cap.
    let srv = serve_with(&img, |req| {
        req.path.contains("/manifests/").then(|| {
            let mut raw = format!(
                "HTTP/1.1 200 OK\r\nContent-Type: {MT_MANIFEST}\r\nConnection: close\r\n\r\n"
            )
            .into_bytes();
            raw.extend(std::iter::repeat_n(b' ', 5 << 20));
            Response::Raw(raw)
        })
    });
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(matches!(err, RegistryError::TooLarge { .. }), "{err:?}");
    // An index entry that declares 10 GiB is not fetched at all.
    let big = {
        let mut v: serde_json::Value = serde_json::from_slice(&img.index).unwrap();
        v["manifests"][1]["size"] = serde_json::json!(10u64 << 30);
        serde_json::to_vec(&v).unwrap()
    };
    let srv = serve_with(&img, move |req| {
        req.path
            .ends_with("/manifests/latest")
            .then(|| resp(200, &[("Content-Type", MT_INDEX)], big.clone()))
    });
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(matches!(err, RegistryError::TooLarge { .. }), "{err:?}");
    assert!(!srv
        .requests()
        .iter()
        .any(|r| r.path.contains(img.manifest_digest.hex())));
    assert!(s.list_images().unwrap().is_empty());
}

#[test]
fn schema1_and_index_plus_manifest_are_refused() {
    let img = fake_image(None);
    let srv = serve_with(&img, |req| {
        req.path.ends_with("/manifests/latest").then(|| {
            resp(
                200,
                &[("Content-Type", "application/vnd.docker.distribution.manifest.v1+prettyjws")],
                r#"{"schemaVersion":1,"name":"lib/img","tag":"latest","architecture":"amd64","fsLayers":[],"history":[]}"#,
            )
        })
    });
    let (_d, s) = store();
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(matches!(err, RegistryError::Unsupported { .. }), "{err:?}");
    assert!(err.to_string().contains("schema 1"), "{err}");

    let both = {
        let mut v: serde_json::Value = serde_json::from_slice(&img.index).unwrap();
        let m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
        v["config"] = m["config"].clone();
        v["layers"] = m["layers"].clone();
        serde_json::to_vec(&v).unwrap()
    };
    let srv = serve_with(&img, move |req| {
        req.path
            .ends_with("/manifests/latest")
            .then(|| resp(200, &[("Content-Type", MT_INDEX)], both.clone()))
    });
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(err.to_string().contains("both an index"), "{err}");
    assert!(s.list_images().unwrap().is_empty());
}

#[test]
fn retries_429_and_5xx() {
    let img = fake_image(None);
    let manifest_hits = Arc::new(AtomicUsize::new(0));
    let blob_hits = Arc::new(AtomicUsize::new(0));
    let (m2, b2, img2) = (manifest_hits.clone(), blob_hits.clone(), img.clone());
    let srv = serve_with(&img, move |req| {
        if req.path.ends_with("/manifests/latest") && m2.fetch_add(1, Ordering::SeqCst) == 0 {
            return Some(resp(429, &[("Retry-After", "0")], "slow down"));
        }
        if is_layer(&img2, req) && b2.fetch_add(1, Ordering::SeqCst) == 0 {
            return Some(resp(503, &[], "busy"));
        }
        None
    });
    let (_d, s) = store();
    let rec = pull(&srv, "latest", &s).unwrap();
    assert_eq!(rec.manifest_digest, img.manifest_digest);
    assert_eq!(manifest_hits.load(Ordering::SeqCst), 2);
    assert_eq!(blob_hits.load(Ordering::SeqCst), 2);
    // Always 503: gives up after the retries with the status.
    let srv = serve_with(&img, |req| {
        req.path.contains("/manifests/").then(|| resp(503, &[], ""))
    });
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(
        matches!(err, RegistryError::Status { status: 503, .. }),
        "{err:?}"
    );
    assert_eq!(srv.requests().len(), 3);
}

#[test]
fn not_found_names_the_reference() {
    let img = fake_image(None);
    let srv = serve_with(&img, |_| None);
    let (_d, s) = store();
    let err = pull(&srv, "nope", &s).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("manifest unknown: {}/lib/img:nope (404)", srv.addr)
    );
}

/// A registry behind a Bearer token service (on itself) whose blobs
/// redirect to a storage host elsewhere.
#[test]
fn bearer_tokens_and_redirects_never_leak_credentials() {
    let img = fake_image(None);
    // The storage host: another loopback address, records what it sees.
    let img_s = img.clone();
    let storage = Server::start(
        "127.0.0.2",
        Arc::new(move |req: &Request| {
            if req.path.starts_with("/storage/") {
                resp(200, &[], img_s.layer.clone())
            } else {
                resp(404, &[], "")
            }
        }),
    );
    let storage_addr = storage.addr.clone();
    let realm_addr: Arc<Mutex<String>> = Arc::default();
    let realm2 = realm_addr.clone();
    let img2 = img.clone();
    let srv = serve_with(&img, move |req| {
        let realm = realm2.lock().unwrap().clone();
        if req.path.starts_with("/token") {
            // user:secret
            let ok = req.headers.get("authorization").map(String::as_str)
                == Some("Basic dXNlcjpzZWNyZXQ=");
            return Some(if ok {
                resp(
                    200,
                    &[("Content-Type", "application/json")],
                    r#"{"token":"tok123","expires_in":300}"#,
                )
            } else {
                resp(401, &[], "")
            });
        }
        if req.headers.get("authorization").map(String::as_str) != Some("Bearer tok123") {
            let ch = format!(
                r#"Bearer realm="http://{realm}/token",service="fake-registry",scope="repository:lib/img:pull""#
            );
            return Some(resp(
                401,
                &[("WWW-Authenticate", ch.as_str())],
                r#"{"errors":[{"code":"UNAUTHORIZED"}]}"#,
            ));
        }
        if is_layer(&img2, req) {
            let loc = format!(
                "http://{storage_addr}/storage/{}?sig=abc",
                img2.layer_digest.hex()
            );
            return Some(resp(307, &[("Location", loc.as_str())], ""));
        }
        None
    });
    *realm_addr.lock().unwrap() = srv.addr.clone();

    // Anonymous: the token service refuses, and the error says so.
    let (_d, s) = store();
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!(
            "pull access denied for {}/lib/img: 401 Unauthorized (not logged in?)",
            srv.addr
        )
    );

    // Logged in.
    let docker = tempfile::tempdir().unwrap();
    credentials::save(
        docker.path(),
        &srv.addr,
        &Credentials {
            username: "user".into(),
            password: "secret".into(),
        },
    )
    .unwrap();
    let r = reference::parse(&format!("{}/lib/img:latest", srv.addr)).unwrap();
    let (_e, e) = store();
    let rec = client(docker.path())
        .pull(
            &e,
            &r,
            &Platform::parse("linux/amd64").unwrap(),
            &|_: Event| {},
        )
        .unwrap();
    assert_eq!(rec.manifest_digest, img.manifest_digest);
    assert!(e.has_blob(&img.layer_digest));

    let reqs = srv.requests();
    let token_reqs: Vec<&Request> = reqs
        .iter()
        .filter(|r| r.path.starts_with("/token"))
        .collect();
    let last = token_reqs.last().unwrap();
    assert!(last.path.contains("service=fake-registry"), "{}", last.path);
    assert!(
        last.path.contains("scope=repository%3Alib%2Fimg%3Apull"),
        "{}",
        last.path
    );
    // One token for the whole pull (cached per scope): the anonymous
    // attempt and this one.
    assert_eq!(token_reqs.len(), 2, "{token_reqs:?}");
    // The storage host got the blob request and never an Authorization.
    let seen = storage.requests();
    assert_eq!(seen.len(), 1, "{seen:?}");
    assert!(!seen[0].headers.contains_key("authorization"), "{seen:?}");
}

#[test]
fn foreign_urls_are_never_contacted() {
    let foreign_hits = Arc::new(AtomicUsize::new(0));
    let fh = foreign_hits.clone();
    let foreign = Server::start(
        "127.0.0.2",
        Arc::new(move |_: &Request| {
            fh.fetch_add(1, Ordering::SeqCst);
            resp(500, &[], "")
        }),
    );
    let img = fake_image(Some(&format!("http://{}/foreign-layer", foreign.addr)));
    let srv = serve_with(&img, |_| None);
    let (_d, s) = store();
    let rec = pull(&srv, "single", &s).unwrap();
    assert!(s.has_blob(&rec.layers[0].digest));
    assert_eq!(foreign_hits.load(Ordering::SeqCst), 0);
}

#[test]
fn docker_content_digest_must_match() {
    let img = fake_image(None);
    let lie = sha256_digest(b"something else");
    let img2 = img.clone();
    let srv = serve_with(&img, move |req| {
        req.path.ends_with("/manifests/latest").then(|| {
            resp(
                200,
                &[
                    ("Content-Type", MT_INDEX),
                    ("Docker-Content-Digest", lie.as_str()),
                ],
                img2.index.clone(),
            )
        })
    });
    let (_d, s) = store();
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(
        matches!(err, RegistryError::DigestMismatch { .. }),
        "{err:?}"
    );
}

fn url_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            out.push(u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap());
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn query(path: &str, key: &str) -> Vec<String> {
    let q = path.split_once('?').map(|(_, q)| q).unwrap_or("");
    q.split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| url_decode(v))
        .collect()
}

/// A registry that accepts pushes, behind a token service that grants
/// exactly the scopes asked for, and checks each request against them.
#[test]
fn push_asks_for_push_scope_and_mount_scope() {
    type Blobs = HashMap<String, std::collections::HashSet<String>>;
    let blobs: Arc<Mutex<Blobs>> = Arc::default();
    let token_scopes: Arc<Mutex<Vec<Vec<String>>>> = Arc::default();
    let next = Arc::new(AtomicUsize::new(0));
    let me: Arc<Mutex<String>> = Arc::default();
    let fail_put = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let (b2, t2, me2) = (blobs.clone(), token_scopes.clone(), me.clone());
    let srv = Server::start(
        "127.0.0.1",
        Arc::new(move |req: &Request| {
            let (path, _) = req.path.split_once('?').unwrap_or((&req.path, ""));
            if path == "/token" {
                let scopes = query(&req.path, "scope");
                t2.lock().unwrap().push(scopes.clone());
                let body = serde_json::json!({ "token": scopes.join("|") }).to_string();
                return resp(200, &[], body);
            }
            let rest = path.strip_prefix("/v2/").unwrap_or("");
            let (repo, op) = match ["/blobs/", "/manifests/"].iter().find_map(|m| rest.find(m)) {
                Some(i) => (&rest[..i], &rest[i..]),
                None => (rest.trim_end_matches('/'), ""),
            };
            let mut need = vec![if matches!(req.method.as_str(), "GET" | "HEAD") {
                format!("repository:{repo}:pull")
            } else {
                format!("repository:{repo}:pull,push")
            }];
            let from = query(&req.path, "from");
            if let Some(f) = from.first() {
                need.push(format!("repository:{f}:pull"));
            }
            let granted: Vec<String> = req
                .headers
                .get("authorization")
                .and_then(|a| a.strip_prefix("Bearer "))
                .map(|t| t.split('|').map(str::to_string).collect())
                .unwrap_or_default();
            let ok = need.iter().all(|n| {
                granted.contains(n) || granted.contains(&n.replace(":pull", ":pull,push"))
            });
            if !ok && !rest.is_empty() {
                let ch = format!(
                    r#"Bearer realm="http://{}/token",service="fake""#,
                    me2.lock().unwrap()
                );
                return resp(401, &[("WWW-Authenticate", ch.as_str())], "");
            }
            let mut blobs = b2.lock().unwrap();
            if let Some(d) = op.strip_prefix("/blobs/uploads/") {
                if req.method == "POST" {
                    if let (Some(m), Some(f)) = (query(&req.path, "mount").first(), from.first()) {
                        if blobs.get(f).is_some_and(|s| s.contains(m)) {
                            blobs.entry(repo.to_string()).or_default().insert(m.clone());
                            return resp(201, &[], "");
                        }
                    }
                    let n = next.fetch_add(1, Ordering::SeqCst);
                    let loc = format!("/v2/{repo}/blobs/uploads/u{n}?_state=x");
                    return resp(202, &[("Location", loc.as_str())], "");
                }
                if req.method == "PUT" && !d.is_empty() && fail_put.swap(false, Ordering::SeqCst) {
                    // Once: a failure after the body went up.
                    return resp(500, &[], "");
                }
                if req.method == "PUT" && !d.is_empty() {
                    let want = query(&req.path, "digest");
                    if want.first().map(String::as_str) != Some(sha256_digest(&req.body).as_str()) {
                        return resp(400, &[], r#"{"errors":[{"code":"DIGEST_INVALID"}]}"#);
                    }
                    blobs
                        .entry(repo.to_string())
                        .or_default()
                        .insert(want[0].clone());
                    return resp(201, &[], "");
                }
            }
            if let Some(d) = op.strip_prefix("/blobs/") {
                if req.method == "HEAD" {
                    let have = blobs.get(repo).is_some_and(|s| s.contains(d));
                    return resp(if have { 200 } else { 404 }, &[], "");
                }
            }
            if op.starts_with("/manifests/") && req.method == "PUT" {
                let d = sha256_digest(&req.body);
                return resp(201, &[("Docker-Content-Digest", d.as_str())], "");
            }
            if rest.is_empty() {
                return resp(200, &[], "{}");
            }
            resp(404, &[], "")
        }),
    );
    *me.lock().unwrap() = srv.addr.clone();
    let (_d, s) = store();
    let img = common::registry::make_image(&s, "push");
    let docker = tempfile::tempdir().unwrap();
    let c = client(docker.path());
    let opts = kiln_store::registry::PushOptions {
        compression: kiln_store::registry::Compression::Zstd,
        chunk_size: None,
    };
    let first = reference::parse(&format!("{}/lib/img:1", srv.addr)).unwrap();
    let r = c.push(&s, &img, &first, &opts, &|_: Event| {}).unwrap();
    assert_eq!(r.manifest_digest, img.manifest_digest);
    assert!(r
        .blobs
        .iter()
        .all(|(_, o)| *o == kiln_store::registry::BlobOutcome::Uploaded));
    // The failed PUT was not re-sent into its session: a new one was opened.
    let posts = srv
        .requests()
        .iter()
        .filter(|r| r.method == "POST" && r.headers.contains_key("authorization"))
        .count();
    assert_eq!(posts, 4, "3 blobs + 1 restarted upload");
    assert!(token_scopes
        .lock()
        .unwrap()
        .iter()
        .all(|s| s == &vec!["repository:lib/img:pull,push".to_string()]));
    let second = reference::parse(&format!("{}/lib/app:1", srv.addr)).unwrap();
    let r = c.push(&s, &img, &second, &opts, &|_: Event| {}).unwrap();
    assert!(
        r.blobs
            .iter()
            .all(|(_, o)| *o == kiln_store::registry::BlobOutcome::Mounted),
        "{r:?}"
    );
    let scopes = token_scopes.lock().unwrap();
    assert!(
        scopes
            .iter()
            .any(|s| s.contains(&"repository:lib/app:pull,push".to_string())
                && s.contains(&"repository:lib/img:pull".to_string())),
        "{scopes:?}"
    );
}

#[test]
fn plain_http_elsewhere_is_refused() {
    // A blob redirect and a token realm pointing at plain http on a host
    // that is neither loopback nor listed as insecure: refused without
    // connecting.
    let img = fake_image(None);
    let img2 = img.clone();
    let srv = serve_with(&img, move |req| {
        is_layer(&img2, req).then(|| resp(302, &[("Location", "http://192.0.2.1/blob")], ""))
    });
    let (_d, s) = store();
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(
        matches!(err, RegistryError::InsecureRefused { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .starts_with("192.0.2.1: refusing plain http"),
        "{err}"
    );
    nothing_committed(&s, &img);

    let srv = serve_with(&img, |_| {
        Some(resp(
            401,
            &[(
                "WWW-Authenticate",
                r#"Bearer realm="http://192.0.2.1/token",service="x""#,
            )],
            "",
        ))
    });
    let err = pull(&srv, "latest", &s).unwrap_err();
    assert!(
        matches!(err, RegistryError::InsecureRefused { .. }),
        "{err:?}"
    );
}

#[test]
fn oversized_config_and_layer_count_mismatch_are_refused() {
    let img = fake_image(None);
    let mut m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    m["config"]["size"] = serde_json::json!(9u64 << 20);
    let big = serde_json::to_vec(&m).unwrap();
    let srv = serve_with(&img, move |req| {
        req.path
            .ends_with("/manifests/single")
            .then(|| resp(200, &[("Content-Type", MT_MANIFEST)], big.clone()))
    });
    let (_d, s) = store();
    let err = pull(&srv, "single", &s).unwrap_err();
    assert!(
        matches!(err, RegistryError::TooLarge { limit, .. } if limit == 8 << 20),
        "{err:?}"
    );
    assert!(!srv.requests().iter().any(|r| r.path.contains("/blobs/")));

    let mut m: serde_json::Value = serde_json::from_slice(&img.manifest).unwrap();
    let layer = m["layers"][0].clone();
    m["layers"] = serde_json::json!([layer.clone(), layer]);
    let two = serde_json::to_vec(&m).unwrap();
    let srv = serve_with(&img, move |req| {
        req.path
            .ends_with("/manifests/single")
            .then(|| resp(200, &[("Content-Type", MT_MANIFEST)], two.clone()))
    });
    let err = pull(&srv, "single", &s).unwrap_err();
    assert!(
        err.to_string()
            .contains("2 layers but the config 1 diff IDs"),
        "{err}"
    );
    assert!(s.list_images().unwrap().is_empty());
}

//! HTTP for the registry client: TLS roots, http-vs-https per host,
//! retries with backoff, the `WWW-Authenticate` challenge (Basic and Bearer
//! tokens, cached per scope), and redirects followed by hand so that the
//! `Authorization` header never leaves the registry's own host.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use ureq::http::{self, Response, Uri};
use ureq::tls::{Certificate, PemItem, RootCerts, TlsConfig};
use ureq::{Agent, SendBody};

use super::credentials::Credentials;
use super::error::RegistryError;
use super::RegistryConfig;

/// Docker Hub's API endpoint for the `docker.io` domain.
const DOCKER_HUB_HOST: &str = "registry-1.docker.io";
/// Largest error body read to report what the registry said.
const ERROR_BODY_MAX: u64 = 64 << 10;
/// Largest token response read.
const TOKEN_BODY_MAX: u64 = 1 << 20;
const MAX_REDIRECTS: u32 = 10;

/// The host:port kiln talks to for a reference domain.
pub(crate) fn api_host(domain: &str) -> &str {
    if domain == crate::reference::DEFAULT_DOMAIN {
        DOCKER_HUB_HOST
    } else {
        domain
    }
}

/// Whether `authority` (`host[:port]`, `[v6]:port`) names the loopback
/// interface.
pub(crate) fn is_loopback(authority: &str) -> bool {
    let host = split_host(authority);
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<IpAddr>()
            .map(|ip| ip.is_loopback())
            .unwrap_or(false)
}

fn split_host(authority: &str) -> &str {
    if let Some(rest) = authority.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match authority.rsplit_once(':') {
        Some((h, p)) if p.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    }
}

/// A request body that can be sent again on a retry.
pub(crate) enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    /// `len` bytes from a fresh reader per attempt.
    Stream {
        len: u64,
        #[allow(clippy::type_complexity)]
        open: Box<dyn Fn() -> io::Result<Box<dyn Read + Send + 'a>> + Sync + 'a>,
    },
}

pub(crate) struct Req<'a> {
    pub method: &'static str,
    /// A path on the registry (`/v2/...`) or an absolute URL (a `Location`).
    pub target: String,
    pub headers: Vec<(&'static str, String)>,
    pub body: Body<'a>,
    /// GET/HEAD of blobs: follow redirects (to storage hosts) by hand.
    pub follow_redirects: bool,
    /// Retry 429/5xx and broken connections here. Off for requests into an
    /// upload session: a half-sent body may have been kept, so the caller
    /// starts a new session instead.
    pub retry: bool,
}

impl<'a> Req<'a> {
    pub fn new(method: &'static str, target: impl Into<String>) -> Req<'a> {
        Req {
            method,
            target: target.into(),
            headers: Vec::new(),
            body: Body::Empty,
            follow_redirects: false,
            retry: true,
        }
    }
    pub fn header(mut self, k: &'static str, v: impl Into<String>) -> Self {
        self.headers.push((k, v.into()));
        self
    }
    pub fn body(mut self, b: Body<'a>) -> Self {
        self.body = b;
        self
    }
    pub fn follow(mut self) -> Self {
        self.follow_redirects = true;
        self
    }
    pub fn no_retry(mut self) -> Self {
        self.retry = false;
        self
    }
}

/// What a request is for: the registry, the token scopes it needs, and what
/// errors should name.
#[derive(Clone)]
pub(crate) struct Scope {
    /// The reference's domain (`docker.io`, `localhost:5000`).
    pub domain: String,
    /// `repository:NAME:pull`, ... (empty for `/v2/` checks).
    pub scopes: Vec<String>,
    /// `pull` or `push`, for 401/403 messages.
    pub action: &'static str,
    /// What the error messages name (`localhost:5000/foo`).
    pub name: String,
    /// Credentials to use instead of the docker config's (login checks).
    pub creds: Option<Credentials>,
}

impl Scope {
    pub fn pull(domain: &str, repo: &str) -> Scope {
        Scope {
            domain: domain.to_string(),
            scopes: vec![format!("repository:{repo}:pull")],
            action: "pull",
            name: format!("{domain}/{repo}"),
            creds: None,
        }
    }
    pub fn push(domain: &str, repo: &str) -> Scope {
        Scope {
            domain: domain.to_string(),
            scopes: vec![format!("repository:{repo}:pull,push")],
            action: "push",
            name: format!("{domain}/{repo}"),
            creds: None,
        }
    }
    fn key(&self) -> String {
        let mut s = self.scopes.clone();
        s.sort();
        format!("{} {}", self.domain, s.join(" "))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scheme {
    Https,
    Http,
}

pub(crate) struct Http {
    /// `[verified, unverified]` through the environment's proxy
    /// (`HTTPS_PROXY`, `NO_PROXY`, ...), and the same pair without a proxy
    /// for loopback hosts (as Go's `ProxyFromEnvironment` does).
    /// Unverified TLS is for registries listed as insecure only.
    agents: [[Agent; 2]; 2],
    cfg: RegistryConfig,
    schemes: Mutex<HashMap<String, Scheme>>,
    /// `Scope::key()` (or `domain` for Basic) -> `Authorization` value.
    auth: Mutex<HashMap<String, String>>,
    creds: Mutex<HashMap<String, Option<Credentials>>>,
}

/// Reads the PEM certificates of `path`.
fn pem_certs(path: &std::path::Path, out: &mut Vec<Certificate<'static>>) -> Result<usize, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let mut n = 0;
    for item in ureq::tls::parse_pem(&bytes) {
        match item {
            Ok(PemItem::Certificate(c)) => {
                out.push(c);
                n += 1;
            }
            Ok(_) => {}
            Err(e) => return Err(format!("{}: {e}", path.display())),
        }
    }
    Ok(n)
}

/// The system bundle (`$SSL_CERT_FILE`, else Debian's / Fedora's path) plus
/// the extra CA files.
fn root_certs(cfg: &RegistryConfig) -> Result<Vec<Certificate<'static>>, RegistryError> {
    let mut certs = Vec::new();
    let system = std::env::var_os("SSL_CERT_FILE")
        .filter(|v| !v.is_empty())
        .map(std::path::PathBuf::from)
        .into_iter()
        .chain(
            [
                "/etc/ssl/certs/ca-certificates.crt",
                "/etc/pki/tls/certs/ca-bundle.crt",
                "/etc/ssl/cert.pem",
            ]
            .into_iter()
            .map(std::path::PathBuf::from),
        )
        .find(|p| p.is_file());
    if let Some(p) = system {
        // A damaged system bundle should not make --ca-file unusable.
        let _ = pem_certs(&p, &mut certs);
    }
    for f in &cfg.ca_files {
        let n = pem_certs(f, &mut certs).map_err(RegistryError::Config)?;
        if n == 0 {
            return Err(RegistryError::Config(format!(
                "{}: no PEM certificate found",
                f.display()
            )));
        }
    }
    Ok(certs)
}

fn agent(tls: TlsConfig, proxy: bool) -> Agent {
    let proxy = if proxy {
        ureq::Proxy::try_from_env()
    } else {
        None
    };
    let cfg = Agent::config_builder()
        .proxy(proxy)
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("kiln/", env!("CARGO_PKG_VERSION")))
        // Blobs must arrive as stored: their digest is of these bytes.
        .accept_encoding("identity")
        .timeout_connect(Some(Duration::from_secs(30)))
        .timeout_per_read(Some(Duration::from_secs(120)))
        .timeout_per_write(Some(Duration::from_secs(120)))
        .tls_config(tls)
        .build();
    Agent::new_with_config(cfg)
}

fn header<'r>(resp: &'r Response<ureq::Body>, name: &str) -> Option<&'r str> {
    resp.headers().get(name).and_then(|v| v.to_str().ok())
}

pub(crate) fn header_string(resp: &Response<ureq::Body>, name: &str) -> Option<String> {
    header(resp, name).map(str::to_string)
}

/// Which TLS failures are about trust (never retried over plain http).
fn tls_trust_error(e: &ureq::Error) -> Option<String> {
    fn classify(r: &rustls::Error) -> Option<String> {
        match r {
            rustls::Error::InvalidCertificate(_)
            | rustls::Error::NoCertificatesPresented
            | rustls::Error::UnsupportedNameType
            | rustls::Error::InvalidCertRevocationList(_) => Some(r.to_string()),
            _ => None,
        }
    }
    match e {
        ureq::Error::Rustls(r) => classify(r),
        ureq::Error::Io(io) => io
            .get_ref()
            .and_then(|i| i.downcast_ref::<rustls::Error>())
            .and_then(classify),
        _ => None,
    }
}

fn retryable(e: &ureq::Error) -> bool {
    match e {
        ureq::Error::Io(io) => matches!(
            io.kind(),
            io::ErrorKind::ConnectionReset
                | io::ErrorKind::ConnectionAborted
                | io::ErrorKind::ConnectionRefused
                | io::ErrorKind::BrokenPipe
                | io::ErrorKind::UnexpectedEof
                | io::ErrorKind::TimedOut
                | io::ErrorKind::Interrupted
        ),
        ureq::Error::Timeout(_) | ureq::Error::ConnectionFailed => true,
        ureq::Error::Protocol(_) => true,
        _ => false,
    }
}

/// `200ms * 2^n`, or what `Retry-After` asks for (seconds, capped at 60).
pub(crate) fn backoff(attempt: u32, retry_after: Option<&str>) -> Duration {
    if let Some(s) = retry_after.and_then(|v| v.trim().parse::<u64>().ok()) {
        return Duration::from_secs(s.min(60));
    }
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(8)))
}

/// Resolves a `Location` against the URL it came from.
pub(crate) fn resolve_url(base: &str, loc: &str) -> Result<String, String> {
    if loc.starts_with("http://") || loc.starts_with("https://") {
        loc.parse::<Uri>()
            .map_err(|e| format!("bad URL {loc:?}: {e}"))?;
        return Ok(loc.to_string());
    }
    let b: Uri = base.parse().map_err(|e| format!("bad URL {base:?}: {e}"))?;
    let scheme = b.scheme_str().unwrap_or("https");
    let auth = b.authority().map(|a| a.as_str()).unwrap_or("");
    if let Some(rest) = loc.strip_prefix("//") {
        return Ok(format!("{scheme}://{rest}"));
    }
    if loc.starts_with('/') {
        return Ok(format!("{scheme}://{auth}{loc}"));
    }
    let path = b.path();
    let dir = &path[..path.rfind('/').map(|i| i + 1).unwrap_or(0)];
    Ok(format!("{scheme}://{auth}{dir}{loc}"))
}

/// Whether `authority` (of a `scheme` URL) is the registry `host`, an
/// explicit default port included (`reg.example:443` = `reg.example`).
fn same_authority(scheme: &str, authority: &str, host: &str) -> bool {
    let strip = |a: &str| -> String {
        let a = a.to_ascii_lowercase();
        let default = if scheme == "http" { ":80" } else { ":443" };
        a.strip_suffix(default).map(str::to_string).unwrap_or(a)
    };
    strip(authority) == strip(host)
}

fn authority_of(url: &str) -> Option<(String, String)> {
    let u: Uri = url.parse().ok()?;
    Some((
        u.scheme_str()?.to_ascii_lowercase(),
        u.authority()?.as_str().to_ascii_lowercase(),
    ))
}

/// `key="value", key=value` pairs after the scheme of a challenge.
fn parse_params(s: &str) -> HashMap<String, String> {
    let mut out = HashMap::new();
    let mut rest = s.trim();
    while !rest.is_empty() {
        let Some(eq) = rest.find('=') else { break };
        let key = rest[..eq]
            .trim()
            .trim_start_matches(',')
            .trim()
            .to_ascii_lowercase();
        rest = rest[eq + 1..].trim_start();
        let value;
        if let Some(r) = rest.strip_prefix('"') {
            let mut v = String::new();
            let mut chars = r.char_indices();
            let mut end = r.len();
            while let Some((i, c)) = chars.next() {
                match c {
                    '\\' => {
                        if let Some((_, n)) = chars.next() {
                            v.push(n);
                        }
                    }
                    '"' => {
                        end = i + 1;
                        break;
                    }
                    c => v.push(c),
                }
            }
            value = v;
            rest = &r[end.min(r.len())..];
        } else {
            let end = rest.find(',').unwrap_or(rest.len());
            value = rest[..end].trim().to_string();
            rest = &rest[end..];
        }
        rest = rest.trim_start().trim_start_matches(',').trim_start();
        out.insert(key, value);
    }
    out
}

/// A parsed `WWW-Authenticate` header.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

pub(crate) fn parse_challenge(h: &str) -> Option<Challenge> {
    let h = h.trim();
    let (scheme, rest) = h.split_once(char::is_whitespace).unwrap_or((h, ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if scheme.eq_ignore_ascii_case("bearer") {
        let mut p = parse_params(rest);
        return Some(Challenge::Bearer {
            realm: p.remove("realm")?,
            service: p.remove("service"),
            scope: p.remove("scope"),
        });
    }
    None
}

fn basic_header(c: &Credentials) -> String {
    let raw = format!("{}:{}", c.username, c.password);
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(raw)
    )
}

#[derive(serde::Deserialize)]
struct TokenResponse {
    #[serde(default)]
    token: Option<String>,
    #[serde(default)]
    access_token: Option<String>,
}

/// Percent-encodes a query value (RFC 3986 unreserved kept).
fn query_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The registry's own words from an error body
/// (`{"errors":[{"code":..,"message":..}]}`), bounded.
pub(crate) fn error_message(resp: Response<ureq::Body>) -> String {
    let status = resp.status();
    let mut buf = Vec::new();
    let _ = resp
        .into_body()
        .into_reader()
        .take(ERROR_BODY_MAX)
        .read_to_end(&mut buf);
    #[derive(serde::Deserialize)]
    struct E {
        #[serde(default)]
        code: String,
        #[serde(default)]
        message: String,
    }
    #[derive(serde::Deserialize)]
    struct Es {
        errors: Vec<E>,
    }
    let reason = status.canonical_reason().unwrap_or("");
    match serde_json::from_slice::<Es>(&buf) {
        Ok(es) if !es.errors.is_empty() => {
            let parts: Vec<String> = es
                .errors
                .iter()
                .map(|e| {
                    if e.message.is_empty() {
                        e.code.clone()
                    } else {
                        format!("{}: {}", e.code, e.message)
                    }
                })
                .collect();
            format!("{reason} ({})", parts.join("; "))
        }
        _ => reason.to_string(),
    }
}

impl Http {
    pub fn new(cfg: RegistryConfig) -> Result<Http, RegistryError> {
        let certs = root_certs(&cfg)?;
        let verified = || {
            TlsConfig::builder()
                .root_certs(RootCerts::new_with_certs(&certs))
                .build()
        };
        let unverified = || TlsConfig::builder().disable_verification(true).build();
        Ok(Http {
            agents: [
                [agent(verified(), true), agent(unverified(), true)],
                [agent(verified(), false), agent(unverified(), false)],
            ],
            cfg,
            schemes: Mutex::new(HashMap::new()),
            auth: Mutex::new(HashMap::new()),
            creds: Mutex::new(HashMap::new()),
        })
    }

    pub fn config(&self) -> &RegistryConfig {
        &self.cfg
    }

    fn is_insecure(&self, authority: &str) -> bool {
        let a = authority.to_ascii_lowercase();
        let host = split_host(&a);
        self.cfg.insecure.iter().any(|i| {
            let i = i.trim().to_ascii_lowercase();
            let i = i
                .trim_start_matches("https://")
                .trim_start_matches("http://")
                .trim_end_matches('/');
            i == a || i == host
        })
    }

    fn http_allowed(&self, authority: &str) -> bool {
        is_loopback(authority) || self.is_insecure(authority)
    }

    fn agent_for(&self, authority: &str) -> &Agent {
        let direct = usize::from(is_loopback(authority));
        let insecure = usize::from(self.is_insecure(authority));
        &self.agents[direct][insecure]
    }

    fn scheme(&self, host: &str) -> Scheme {
        let known = self
            .schemes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(host)
            .copied();
        known.unwrap_or(Scheme::Https)
    }

    fn set_scheme(&self, host: &str, s: Scheme) {
        self.schemes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(host.to_string(), s);
    }

    /// The credentials for `domain`: the scope's override, else the docker
    /// config's (looked up once).
    fn credentials(&self, scope: &Scope) -> Result<Option<Credentials>, RegistryError> {
        if let Some(c) = &scope.creds {
            return Ok(Some(c.clone()));
        }
        let mut map = self.creds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = map.get(&scope.domain) {
            return Ok(c.clone());
        }
        let dir = super::credentials::config_dir(self.cfg.docker_config_dir.as_deref());
        let c = super::credentials::lookup(&dir, &scope.domain)?;
        map.insert(scope.domain.clone(), c.clone());
        Ok(c)
    }

    fn cached_auth(&self, scope: &Scope) -> Option<String> {
        if scope.creds.is_some() {
            return None;
        }
        let m = self.auth.lock().unwrap_or_else(|p| p.into_inner());
        m.get(&scope.key())
            .or_else(|| m.get(&format!("{} basic", scope.domain)))
            .cloned()
    }

    /// Answers a 401 challenge: the `Authorization` value to retry with, or
    /// `None` when there is nothing better to send (no credentials for
    /// Basic).
    fn authenticate(
        &self,
        scope: &Scope,
        challenge: Option<&str>,
    ) -> Result<Option<String>, RegistryError> {
        let creds = self.credentials(scope)?;
        let Some(ch) = challenge.and_then(parse_challenge) else {
            return Ok(creds.as_ref().map(basic_header));
        };
        let value = match ch {
            Challenge::Basic => match &creds {
                Some(c) => {
                    let v = basic_header(c);
                    if scope.creds.is_none() {
                        self.auth
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(format!("{} basic", scope.domain), v.clone());
                    }
                    v
                }
                None => return Ok(None),
            },
            Challenge::Bearer {
                realm,
                service,
                scope: _,
            } => {
                let token = self.fetch_token(scope, &realm, service.as_deref(), creds.as_ref())?;
                let v = format!("Bearer {token}");
                if scope.creds.is_none() {
                    self.auth
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .insert(scope.key(), v.clone());
                }
                v
            }
        };
        Ok(Some(value))
    }

    fn fetch_token(
        &self,
        scope: &Scope,
        realm: &str,
        service: Option<&str>,
        creds: Option<&Credentials>,
    ) -> Result<String, RegistryError> {
        let (scheme, authority) = authority_of(realm).ok_or_else(|| {
            RegistryError::protocol(&scope.domain, format!("bad token realm {realm:?}"))
        })?;
        if scheme != "https" && !(scheme == "http" && self.http_allowed(&authority)) {
            return Err(RegistryError::InsecureRefused {
                registry: authority,
            });
        }
        let identity = creds.filter(|c| c.username == "<token>");
        let mut query: Vec<String> = Vec::new();
        if let Some(s) = service {
            query.push(format!("service={}", query_escape(s)));
        }
        for s in &scope.scopes {
            query.push(format!("scope={}", query_escape(s)));
        }
        let agent = self.agent_for(&authority);
        let mut attempt = 0;
        loop {
            let result = if let Some(c) = identity {
                // An identity token is an OAuth2 refresh token.
                let mut form = vec![
                    "grant_type=refresh_token".to_string(),
                    format!("refresh_token={}", query_escape(&c.password)),
                    "client_id=kiln".to_string(),
                ];
                form.extend(query.iter().cloned());
                let form = form.join("&");
                let req = http::Request::builder()
                    .method("POST")
                    .uri(realm)
                    .header("Content-Type", "application/x-www-form-urlencoded")
                    .header("Content-Length", form.len().to_string())
                    .body(form.into_bytes())
                    .map_err(|e| RegistryError::protocol(&scope.domain, e.to_string()))?;
                agent.run(req)
            } else {
                let sep = if realm.contains('?') { '&' } else { '?' };
                let url = if query.is_empty() {
                    realm.to_string()
                } else {
                    format!("{realm}{sep}{}", query.join("&"))
                };
                let mut b = http::Request::builder().method("GET").uri(url);
                if let Some(c) = creds {
                    b = b.header("Authorization", basic_header(c));
                }
                let req = b
                    .body(())
                    .map_err(|e| RegistryError::protocol(&scope.domain, e.to_string()))?;
                agent.run(req)
            };
            let resp = match result {
                Ok(r) => r,
                Err(e) if retryable(&e) && attempt < self.cfg.retries => {
                    std::thread::sleep(backoff(attempt, None));
                    attempt += 1;
                    continue;
                }
                Err(e) => return Err(self.transport_error(&authority, e)),
            };
            let status = resp.status().as_u16();
            match status {
                200..=299 => {
                    let mut buf = Vec::new();
                    resp.into_body()
                        .into_reader()
                        .take(TOKEN_BODY_MAX)
                        .read_to_end(&mut buf)
                        .map_err(|e| RegistryError::Transport {
                            registry: authority.clone(),
                            message: e.to_string(),
                        })?;
                    let t: TokenResponse = serde_json::from_slice(&buf).map_err(|e| {
                        RegistryError::protocol(&authority, format!("token response: {e}"))
                    })?;
                    return t
                        .token
                        .or(t.access_token)
                        .filter(|t| !t.is_empty())
                        .ok_or_else(|| {
                            RegistryError::protocol(&authority, "token response without a token")
                        });
                }
                401 => {
                    return Err(RegistryError::Unauthorized {
                        action: scope.action,
                        name: scope.name.clone(),
                        hint: if creds.is_some() {
                            "wrong credentials?"
                        } else {
                            "not logged in?"
                        },
                    })
                }
                403 => {
                    return Err(RegistryError::Forbidden {
                        action: scope.action,
                        name: scope.name.clone(),
                    })
                }
                429 | 500 | 502 | 503 | 504 if attempt < self.cfg.retries => {
                    std::thread::sleep(backoff(attempt, header(&resp, "retry-after")));
                    attempt += 1;
                }
                _ => {
                    return Err(RegistryError::Status {
                        method: if identity.is_some() { "POST" } else { "GET" }.into(),
                        url: realm.to_string(),
                        status,
                        message: error_message(resp),
                    })
                }
            }
        }
    }

    fn transport_error(&self, registry: &str, e: ureq::Error) -> RegistryError {
        if let Some(m) = tls_trust_error(&e) {
            return RegistryError::Tls {
                registry: registry.to_string(),
                message: m,
            };
        }
        let message = match &e {
            ureq::Error::Rustls(r) => {
                return RegistryError::Tls {
                    registry: registry.to_string(),
                    message: r.to_string(),
                }
            }
            // ureq's "io: " prefix says nothing to a user.
            ureq::Error::Io(io) => io.to_string(),
            other => other.to_string(),
        };
        RegistryError::Transport {
            registry: registry.to_string(),
            message,
        }
    }

    fn once(
        &self,
        method: &str,
        url: &str,
        headers: &[(&'static str, String)],
        auth: Option<&str>,
        body: &Body<'_>,
    ) -> Result<Response<ureq::Body>, ureq::Error> {
        let authority = authority_of(url).map(|(_, a)| a).unwrap_or_default();
        let mut b = http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            b = b.header(*k, v.as_str());
        }
        if let Some(a) = auth {
            b = b.header("Authorization", a);
        }
        let agent = self.agent_for(&authority);
        match body {
            Body::Empty => {
                let b = if matches!(method, "PUT" | "POST" | "PATCH") {
                    b.header("Content-Length", "0")
                } else {
                    b
                };
                agent.run(b.body(())?)
            }
            Body::Bytes(bytes) => agent.run(
                b.header("Content-Length", bytes.len().to_string())
                    .body(*bytes)?,
            ),
            Body::Stream { len, open } => {
                let r = open().map_err(ureq::Error::Io)?;
                let mut r = r.take(*len);
                let body = SendBody::from_reader(&mut r);
                agent.run(b.header("Content-Length", len.to_string()).body(body)?)
            }
        }
    }

    /// Sends `req` to the registry of `scope`: https first (http for
    /// loopback and insecure registries that do not speak TLS), answering
    /// one 401 challenge, retrying 429/5xx and broken connections with
    /// backoff, and following redirects (GET/HEAD) without credentials once
    /// the host changes. Returns the final response, whatever its status.
    pub fn send(
        &self,
        scope: &Scope,
        req: &Req<'_>,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        self.send_at(scope, req).map(|(r, _)| r)
    }

    /// [`Http::send`], also returning the URL that answered (what a
    /// relative `Location` resolves against).
    pub fn send_at(
        &self,
        scope: &Scope,
        req: &Req<'_>,
    ) -> Result<(Response<ureq::Body>, String), RegistryError> {
        let host = api_host(&scope.domain).to_string();
        let mut scheme = self.scheme(&host);
        let mut method = req.method;
        let mut url = self.url(scheme, &host, &req.target);
        let mut auth = self.cached_auth(scope);
        let mut challenged = false;
        let mut attempt = 0u32;
        let mut redirects = 0u32;
        let mut fell_back = false;
        loop {
            let (url_scheme, url_auth) = authority_of(&url).ok_or_else(|| {
                RegistryError::protocol(&scope.domain, format!("bad URL {url:?}"))
            })?;
            if url_scheme == "http" && !self.http_allowed(&url_auth) {
                return Err(RegistryError::InsecureRefused { registry: url_auth });
            }
            // Credentials go to the registry's own host only.
            let on_registry = same_authority(&url_scheme, &url_auth, &host);
            let send_auth = if on_registry { auth.as_deref() } else { None };
            let result = self.once(method, &url, &req.headers, send_auth, &req.body);
            let resp = match result {
                Ok(r) => r,
                Err(e) => {
                    if on_registry
                        && scheme == Scheme::Https
                        && !fell_back
                        && url_scheme == "https"
                        && self.http_allowed(&host)
                        && tls_trust_error(&e).is_none()
                    {
                        // Loopback / insecure registry without TLS.
                        fell_back = true;
                        scheme = Scheme::Http;
                        url = self.url(scheme, &host, &req.target);
                        continue;
                    }
                    if req.retry
                        && retryable(&e)
                        && tls_trust_error(&e).is_none()
                        && attempt < self.cfg.retries
                    {
                        std::thread::sleep(backoff(attempt, None));
                        attempt += 1;
                        continue;
                    }
                    return Err(self.transport_error(&url_auth, e));
                }
            };
            if on_registry {
                self.set_scheme(&host, scheme);
            }
            let status = resp.status().as_u16();
            match status {
                401 if on_registry && !challenged => {
                    challenged = true;
                    let ch = header(&resp, "www-authenticate").map(str::to_string);
                    match self.authenticate(scope, ch.as_deref())? {
                        Some(a) => {
                            drop(resp);
                            auth = Some(a);
                            continue;
                        }
                        // Nothing to answer with: report the 401.
                        None => return Ok((resp, url)),
                    }
                }
                429 | 500 | 502 | 503 | 504 if req.retry && attempt < self.cfg.retries => {
                    let wait = backoff(attempt, header(&resp, "retry-after"));
                    drop(resp);
                    std::thread::sleep(wait);
                    attempt += 1;
                    continue;
                }
                301 | 302 | 303 | 307 | 308 if req.follow_redirects => {
                    redirects += 1;
                    if redirects > MAX_REDIRECTS {
                        return Err(RegistryError::protocol(
                            &scope.domain,
                            format!("too many redirects for {}", req.target),
                        ));
                    }
                    let loc = header(&resp, "location").ok_or_else(|| {
                        RegistryError::protocol(&scope.domain, "redirect without Location")
                    })?;
                    url = resolve_url(&url, loc)
                        .map_err(|m| RegistryError::protocol(&scope.domain, m))?;
                    if status == 303 && method != "HEAD" {
                        method = "GET";
                    }
                    continue;
                }
                _ => return Ok((resp, url)),
            }
        }
    }

    fn url(&self, scheme: Scheme, host: &str, target: &str) -> String {
        if target.starts_with("http://") || target.starts_with("https://") {
            return target.to_string();
        }
        let s = match scheme {
            Scheme::Https => "https",
            Scheme::Http => "http",
        };
        format!("{s}://{host}{target}")
    }

    /// Turns a non-success response into the error for `scope`.
    pub fn status_error(
        &self,
        scope: &Scope,
        method: &str,
        what: &str,
        resp: Response<ureq::Body>,
    ) -> RegistryError {
        match resp.status().as_u16() {
            401 => {
                let has_creds = self.credentials(scope).ok().flatten().is_some();
                RegistryError::Unauthorized {
                    action: scope.action,
                    name: scope.name.clone(),
                    hint: if has_creds {
                        "wrong credentials?"
                    } else {
                        "not logged in?"
                    },
                }
            }
            403 => RegistryError::Forbidden {
                action: scope.action,
                name: scope.name.clone(),
            },
            status => RegistryError::Status {
                method: method.to_string(),
                url: what.to_string(),
                status,
                message: error_message(resp),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.docker.io/token",service="registry.docker.io",scope="repository:library/alpine:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.docker.io/token".into(),
                service: Some("registry.docker.io".into()),
                scope: Some("repository:library/alpine:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(r#"bearer realm=http://127.0.0.1:1/t, service = "a\"b""#),
            Some(Challenge::Bearer {
                realm: "http://127.0.0.1:1/t".into(),
                service: Some("a\"b".into()),
                scope: None,
            })
        );
        assert_eq!(parse_challenge("Bearer service=x"), None);
        assert_eq!(parse_challenge("Negotiate"), None);
    }

    #[test]
    fn loopback_and_urls() {
        assert!(is_loopback("127.0.0.1:5000"));
        assert!(is_loopback("localhost"));
        assert!(is_loopback("[::1]:5000"));
        assert!(!is_loopback("registry.example.com:5000"));
        assert!(!is_loopback("10.0.0.1"));
        assert_eq!(api_host("docker.io"), "registry-1.docker.io");
        assert_eq!(
            resolve_url(
                "http://a:1/v2/x/blobs/uploads/",
                "/v2/x/blobs/uploads/u?_state=s"
            )
            .unwrap(),
            "http://a:1/v2/x/blobs/uploads/u?_state=s"
        );
        assert_eq!(
            resolve_url("https://a/v2/x", "https://s3.example/b?sig=1").unwrap(),
            "https://s3.example/b?sig=1"
        );
        assert_eq!(
            resolve_url("https://a/v2/x/y", "z").unwrap(),
            "https://a/v2/x/z"
        );
        assert_eq!(
            query_escape("repository:a/b:pull,push"),
            "repository%3Aa%2Fb%3Apull%2Cpush"
        );
        assert!(same_authority("https", "reg.example:443", "reg.example"));
        assert!(same_authority("http", "127.0.0.1:5000", "127.0.0.1:5000"));
        assert!(!same_authority("https", "127.0.0.2:5000", "127.0.0.1:5000"));
        assert!(!same_authority("https", "reg.example.evil", "reg.example"));
        assert_eq!(backoff(0, Some("3")), Duration::from_secs(3));
        assert_eq!(backoff(2, None), Duration::from_millis(800));
    }
}

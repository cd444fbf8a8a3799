//! Registry credentials in Docker's `config.json`: `credHelpers`,
//! `credsStore` (`docker-credential-<x> get|store|erase`) and `auths`
//! entries (`auth` base64, `username`/`password`, `identitytoken`).
//!
//! An identity token (an OAuth2 refresh token) is carried as the username
//! `<token>` with the token as password, the convention of Docker's
//! credential helpers.

use std::fmt;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine as _;
use serde_json::{Map, Value};

use super::error::RegistryError;

/// The key Docker uses for Docker Hub in `auths` and with helpers.
const DOCKER_HUB_KEY: &str = "https://index.docker.io/v1/";
/// Largest `config.json` / helper output read.
const CONFIG_MAX: u64 = 16 << 20;

/// A username and password (or identity token, username `<token>`).
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials")
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .finish()
    }
}

/// `override_`, else `$DOCKER_CONFIG`, else `$HOME/.docker`.
pub fn config_dir(override_: Option<&Path>) -> PathBuf {
    if let Some(p) = override_ {
        return p.to_path_buf();
    }
    if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
        return PathBuf::from(d);
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".docker")
}

/// `docker.io`, `index.docker.io`, `https://index.docker.io/v1/`, ... all
/// name Docker Hub; other keys are reduced to `host[:port]`.
fn normalize(key: &str) -> String {
    let k = key.trim();
    let k = k
        .strip_prefix("https://")
        .or_else(|| k.strip_prefix("http://"))
        .unwrap_or(k);
    let host = k.split('/').next().unwrap_or(k).to_ascii_lowercase();
    match host.as_str() {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" | "registry.hub.docker.com" => {
            "docker.io".to_string()
        }
        _ => host,
    }
}

/// What helpers and `auths` are keyed by for `registry`.
fn server_url(registry: &str) -> String {
    if normalize(registry) == "docker.io" {
        DOCKER_HUB_KEY.to_string()
    } else {
        registry.to_string()
    }
}

fn cred_err(registry: &str, message: impl Into<String>) -> RegistryError {
    RegistryError::Credentials {
        registry: registry.to_string(),
        message: message.into(),
    }
}

fn read_config(dir: &Path, registry: &str) -> Result<Map<String, Value>, RegistryError> {
    let p = dir.join("config.json");
    let f = match fs::File::open(&p) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Map::new()),
        Err(e) => return Err(RegistryError::io(p.display(), e)),
    };
    let mut buf = Vec::new();
    f.take(CONFIG_MAX)
        .read_to_end(&mut buf)
        .map_err(|e| RegistryError::io(p.display(), e))?;
    if buf.iter().all(u8::is_ascii_whitespace) {
        return Ok(Map::new());
    }
    match serde_json::from_slice::<Value>(&buf) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(cred_err(
            registry,
            format!("{}: not a JSON object", p.display()),
        )),
        Err(e) => Err(cred_err(registry, format!("{}: {e}", p.display()))),
    }
}

/// The helper configured for `registry`: `credHelpers` first, then
/// `credsStore`.
fn helper_for(cfg: &Map<String, Value>, registry: &str) -> Option<String> {
    let want = normalize(registry);
    if let Some(Value::Object(h)) = cfg.get("credHelpers") {
        for (k, v) in h {
            if normalize(k) == want {
                if let Some(s) = v.as_str().filter(|s| !s.is_empty()) {
                    return Some(s.to_string());
                }
            }
        }
    }
    cfg.get("credsStore")
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

fn valid_helper_name(h: &str) -> bool {
    h.bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

/// Runs `docker-credential-<helper> <action>` with `input` on stdin.
/// `Ok(None)` when the helper says it has no credentials.
fn run_helper(
    helper: &str,
    action: &str,
    input: &[u8],
    registry: &str,
) -> Result<Option<Vec<u8>>, RegistryError> {
    if !valid_helper_name(helper) {
        return Err(cred_err(
            registry,
            format!("invalid credential helper name {helper:?}"),
        ));
    }
    let prog = format!("docker-credential-{helper}");
    let mut child = Command::new(&prog)
        .arg(action)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| cred_err(registry, format!("{prog}: {e}")))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(input)
            .map_err(|e| cred_err(registry, format!("{prog} {action}: {e}")))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| cred_err(registry, format!("{prog} {action}: {e}")))?;
    if out.status.success() {
        return Ok(Some(out.stdout));
    }
    let msg = String::from_utf8_lossy(if out.stdout.is_empty() {
        &out.stderr
    } else {
        &out.stdout
    })
    .trim()
    .to_string();
    if msg.contains("credentials not found") {
        return Ok(None);
    }
    // The helper's own message, first line only (never our input).
    let first = msg
        .lines()
        .next()
        .unwrap_or("")
        .chars()
        .take(200)
        .collect::<String>();
    Err(cred_err(
        registry,
        format!("{prog} {action} failed ({}): {first}", out.status),
    ))
}

fn from_helper(helper: &str, registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let Some(out) = run_helper(helper, "get", server_url(registry).as_bytes(), registry)? else {
        return Ok(None);
    };
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "PascalCase")]
    struct Got {
        #[serde(default)]
        username: String,
        #[serde(default)]
        secret: String,
    }
    let got: Got = serde_json::from_slice(&out).map_err(|e| {
        cred_err(
            registry,
            format!("docker-credential-{helper} get: invalid output: {e}"),
        )
    })?;
    if got.secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: got.username,
        password: got.secret,
    }))
}

fn from_auths(
    cfg: &Map<String, Value>,
    registry: &str,
) -> Result<Option<Credentials>, RegistryError> {
    let Some(Value::Object(auths)) = cfg.get("auths") else {
        return Ok(None);
    };
    let want = normalize(registry);
    // An exact key wins over one that only normalises the same.
    let entry = auths
        .get(registry)
        .or_else(|| auths.get(&server_url(registry)))
        .or_else(|| {
            auths
                .iter()
                .find(|(k, _)| normalize(k) == want)
                .map(|(_, v)| v)
        });
    let Some(Value::Object(e)) = entry else {
        return Ok(None);
    };
    let s = |k: &str| e.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    if !s("identitytoken").is_empty() {
        return Ok(Some(Credentials {
            username: "<token>".into(),
            password: s("identitytoken"),
        }));
    }
    let auth = s("auth");
    if !auth.is_empty() {
        let raw = base64::engine::general_purpose::STANDARD
            .decode(auth.trim())
            .map_err(|_| cred_err(registry, "auths entry: \"auth\" is not valid base64"))?;
        let raw = String::from_utf8(raw)
            .map_err(|_| cred_err(registry, "auths entry: \"auth\" is not UTF-8"))?;
        let (u, p) = raw
            .split_once(':')
            .ok_or_else(|| cred_err(registry, "auths entry: \"auth\" is not user:password"))?;
        return Ok(Some(Credentials {
            username: u.to_string(),
            password: p.to_string(),
        }));
    }
    if !s("username").is_empty() {
        return Ok(Some(Credentials {
            username: s("username"),
            password: s("password"),
        }));
    }
    Ok(None)
}

/// The credentials stored for `registry` (`docker.io`, `localhost:5000`).
pub fn lookup(dir: &Path, registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let cfg = read_config(dir, registry)?;
    if let Some(h) = helper_for(&cfg, registry) {
        if let Some(c) = from_helper(&h, registry)? {
            return Ok(Some(c));
        }
    }
    from_auths(&cfg, registry)
}

/// Writes `config.json` atomically (0600, fsynced, renamed into place).
fn write_config(dir: &Path, cfg: &Map<String, Value>) -> Result<(), RegistryError> {
    fs::create_dir_all(dir).map_err(|e| RegistryError::io(dir.display(), e))?;
    let p = dir.join("config.json");
    let tmp = dir.join(format!(".config.json.kiln-{}", std::process::id()));
    let mut bytes = serde_json::to_vec_pretty(&Value::Object(cfg.clone()))
        .map_err(|e| RegistryError::Config(e.to_string()))?;
    bytes.push(b'\n');
    let res = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, &p)?;
        fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&tmp);
        return Err(RegistryError::io(p.display(), e));
    }
    Ok(())
}

/// Stores credentials: through the configured helper if there is one,
/// else as an `auths` entry. Other keys of `config.json` are kept.
pub fn save(dir: &Path, registry: &str, creds: &Credentials) -> Result<(), RegistryError> {
    let mut cfg = read_config(dir, registry)?;
    let key = server_url(registry);
    let auths = cfg
        .entry("auths")
        .or_insert_with(|| Value::Object(Map::new()));
    if !auths.is_object() {
        *auths = Value::Object(Map::new());
    }
    let helper = helper_for(&cfg, registry);
    let mut entry = Map::new();
    if let Some(h) = helper {
        let input = serde_json::json!({
            "ServerURL": key,
            "Username": creds.username,
            "Secret": creds.password,
        });
        let input = serde_json::to_vec(&input).map_err(|e| RegistryError::Config(e.to_string()))?;
        run_helper(&h, "store", &input, registry)?;
    } else if creds.username == "<token>" {
        entry.insert(
            "identitytoken".into(),
            Value::String(creds.password.clone()),
        );
    } else {
        let raw = format!("{}:{}", creds.username, creds.password);
        entry.insert(
            "auth".into(),
            Value::String(base64::engine::general_purpose::STANDARD.encode(raw)),
        );
    }
    if let Some(Value::Object(a)) = cfg.get_mut("auths") {
        // Drop other spellings of the same registry so lookups are not
        // ambiguous, then write ours.
        let want = normalize(registry);
        a.retain(|k, _| normalize(k) != want);
        a.insert(key, Value::Object(entry));
    }
    write_config(dir, &cfg)
}

/// Removes the credentials of `registry`; `false` if there were none.
pub fn erase(dir: &Path, registry: &str) -> Result<bool, RegistryError> {
    let mut cfg = read_config(dir, registry)?;
    let mut removed = false;
    if let Some(h) = helper_for(&cfg, registry) {
        if from_helper(&h, registry)?.is_some() {
            run_helper(&h, "erase", server_url(registry).as_bytes(), registry)?;
            removed = true;
        }
    }
    let want = normalize(registry);
    if let Some(Value::Object(a)) = cfg.get_mut("auths") {
        let before = a.len();
        a.retain(|k, _| normalize(k) != want);
        if a.len() != before {
            removed = true;
            write_config(dir, &cfg)?;
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_lookup_erase_keep_other_keys() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("config.json"),
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"dTpw"}},"psFormat":"x"}"#,
        )
        .unwrap();
        let hub = lookup(d.path(), "docker.io").unwrap().unwrap();
        assert_eq!((hub.username.as_str(), hub.password.as_str()), ("u", "p"));
        assert!(!format!("{hub:?}").contains("\"p\""));
        let c = Credentials {
            username: "me".into(),
            password: "s3cr:et".into(),
        };
        save(d.path(), "localhost:5000", &c).unwrap();
        let mode = fs::metadata(d.path().join("config.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        assert_eq!(lookup(d.path(), "localhost:5000").unwrap(), Some(c));
        let raw: Value =
            serde_json::from_slice(&fs::read(d.path().join("config.json")).unwrap()).unwrap();
        assert_eq!(raw["psFormat"], "x");
        assert!(raw["auths"]["https://index.docker.io/v1/"].is_object());
        assert!(erase(d.path(), "localhost:5000").unwrap());
        assert!(!erase(d.path(), "localhost:5000").unwrap());
        assert_eq!(lookup(d.path(), "localhost:5000").unwrap(), None);
        assert!(lookup(d.path(), "index.docker.io").unwrap().is_some());
    }

    #[test]
    fn spellings_and_tokens() {
        let d = tempfile::tempdir().unwrap();
        fs::write(
            d.path().join("config.json"),
            r#"{"auths":{"https://reg.example:5000/v2/":{"username":"a","password":"b"},"ghcr.io":{"identitytoken":"tok"}}}"#,
        )
        .unwrap();
        assert_eq!(
            lookup(d.path(), "reg.example:5000")
                .unwrap()
                .unwrap()
                .username,
            "a"
        );
        let t = lookup(d.path(), "ghcr.io").unwrap().unwrap();
        assert_eq!(
            (t.username.as_str(), t.password.as_str()),
            ("<token>", "tok")
        );
        assert_eq!(lookup(d.path(), "quay.io").unwrap(), None);
        assert_eq!(lookup(&d.path().join("missing"), "quay.io").unwrap(), None);
    }
}

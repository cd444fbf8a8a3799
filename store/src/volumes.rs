//! Named and anonymous volumes: the implementation behind
//! [`Store::volumes`](crate::Store::volumes).
//!
//! A volume is a directory `volumes/NAME/` holding `_data` (what
//! containers mount; Docker's own name for it) and `volume.json` (when it
//! was made, whether it is anonymous, its labels). Which containers use a
//! volume is the containers' business: the store only says where a
//! volume's data is and which volume a data dir belongs to.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Result, StoreError};
use crate::store::{now_secs, remove_tree, Store};

/// One volume as `kiln volume inspect` shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeInfo {
    pub name: String,
    /// The directory containers mount.
    pub mountpoint: PathBuf,
    /// Seconds since the epoch.
    pub created: i64,
    /// Made for an image's `VOLUME` (removed by `rm -v`), not by name.
    pub anonymous: bool,
    pub labels: BTreeMap<String, String>,
}

#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    created: i64,
    #[serde(default)]
    anonymous: bool,
    #[serde(default)]
    labels: BTreeMap<String, String>,
}

/// Docker's rule for a local volume's name, and its error text.
pub fn check_volume_name(name: &str) -> std::result::Result<(), String> {
    let mut chars = name.chars();
    let ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.len() >= 2
        && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "create {name}: \"{name}\" includes invalid characters for a local volume name, \
             only \"[a-zA-Z0-9][a-zA-Z0-9_.-]\" are allowed. If you intended to pass a host \
             directory, use absolute path"
        ))
    }
}

/// The store's volumes.
pub struct Volumes<'a> {
    store: &'a Store,
}

impl Store {
    pub fn volumes(&self) -> Volumes<'_> {
        Volumes { store: self }
    }
}

impl Volumes<'_> {
    fn dir(&self) -> PathBuf {
        self.store.root().join("volumes")
    }

    /// Creates the volume `name` (None: an anonymous one with a random
    /// 64-hex name, as Docker makes for `VOLUME`), or returns the existing
    /// one: `docker volume create` of a name that exists succeeds.
    pub fn create(
        &self,
        name: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<VolumeInfo> {
        let anonymous = name.is_none();
        let name = match name {
            Some(n) => {
                check_volume_name(n).map_err(StoreError::VolumeName)?;
                n.to_string()
            }
            None => random_name(),
        };
        let base = self.dir();
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&base)
            .map_err(|e| StoreError::io(&base, e))?;
        let vdir = base.join(&name);
        match fs::DirBuilder::new().mode(0o700).create(&vdir) {
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                if let Some(v) = self.get(&name)? {
                    return Ok(v);
                }
                // A volume whose creation died half-way: finish it.
            }
            Err(e) => return Err(StoreError::io(&vdir, e)),
            Ok(()) => {}
        }
        let data = vdir.join("_data");
        match fs::DirBuilder::new().mode(0o755).create(&data) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => {
                return Err(StoreError::io(&data, e))
            }
            _ => {}
        }
        let meta = Meta {
            created: now_secs(),
            anonymous,
            labels,
        };
        let tmp = vdir.join("volume.json.tmp");
        fs::write(&tmp, serde_json::to_vec(&meta)?).map_err(|e| StoreError::io(&tmp, e))?;
        let file = vdir.join("volume.json");
        fs::rename(&tmp, &file).map_err(|e| StoreError::io(&file, e))?;
        Ok(info(name, data, meta))
    }

    /// The volume `name`, if it exists.
    pub fn get(&self, name: &str) -> Result<Option<VolumeInfo>> {
        if check_volume_name(name).is_err() && !is_hex64(name) {
            return Ok(None);
        }
        let vdir = self.dir().join(name);
        let file = vdir.join("volume.json");
        let bytes = match fs::read(&file) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(StoreError::io(&file, e)),
            Ok(b) => b,
        };
        let meta: Meta = serde_json::from_slice(&bytes)?;
        Ok(Some(info(name.to_string(), vdir.join("_data"), meta)))
    }

    /// Every volume, by name.
    pub fn list(&self) -> Result<Vec<VolumeInfo>> {
        let base = self.dir();
        let entries = match fs::read_dir(&base) {
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(StoreError::io(&base, e)),
            Ok(r) => r,
        };
        let mut out = Vec::new();
        for e in entries {
            let e = e.map_err(|e| StoreError::io(&base, e))?;
            // A removal that died half-way: finish it.
            if e.file_name().to_string_lossy().starts_with(".removing-") {
                let _ = remove_tree(&e.path());
                continue;
            }
            if let Some(v) = self.get(&e.file_name().to_string_lossy())? {
                out.push(v);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    /// Removes the volume and its data; false if there was none. The
    /// caller checks first that no container uses it.
    pub fn remove(&self, name: &str) -> Result<bool> {
        if self.get(name)?.is_none() {
            return Ok(false);
        }
        let vdir = self.dir().join(name);
        // Renamed away first, so a half-removed volume is never listed.
        let gone = self.dir().join(format!(".removing-{name}"));
        fs::rename(&vdir, &gone).map_err(|e| StoreError::io(&vdir, e))?;
        remove_tree(&gone).map_err(|e| StoreError::io(&gone, e))?;
        Ok(true)
    }

    /// The volume whose data dir is `mountpoint` (a container's mount
    /// source), if any.
    pub fn by_mountpoint(&self, mountpoint: &Path) -> Option<String> {
        let rest = mountpoint.strip_prefix(self.dir()).ok()?;
        let mut c = rest.components();
        let name = c.next()?.as_os_str().to_str()?.to_string();
        (c.next()?.as_os_str() == "_data" && c.next().is_none()).then_some(name)
    }

    /// Bytes on disk in the volume's data.
    pub fn size(&self, v: &VolumeInfo) -> u64 {
        crate::gc::dir_size(&v.mountpoint)
    }
}

fn info(name: String, mountpoint: PathBuf, m: Meta) -> VolumeInfo {
    VolumeInfo {
        name,
        mountpoint,
        created: m.created,
        anonymous: m.anonymous,
        labels: m.labels,
    }
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

fn random_name() -> String {
    let mut b = [0u8; 32];
    getrandom_fill(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn getrandom_fill(buf: &mut [u8]) {
    use std::io::Read;
    if let Ok(mut f) = fs::File::open("/dev/urandom") {
        if f.read_exact(buf).is_ok() {
            return;
        }
    }
    // Never reached on Linux; still unique enough within one store.
    let seed = format!("{:?}{}", std::time::SystemTime::now(), std::process::id());
    let d = crate::digest::sha256_digest(seed.as_bytes());
    for (o, i) in buf.iter_mut().zip(d.hex().bytes()) {
        *o = i;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_dockers_rule() {
        assert!(check_volume_name("data").is_ok());
        assert!(check_volume_name("my_vol.1-x").is_ok());
        assert!(check_volume_name("a").is_err());
        assert!(check_volume_name("a/b")
            .unwrap_err()
            .contains("includes invalid characters"));
        assert!(check_volume_name(".x").is_err());
    }

    #[test]
    fn create_list_find_remove() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&dir.path().join("s")).unwrap();
        let v = store.volumes();
        let a = v.create(Some("data"), BTreeMap::new()).unwrap();
        assert!(a.mountpoint.is_dir() && !a.anonymous);
        fs::write(a.mountpoint.join("f"), b"x").unwrap();
        // Creating it again keeps what it holds.
        let again = v.create(Some("data"), BTreeMap::new()).unwrap();
        assert_eq!(again.created, a.created);
        assert!(again.mountpoint.join("f").exists());
        let anon = v.create(None, BTreeMap::new()).unwrap();
        assert!(anon.anonymous && is_hex64(&anon.name));
        let names: Vec<_> = v.list().unwrap().into_iter().map(|i| i.name).collect();
        assert_eq!(names.len(), 2);
        assert_eq!(v.by_mountpoint(&a.mountpoint).as_deref(), Some("data"));
        assert_eq!(v.by_mountpoint(Path::new("/tmp")), None);
        assert!(v.remove("data").unwrap());
        assert!(!v.remove("data").unwrap());
        assert!(v.get("data").unwrap().is_none());
        assert!(v.get("../x").unwrap().is_none());
    }
}

//! Docker credential helpers (`docker-credential-<name> get|store|erase`).
//! Alone in its test binary: it puts a helper on PATH, which is process-wide.

use std::fs;
use std::os::unix::fs::PermissionsExt;

use kiln_store::registry::credentials::{self, Credentials};

#[test]
fn helper_protocol() {
    // A helper script that keeps what it was given in a file.
    let d = tempfile::tempdir().unwrap();
    let bin = d.path().join("bin");
    fs::create_dir(&bin).unwrap();
    let state = d.path().join("state");
    let script = format!(
        "#!/bin/sh\ncase \"$1\" in\n get) read u; if [ -f {s} ]; then cat {s}; else echo 'credentials not found in native keychain'; exit 1; fi;;\n store) cat > {s};;\n erase) rm -f {s};;\nesac\n",
        s = state.display()
    );
    let h = bin.join("docker-credential-kilntest");
    fs::write(&h, script).unwrap();
    fs::set_permissions(&h, fs::Permissions::from_mode(0o755)).unwrap();
    let cfgdir = d.path().join("cfg");
    fs::create_dir(&cfgdir).unwrap();
    fs::write(
        cfgdir.join("config.json"),
        r#"{"credHelpers":{"reg.test":"kilntest"},"auths":{"other.test":{"auth":"dTpw"}}}"#,
    )
    .unwrap();
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    std::env::set_var("PATH", path);

    assert_eq!(credentials::lookup(&cfgdir, "reg.test").unwrap(), None);
    let c = Credentials {
        username: "u".into(),
        password: "s3cret".into(),
    };
    credentials::save(&cfgdir, "reg.test", &c).unwrap();
    assert_eq!(credentials::lookup(&cfgdir, "reg.test").unwrap(), Some(c));
    // The secret went to the helper, not into config.json.
    let raw = fs::read_to_string(cfgdir.join("config.json")).unwrap();
    assert!(!raw.contains("s3cret"), "{raw}");
    assert!(raw.contains("other.test"), "{raw}");
    // Registries without a helper still use auths.
    assert_eq!(
        credentials::lookup(&cfgdir, "other.test")
            .unwrap()
            .unwrap()
            .username,
        "u"
    );
    assert!(credentials::erase(&cfgdir, "reg.test").unwrap());
    assert_eq!(credentials::lookup(&cfgdir, "reg.test").unwrap(), None);

    // A helper that is configured but missing: a clear error naming it.
    fs::write(
        cfgdir.join("config.json"),
        r#"{"credsStore":"kiln-no-such-helper"}"#,
    )
    .unwrap();
    let err = credentials::lookup(&cfgdir, "reg.test").unwrap_err();
    assert!(
        err.to_string()
            .contains("docker-credential-kiln-no-such-helper"),
        "{err}"
    );
}

//! `kiln pull`, `kiln push`, `kiln login`, `kiln logout`, and the registry
//! access the build shares (FROM of an image that is not local, `--push`,
//! the registry-backed cache). The protocol itself lives in
//! `kiln_store::registry`, the access a build shares in
//! `kiln_builder::registry`; this module is the command line around them.

use std::io::{BufRead, IsTerminal, Write};
use std::process::ExitCode;

use anyhow::{anyhow, Context as _, Result};
use kiln_store::registry::{
    credentials::{self, Credentials},
    Compression, Platform, PushOptions,
};
use kiln_store::{reference, Store};

use crate::cli::{LoginArgs, LogoutArgs, PullArgs, PushArgs, RegistryFlags};
use kiln_builder::error::Failure;
pub use kiln_builder::registry::{parse_ref, pull_into, push_image, reporter, Access, Pushable};

/// The registry access the global flags ask for.
pub fn access(flags: &RegistryFlags) -> Access {
    Access::new(flags.insecure_registries.clone(), flags.ca_files.clone())
}

pub fn cmd_pull(store: &Store, access: &Access, args: &PullArgs) -> Result<ExitCode> {
    let platform = match &args.platform {
        Some(p) => Platform::parse(p).map_err(|e| anyhow!("--platform {p}: {e}"))?,
        None => Platform::host(),
    };
    let r = parse_ref(&args.reference)?;
    let events = reporter(args.quiet);
    if !args.quiet {
        eprintln!(
            "Pulling {} ({platform_s})",
            r.full(),
            platform_s = platform_str(&platform)
        );
    }
    let img = pull_into(store, access, &args.reference, &platform, &events)?;
    if !args.quiet {
        eprintln!("Digest: {}", img.manifest_digest);
        eprintln!("Image ID: {}", img.config_digest);
    }
    println!("{}", r.full());
    Ok(ExitCode::SUCCESS)
}

fn platform_str(p: &Platform) -> String {
    match &p.variant {
        Some(v) => format!("{}/{}/{v}", p.os, p.architecture),
        None => format!("{}/{}", p.os, p.architecture),
    }
}

pub fn cmd_push(store: &Store, access: &Access, args: &PushArgs) -> Result<ExitCode> {
    let index = store.resolve_index(&args.reference)?;
    let Some(img) = store.resolve_image(&args.reference)? else {
        return Err(Failure::new(
            1,
            format!(
                "kiln: An image does not exist locally with the tag: {}",
                args.reference
            ),
        )
        .into());
    };
    let chunk_size = match &args.chunk_size {
        None => None,
        Some(c) => match crate::cmd_images::parse_size(c) {
            Ok(n) if n > 0 => Some(n),
            Ok(_) => return Err(Failure::new(1, "kiln: --chunk-size must be more than 0").into()),
            Err(e) => return Err(Failure::new(1, format!("kiln: --chunk-size {c}: {e}")).into()),
        },
    };
    let opts = PushOptions {
        compression: compression(args.compression),
        chunk_size,
    };
    let what = match &index {
        Some(idx) => Pushable::Index(idx),
        None => Pushable::Image(&img),
    };
    let report = push_image(store, access, what, &args.reference, &opts, args.quiet)?;
    println!("{}", report.manifest_digest);
    Ok(ExitCode::SUCCESS)
}

pub fn compression(c: crate::cli::PushCompression) -> Compression {
    match c {
        crate::cli::PushCompression::Gzip => Compression::Gzip,
        crate::cli::PushCompression::Zstd => Compression::Zstd,
    }
}

/// The registry a `login`/`logout` argument names, as credentials are
/// keyed: `docker.io` when none is given.
fn server_of(server: Option<&str>) -> String {
    let s = server.unwrap_or(reference::DEFAULT_DOMAIN);
    let s = s
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    // `https://index.docker.io/v1/` and friends are Docker Hub.
    let host = s.split('/').next().unwrap_or(s);
    match host {
        "index.docker.io" | "registry-1.docker.io" | "docker.io" => {
            reference::DEFAULT_DOMAIN.to_string()
        }
        h => h.to_string(),
    }
}

pub fn cmd_login(access: &Access, args: &LoginArgs) -> Result<ExitCode> {
    let server = server_of(args.server.as_deref());
    let username = match &args.username {
        Some(u) => u.clone(),
        None => {
            if !std::io::stdin().is_terminal() {
                return Err(Failure::new(
                    1,
                    "kiln: login: --username is required when stdin is not a terminal",
                )
                .into());
            }
            eprint!("Username: ");
            std::io::stderr().flush().ok();
            let mut u = String::new();
            std::io::stdin().lock().read_line(&mut u)?;
            u.trim().to_string()
        }
    };
    let password = if args.password_stdin {
        let mut p = String::new();
        std::io::stdin()
            .lock()
            .read_line(&mut p)
            .context("reading the password from stdin")?;
        p.trim_end_matches(['\n', '\r']).to_string()
    } else if let Some(p) = &args.password {
        eprintln!("WARNING! Using --password via the CLI is insecure. Use --password-stdin.");
        p.clone()
    } else if std::io::stdin().is_terminal() {
        rpassword::prompt_password("Password: ").context("reading the password")?
    } else {
        return Err(Failure::new(
            1,
            "kiln: login: give the password with --password-stdin (or --password)",
        )
        .into());
    };
    if username.is_empty() || password.is_empty() {
        return Err(Failure::new(1, "kiln: login: username and password must not be empty").into());
    }
    let creds = Credentials { username, password };
    let client = access.client()?;
    client
        .check_login(&server, &creds)
        .map_err(|e| Failure::new(1, format!("kiln: login to {server} failed: {e}")))?;
    let dir = credentials::config_dir(None);
    credentials::save(&dir, &server, &creds)?;
    eprintln!(
        "Login Succeeded (credentials for {server} stored in {})",
        dir.join("config.json").display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn cmd_logout(args: &LogoutArgs) -> Result<ExitCode> {
    let server = server_of(args.server.as_deref());
    let dir = credentials::config_dir(None);
    if credentials::erase(&dir, &server)? {
        eprintln!("Removing login credentials for {server}");
    } else {
        eprintln!("Not logged in to {server}");
    }
    Ok(ExitCode::SUCCESS)
}

/// `kiln cache prune --registry REGISTRY/REPO --keep N [--dry-run]`.
pub fn cache_prune_registry(
    store: &Store,
    access: &Access,
    repo: &str,
    keep: Option<usize>,
    dry_run: bool,
) -> Result<ExitCode> {
    use kiln_builder::engine::registry_gc;
    let keep = keep.ok_or_else(|| {
        Failure::new(
            1,
            "kiln: cache prune --registry needs --keep N: how many of the repository's cache tags to keep (the newest; 0 deletes them all)",
        )
    })?;
    let r = registry_gc::repository(repo).map_err(|e| Failure::new(1, format!("kiln: {e:#}")))?;
    let client = access.client()?;
    let _lease = store.lease()?;
    let out = registry_gc::prune(store, &client, &r, keep, dry_run).map_err(|e| {
        let disabled = e
            .downcast_ref::<kiln_store::RegistryError>()
            .is_some_and(|e| matches!(e, kiln_store::RegistryError::DeleteDisabled { .. }));
        if disabled {
            Failure::new(
                1,
                format!("kiln: cache prune --registry {repo}: {e:#}; nothing more was deleted (see --dry-run for what would go)"),
            )
            .into()
        } else {
            e.context(format!("cache prune --registry {repo}"))
        }
    })?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    let list = |v: &[String]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    println!("kept {} cache tags: {}", out.kept.len(), list(&out.kept));
    println!(
        "{verb} {} cache tags: {}",
        out.removed.len(),
        list(&out.removed)
    );
    if !out.shared.is_empty() {
        println!(
            "left {} cache tags naming the same manifest as a kept tag: {}",
            out.shared.len(),
            list(&out.shared)
        );
    }
    println!(
        "{verb} {} blobs ({}) that no remaining tag names",
        out.blobs,
        kiln_builder::registry::human(out.bytes)
    );
    if let Some(why) = &out.layers_left {
        println!("note: {why}");
    }
    if !dry_run && (out.blobs > 0 || !out.removed.is_empty()) {
        println!("note: the registry frees the bytes when its garbage collector runs (`registry garbage-collect` for the CNCF distribution registry)");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn login_servers_are_keyed_like_docker() {
        assert_eq!(server_of(None), "docker.io");
        assert_eq!(server_of(Some("https://index.docker.io/v1/")), "docker.io");
        assert_eq!(server_of(Some("localhost:5000")), "localhost:5000");
        assert_eq!(server_of(Some("https://ghcr.io")), "ghcr.io");
    }
}

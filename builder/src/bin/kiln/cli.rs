//! Every flag of the `kiln` command line, defined once (clap derive). Help
//! text comes from here; the dispatch lives in `main.rs`.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub use kiln_builder::engine::{NetworkArg, PullPolicy};

#[derive(Debug, Parser)]
#[command(
    name = "kiln",
    version,
    about = "A daemonless Dockerfile build engine with a content-addressed cache",
    propagate_version = true
)]
pub struct Cli {
    /// Root of kiln's state (default: /var/lib/kiln as root, else $XDG_DATA_HOME/kiln).
    #[arg(long, global = true, env = "KILN_ROOT", value_name = "DIR")]
    pub root: Option<PathBuf>,

    #[command(flatten)]
    pub registry: RegistryFlags,

    #[command(flatten)]
    pub limits: LayerLimitFlags,

    #[command(subcommand)]
    pub command: Command,
}

/// Bounds on unpacking one layer (pulled, loaded, FROM, ADD of an archive).
#[derive(Debug, Clone, clap::Args)]
pub struct LayerLimitFlags {
    /// Most bytes one layer may expand to, e.g. 20GB (default: 90% of the store's free space, at most 256GiB).
    #[arg(long, global = true, env = "KILN_MAX_LAYER_SIZE", value_name = "SIZE")]
    pub max_layer_size: Option<String>,
    /// Most entries (files, directories, links) one layer may hold (default: 10000000).
    #[arg(long, global = true, env = "KILN_MAX_LAYER_ENTRIES", value_name = "N")]
    pub max_layer_entries: Option<u64>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build an image from a Dockerfile and a context directory.
    Build(BuildArgs),
    /// Parse a Dockerfile and print its syntax tree.
    Parse(ParseArgs),
    /// List images.
    Images(ImagesArgs),
    /// Remove images.
    Rmi(RmiArgs),
    /// Create a tag TARGET that refers to SOURCE.
    Tag { source: String, target: String },
    /// Show containers (state, limits, cgroups) or images (configuration and manifest) as JSON.
    Inspect {
        /// Show the attestations (SBOM, provenance) attached to each image instead: their in-toto statements.
        #[arg(long)]
        attestations: bool,
        /// The image of this platform (os/arch[/variant]) of a multi-platform index (default: the host's).
        #[arg(long)]
        platform: Option<String>,
        /// Containers or images; a container's name wins, as with docker.
        images: Vec<String>,
    },
    /// Show the history of an image.
    History(HistoryArgs),
    /// List the packages in an image as an SPDX 2.3 SBOM (read from its layers; nothing runs).
    Sbom(SbomArgs),
    /// Save images to a docker-archive or OCI layout tarball.
    Save(SaveArgs),
    /// Load images from a docker-archive or OCI layout tarball.
    Load(LoadArgs),
    /// Import a root filesystem tarball as a one-layer image.
    Import(ImportArgs),
    /// Run a command in a new container.
    Run(RunArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// List containers.
    Ps(PsArgs),
    /// Stop running containers.
    Stop(StopArgs),
    /// Remove containers.
    Rm(RmArgs),
    /// Fetch the logs of a container.
    Logs(LogsArgs),
    /// Show the running processes of a container.
    Top(TopArgs),
    /// List a container's published ports, or the host address of one.
    Port(PortArgs),
    /// Copy files between a running container and the host.
    Cp(CpArgs),
    /// Manage volumes (kept in the store).
    Volume {
        #[command(subcommand)]
        command: VolumeCommand,
    },
    /// Inspect and manage the build cache.
    Cache {
        #[command(subcommand)]
        command: CacheCommand,
    },
    /// Manage kiln's state.
    System {
        #[command(subcommand)]
        command: SystemCommand,
    },
    /// Pull an image from a registry.
    Pull(PullArgs),
    /// Push an image to a registry.
    Push(PushArgs),
    /// Log in to a registry (credentials go to ~/.docker/config.json or its credential helper).
    Login(LoginArgs),
    /// Log out from a registry.
    Logout(LogoutArgs),
}

/// How kiln reaches registries; global, like dockerd's own settings.
#[derive(Debug, Args)]
pub struct RegistryFlags {
    /// A registry (host[:port]) that may be used over plain http or with an unverified certificate (repeatable; loopback addresses may always use http).
    #[arg(
        long = "insecure-registry",
        global = true,
        env = "KILN_INSECURE_REGISTRIES",
        value_delimiter = ',',
        value_name = "HOST[:PORT]"
    )]
    pub insecure_registries: Vec<String>,
    /// A PEM file of CA certificates trusted for registries besides the system's (repeatable).
    #[arg(
        long = "ca-file",
        global = true,
        env = "KILN_CA_FILE",
        value_delimiter = ',',
        value_name = "PEM"
    )]
    pub ca_files: Vec<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PushCompression {
    Gzip,
    Zstd,
}

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Platform of the image to pull from a multi-platform index (default: the host's, linux/amd64 here).
    #[arg(long, value_name = "OS/ARCH[/VARIANT]")]
    pub platform: Option<String>,
    /// Print only the reference pulled.
    #[arg(short, long)]
    pub quiet: bool,
    /// NAME[:TAG|@DIGEST]
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct PushArgs {
    /// Layer compression in the registry: gzip (every client reads it) or zstd (the store's own, no conversion).
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: PushCompression,
    /// Upload layers in chunks of this size (e.g. 16MB) instead of one request each (for proxies that limit request bodies).
    #[arg(long, value_name = "SIZE")]
    pub chunk_size: Option<String>,
    /// Print only the manifest digest.
    #[arg(short, long)]
    pub quiet: bool,
    /// NAME[:TAG]
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct LoginArgs {
    #[arg(short, long)]
    pub username: Option<String>,
    /// The password (visible in the process list: prefer --password-stdin).
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from stdin.
    #[arg(long)]
    pub password_stdin: bool,
    /// The registry (default: docker.io).
    pub server: Option<String>,
}

#[derive(Debug, Args)]
pub struct LogoutArgs {
    /// The registry (default: docker.io).
    pub server: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Progress {
    Auto,
    Plain,
    Tty,
}

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Name and optionally a tag in the name:tag format (repeatable).
    #[arg(short = 't', long = "tag", value_name = "NAME:TAG")]
    pub tags: Vec<String>,
    /// Name of the Dockerfile (default: CONTEXT/Dockerfile; `-` reads stdin).
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<String>,
    /// Set a build-time variable (`K=V`, or `K` to take it from the environment).
    #[arg(long = "build-arg", value_name = "K[=V]")]
    pub build_args: Vec<String>,
    /// Build the stage with this name and what it needs, not the last one.
    #[arg(long)]
    pub target: Option<String>,
    /// Platforms to build for (os/arch[/variant], comma-separated or repeated: linux/amd64,linux/arm64); foreign ones run under QEMU emulation. Several make one image index.
    #[arg(long = "platform", value_name = "PLATFORMS")]
    pub platforms: Vec<String>,
    /// Do not use the cache (results are still recorded).
    #[arg(long)]
    pub no_cache: bool,
    /// When to pull base images: `missing` (those not in the local store), `always` (every base, to get the tag's latest), `never`.
    #[arg(long, value_enum, default_value = "missing")]
    pub pull: PullPolicy,
    /// Network mode for RUN instructions (`default`: own namespace with
    /// outbound access, the host's loopback unreachable).
    #[arg(long, value_enum, default_value = "default")]
    pub network: NetworkArg,
    /// `seccomp=unconfined`: RUN steps without the default syscall filter (for the rare step that needs a call it denies).
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Type of progress output.
    #[arg(long, value_enum, default_value = "auto")]
    pub progress: Progress,
    /// Write the image ID to this file.
    #[arg(long, value_name = "FILE")]
    pub iidfile: Option<PathBuf>,
    /// Set metadata for the image (repeatable).
    #[arg(long = "label", value_name = "K=V")]
    pub labels: Vec<String>,
    /// Secret to expose to RUN --mount=type=secret: `id=ID,src=PATH` or `id=ID,env=VAR`.
    #[arg(long = "secret", value_name = "id=ID,src=PATH")]
    pub secrets: Vec<String>,
    /// SSH agent for RUN --mount=type=ssh: `default` ($SSH_AUTH_SOCK) or `ID=SOCKET` (repeatable).
    #[arg(long = "ssh", value_name = "default|ID[=SOCKET]")]
    pub ssh: Vec<String>,
    /// Output destination: type=local,dest=DIR | type=tar,dest=F | type=oci,dest=F | type=docker,dest=F.
    #[arg(short = 'o', long = "output", value_name = "SPEC")]
    pub outputs: Vec<String>,
    /// Export the build cache: type=local,dest=DIR[,mode=min|max] | type=registry,ref=REG/REPO:TAG[,mode=min|max] | type=inline (in the image config).
    #[arg(long = "cache-to", value_name = "SPEC")]
    pub cache_to: Option<String>,
    /// Import a build cache first (repeatable; the first source with a step's record wins): IMAGE (its inline cache) | type=local,src=DIR | type=registry,ref=REG/REPO:TAG (a kiln cache, or an image with an inline cache).
    #[arg(long = "cache-from", value_name = "SPEC")]
    pub cache_from: Vec<String>,
    /// Push the image to its registry under every -t tag after the build.
    #[arg(long)]
    pub push: bool,
    /// Layer compression for --push.
    #[arg(long, value_enum, default_value = "gzip")]
    pub compression: PushCompression,
    /// Attach an SBOM attestation (SPDX 2.3 of the image's packages): `--sbom=true`.
    #[arg(long, value_name = "true|false")]
    pub sbom: Option<String>,
    /// Attach SLSA provenance v1: `--provenance=true`, `=mode=min|max[,builder-id=URL]`.
    #[arg(long, value_name = "OPTS")]
    pub provenance: Option<String>,
    /// Attestations, buildx's long form: `type=sbom`, `type=provenance[,mode=min|max]` (repeatable).
    #[arg(long = "attest", value_name = "type=...")]
    pub attest: Vec<String>,
    /// Fix every timestamp: SOURCE_DATE_EPOCH as given, else the context's last git commit time, else 0.
    #[arg(long)]
    pub reproducible: bool,
    /// Implies --reproducible; then build again in a fresh root without cache and fail, naming the first difference, unless the image is the same.
    #[arg(long)]
    pub check_reproducible: bool,
    /// After the build, explain every step that was not a cache hit.
    #[arg(long)]
    pub explain: bool,
    /// How many stages may run at once (default: the number of cores).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_parallelism: Option<u32>,
    /// Suppress the build output and print the image ID on success.
    #[arg(short = 'q', long)]
    pub quiet: bool,
    /// Context directory (`-` for none: the Dockerfile is read from stdin).
    pub context: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ParseFormat {
    Json,
    Sexpr,
}

#[derive(Debug, Args)]
pub struct ParseArgs {
    /// Output format: `sexpr` is BuildKit's test format, `json` the full tree with spans.
    #[arg(long, value_enum, default_value = "json")]
    pub format: ParseFormat,
    /// The Dockerfile to parse.
    #[arg(short = 'f', long = "file", value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// A Dockerfile, or a directory holding one (default: ./Dockerfile).
    pub path: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ListFormat {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Only show image IDs.
    #[arg(short, long)]
    pub quiet: bool,
    #[arg(long, value_enum, default_value = "table")]
    pub format: ListFormat,
}

#[derive(Debug, Args)]
pub struct RmiArgs {
    /// Remove the image even if it is tagged several times.
    #[arg(short, long)]
    pub force: bool,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct HistoryArgs {
    /// Do not truncate output.
    #[arg(long)]
    pub no_trunc: bool,
    pub image: String,
}

#[derive(Debug, Args)]
pub struct ImportArgs {
    /// The platform the tarball's programs are for (os/arch[/variant]; default: this machine's).
    #[arg(long, value_name = "PLATFORM")]
    pub platform: Option<String>,
    pub file: PathBuf,
    pub reference: String,
}

#[derive(Debug, Args)]
pub struct SbomArgs {
    /// Document format: the SPDX document, or the in-toto statement around it (what BuildKit attaches with --sbom).
    #[arg(long, value_enum, default_value = "spdx-json")]
    pub format: SbomFormat,
    /// Write to FILE instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    pub image: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SbomFormat {
    SpdxJson,
    InToto,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SaveFormat {
    Docker,
    Oci,
}

#[derive(Debug, Args)]
pub struct SaveArgs {
    /// Write to a file instead of stdout.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    #[arg(long, value_enum, default_value = "docker")]
    pub format: SaveFormat,
    #[arg(required = true)]
    pub images: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LoadArgs {
    /// Read from a file instead of stdin.
    #[arg(short, long)]
    pub input: Option<PathBuf>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RunNetwork {
    Host,
    None,
    /// Own namespace with outbound access; published ports proxied in.
    #[value(alias = "default")]
    Private,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Run in the background and print the container ID.
    #[arg(short, long)]
    pub detach: bool,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    /// The image of this platform of a multi-platform index (os/arch[/variant]; default: the host's); a foreign one runs under QEMU emulation.
    #[arg(long)]
    pub platform: Option<String>,
    /// Keep stdin open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short, long)]
    pub tty: bool,
    /// Assign a name to the container.
    #[arg(long)]
    pub name: Option<String>,
    /// Publish a container's port: [ip:]hostPort:containerPort[/tcp|udp].
    #[arg(short = 'p', long = "publish", value_name = "SPEC")]
    pub publish: Vec<String>,
    /// Set environment variables.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    /// Read environment variables from a file.
    #[arg(long = "env-file", value_name = "FILE")]
    pub env_file: Vec<PathBuf>,
    /// Working directory inside the container.
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// User name or UID, with optional group.
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Overwrite the image's ENTRYPOINT.
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Network mode (`private`: own namespace with outbound access, the host's
    /// loopback unreachable, published ports proxied in).
    #[arg(long, value_enum, default_value = "private")]
    pub network: RunNetwork,
    /// Container host name.
    #[arg(long)]
    pub hostname: Option<String>,
    /// `seccomp=unconfined`: run without the default syscall filter.
    #[arg(long = "security-opt", value_name = "OPT")]
    pub security_opt: Vec<String>,
    /// Memory limit (e.g. 512m, 1g; at least 6m).
    #[arg(short = 'm', long, value_name = "BYTES", allow_hyphen_values = true)]
    pub memory: Option<String>,
    /// Memory plus swap (default: twice --memory; -1: unlimited swap).
    #[arg(long = "memory-swap", value_name = "BYTES", allow_hyphen_values = true)]
    pub memory_swap: Option<String>,
    /// Number of CPUs (e.g. 1.5: a CFS quota of 150000 per 100000 µs).
    #[arg(long, value_name = "DECIMAL", allow_hyphen_values = true)]
    pub cpus: Option<String>,
    /// CPU shares, the relative weight (default 1024).
    #[arg(
        short = 'c',
        long = "cpu-shares",
        value_name = "INT",
        allow_hyphen_values = true
    )]
    pub cpu_shares: Option<String>,
    /// Maximum number of processes (-1: unlimited).
    #[arg(long = "pids-limit", value_name = "INT", allow_hyphen_values = true)]
    pub pids_limit: Option<String>,
    // --- restart and health (carried out by the container's monitor) ---
    /// Restart policy: no, on-failure[:max-retries], always, unless-stopped
    /// (docker's backoff: 100 ms doubling, reset after 10 s up). Needs -d.
    /// kiln has no daemon: nothing restarts containers after a host reboot,
    /// and a container whose monitor is killed ends with it, not restarted.
    /// `kiln stop` stops it for good.
    #[arg(long, value_name = "POLICY", default_value = "no")]
    pub restart: String,
    /// Command to run to check health (through /bin/sh -c, in the container).
    #[arg(long = "health-cmd", value_name = "CMD")]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h) (default 30s).
    #[arg(
        long = "health-interval",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub health_interval: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h) (default 30s).
    #[arg(
        long = "health-timeout",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub health_timeout: Option<String>,
    /// Consecutive failures needed to report unhealthy (default 3).
    #[arg(
        long = "health-retries",
        value_name = "INT",
        allow_hyphen_values = true
    )]
    pub health_retries: Option<String>,
    /// Start period for the container to initialize before failed checks count (ms|s|m|h).
    #[arg(
        long = "health-start-period",
        value_name = "DURATION",
        allow_hyphen_values = true
    )]
    pub health_start_period: Option<String>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long = "no-healthcheck")]
    pub no_healthcheck: bool,
    // --- end of restart and health ---
    /// Bind mount a host path or mount a named volume: [HOST-PATH|NAME:]CONTAINER-PATH[:ro].
    #[arg(short = 'v', long = "volume", value_name = "SPEC")]
    pub volume: Vec<String>,
    /// Attach a filesystem mount: type=bind|volume|tmpfs,source=...,target=...[,readonly].
    #[arg(long = "mount", value_name = "SPEC")]
    pub mount: Vec<String>,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct ExecArgs {
    /// Detached mode: run the command in the background (its output goes nowhere).
    #[arg(short, long)]
    pub detach: bool,
    /// Keep stdin open.
    #[arg(short, long)]
    pub interactive: bool,
    /// Allocate a pseudo-TTY.
    #[arg(short, long)]
    pub tty: bool,
    /// User name or UID, with optional group (default: the container's).
    #[arg(short = 'u', long = "user")]
    pub user: Option<String>,
    /// Working directory inside the container (default: the container's).
    #[arg(short = 'w', long = "workdir")]
    pub workdir: Option<String>,
    /// Set environment variables.
    #[arg(short = 'e', long = "env", value_name = "K=V")]
    pub env: Vec<String>,
    pub container: String,
    #[arg(required = true, trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PsArgs {
    /// Show all containers (default shows just running).
    #[arg(short, long)]
    pub all: bool,
    /// Only display container IDs.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct StopArgs {
    /// Seconds to wait before killing the container.
    #[arg(short = 't', long = "time", default_value_t = 10)]
    pub time: u64,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct RmArgs {
    /// Force the removal of a running container (uses SIGKILL).
    #[arg(short, long)]
    pub force: bool,
    /// Remove the anonymous volumes of the container (named volumes are kept).
    #[arg(short = 'v', long = "volumes")]
    pub volumes: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Debug, Args)]
pub struct LogsArgs {
    /// Follow log output.
    #[arg(short, long)]
    pub follow: bool,
    /// Show timestamps.
    #[arg(short, long)]
    pub timestamps: bool,
    /// Show logs since a time (2026-12-07T10:00:00Z, a Unix time) or for a duration before now (42m).
    #[arg(long, value_name = "TIME")]
    pub since: Option<String>,
    /// Show logs before a time (2026-12-07T10:00:00Z, a Unix time) or a duration before now (42m).
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    /// Number of lines to show from the end of the logs ("all" for every line).
    #[arg(short = 'n', long, value_name = "N", default_value = "all")]
    pub tail: String,
    pub container: String,
}

#[derive(Debug, Args)]
pub struct TopArgs {
    pub container: String,
    /// Options for the host's ps (default: -ef).
    #[arg(
        trailing_var_arg = true,
        allow_hyphen_values = true,
        value_name = "PS OPTIONS"
    )]
    pub ps_options: Vec<String>,
}

#[derive(Debug, Args)]
pub struct PortArgs {
    pub container: String,
    /// A container port, PORT or PORT/PROTO (default: every published one).
    #[arg(value_name = "PRIVATE_PORT[/PROTO]")]
    pub port: Option<String>,
}

#[derive(Debug, Args)]
pub struct CpArgs {
    /// Archive mode: keep the files' owners (uid/gid).
    #[arg(short, long)]
    pub archive: bool,
    /// Always follow a symbolic link given as SRC_PATH.
    #[arg(short = 'L', long = "follow-link")]
    pub follow_link: bool,
    /// Print nothing on success.
    #[arg(short, long)]
    pub quiet: bool,
    /// CONTAINER:SRC_PATH or a host path.
    #[arg(value_name = "SRC")]
    pub src: String,
    /// A host path or CONTAINER:DEST_PATH.
    #[arg(value_name = "DEST")]
    pub dest: String,
}

#[derive(Debug, Subcommand)]
pub enum CacheCommand {
    /// List the build cache records.
    Ls {
        #[arg(long, value_enum, default_value = "table")]
        format: ListFormat,
        /// Keep only some records: image=NAME, stage=NAME, until=DURATION (e.g. 24h: not used since).
        #[arg(long = "filter", value_name = "KEY=VALUE")]
        filters: Vec<String>,
    },
    /// Show the space used by the build cache, shared and exclusive.
    Du,
    /// Explain why the steps of an image's last build, or a cache record, missed the cache.
    Why {
        /// An image (name:tag or ID) or a cache key prefix (from `cache ls`).
        target: String,
    },
    /// Remove build cache, least recently used first (never layers of tagged images).
    Prune {
        /// Remove every cache record and every cache mount.
        #[arg(short, long)]
        all: bool,
        /// Keep at most this much cache (e.g. 10GB, 500MB).
        #[arg(long, value_name = "SIZE")]
        keep_storage: Option<String>,
        /// until=DURATION: only records not used for that long (e.g. 24h).
        #[arg(long = "filter", value_name = "until=DURATION")]
        filters: Vec<String>,
        /// Prune the kiln caches of a registry repository instead (REGISTRY/REPO): keep the --keep N built most recently, delete the other cache tags and what only they name.
        #[arg(long, value_name = "REGISTRY/REPO")]
        registry: Option<String>,
        /// With --registry: how many cache tags to keep (the newest by their newest record).
        #[arg(long, value_name = "N")]
        keep: Option<usize>,
        /// With --registry: say what would be deleted, delete nothing.
        #[arg(long)]
        dry_run: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum VolumeCommand {
    /// Create a volume (a random name when none is given).
    Create {
        name: Option<String>,
        /// Set metadata for a volume (KEY=VALUE).
        #[arg(long = "label", value_name = "KEY=VALUE")]
        labels: Vec<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        /// Only display volume names.
        #[arg(short, long)]
        quiet: bool,
    },
    /// Display detailed information on one or more volumes.
    Inspect {
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove one or more volumes (never one a container uses).
    #[command(alias = "remove")]
    Rm {
        /// Do not report volumes that do not exist.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove all volumes not used by at least one container.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SystemCommand {
    /// Show disk usage.
    Df,
    /// Check the store: rehash blobs, check every reference.
    Fsck {
        /// Fix what can be fixed.
        #[arg(long)]
        repair: bool,
    },
    /// Remove unreferenced blobs, snapshots and cache records.
    Prune {
        /// Also remove the cache of every build.
        #[arg(short, long)]
        all: bool,
    },
}

//! Command-line arguments (clap).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::output::exit;

/// Where the config is read from when neither `--config` nor `IMAGE_SYNC_CONFIG` is set
/// (the CronJob mounts its ConfigMap there).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/image-sync/config.yaml";

/// Keeps a container image cache registry filled with exactly the configured images,
/// copying only when the upstream digest differs from the cached one.
#[derive(Debug, Parser)]
#[command(name = "image-sync", version, about, after_help = exit::HELP)]
pub struct Cli {
    /// The config file.
    #[arg(long, global = true, value_name = "PATH", env = "IMAGE_SYNC_CONFIG", default_value = DEFAULT_CONFIG_PATH)]
    pub config: PathBuf,

    /// Check digests and report what would be copied; write nothing to the cache.
    #[arg(long)]
    pub dry_run: bool,

    /// Validate the config, print the resolved plan to stderr and exit, without touching
    /// any registry.
    #[arg(long, conflicts_with = "dry_run")]
    pub check: bool,

    /// Stop starting new images this many seconds after the start (overrides
    /// `settings.run_deadline_secs`); images not reached are reported as `deferred`.
    #[arg(long, value_name = "SECS", value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub deadline: Option<u64>,

    /// Write the run's metrics (Prometheus text format) to this file, atomically.
    #[arg(long, value_name = "PATH")]
    pub metrics_file: Option<PathBuf>,

    /// Push the run's metrics to this Pushgateway (`http://host:9091`; overrides
    /// `settings.pushgateway`). A failed push is a warning, never a failed run.
    #[arg(long, value_name = "URL", env = "IMAGE_SYNC_PUSHGATEWAY")]
    pub pushgateway: Option<String>,

    /// Run only shard INDEX of COUNT (INDEX from 0): each image belongs to exactly one
    /// shard, by a fixed hash of its source, tag and cache target.
    #[arg(long, value_name = "INDEX/COUNT", value_parser = crate::input::shard::parse, conflicts_with = "shard_count")]
    pub shard: Option<crate::input::shard::Shard>,

    /// Split the images into COUNT shards and run the one named by `JOB_COMPLETION_INDEX`
    /// (set in each pod of a Kubernetes Indexed Job). With `--check`: print the partition.
    #[arg(long, value_name = "COUNT", value_parser = crate::input::shard::parse_count)]
    pub shard_count: Option<u32>,

    /// Also list the cluster's workloads (read-only) and report the images the config does
    /// not cover (as `settings.coverage: cluster`).
    #[arg(long, env = "IMAGE_SYNC_COVERAGE")]
    pub coverage: bool,

    /// Take the Kubernetes Lease NAME (coordination.k8s.io, the pod's namespace) before
    /// copying: while another run holds it, this run copies nothing and exits 0 with the
    /// reason in the report's `lease`. Shards of one run share the holder named by
    /// `IMAGE_SYNC_LEASE_HOLDER`; a crashed run's lease expires after 60 s.
    #[arg(long, value_name = "NAME", env = "IMAGE_SYNC_LEASE", value_parser = crate::cluster::lease::parse_name)]
    pub lease: Option<String>,

    /// Log format on stderr (the filter comes from RUST_LOG, default `info`).
    #[arg(long, value_enum, default_value_t = LogFormat::Text, value_name = "FORMAT")]
    pub log_format: LogFormat,

    /// Without a subcommand, image-sync syncs (the flags above).
    #[command(subcommand)]
    pub command: Option<Command>,
}

/// Subcommands other than the sync itself.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Write containerd `hosts.toml` mirror files, one per upstream registry of the config
    /// (and one for the cache's own address), so that nodes pull from the cache.
    HostsToml(HostsTomlArgs),
    /// Print the config file's JSON Schema (draft 2020-12) on stdout, for editors
    /// (`# yaml-language-server: $schema=...`) and CI checks.
    ConfigSchema,
    /// Print a shell completion script on stdout (`image-sync completions bash >
    /// /etc/bash_completion.d/image-sync`).
    Completions(CompletionsArgs),
    /// Print the man page (roff) on stdout (`image-sync man > image-sync.1`).
    Man,
    /// Print the images that workloads pull, from manifests (`kustomize build ... |
    /// image-sync discover --manifests -`) and/or the live cluster; with `--against`, which
    /// of them the config's cache would not serve. Exit 0 done (with `--against`: all
    /// covered), 1 an invalid reference (with `--against`: or an uncovered image), 2 usage,
    /// config or input error.
    Discover(DiscoverArgs),
    /// Delete from the cache the tags image-sync wrote that the config no longer lists
    /// (a dry run unless `--apply`); prints `{"prune": ...}` on stdout.
    Prune(PruneArgs),
}

/// `image-sync discover`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("sources").required(true).multiple(true).args(["manifests", "cluster"])))]
pub struct DiscoverArgs {
    /// A manifest file, a directory (recursive `*.yaml`, `*.yml`, `*.json`), or `-` for
    /// stdin; repeatable.
    #[arg(long, value_name = "PATH")]
    pub manifests: Vec<PathBuf>,

    /// List the live cluster's workloads (read-only), through `--kubeconfig`, else
    /// `KUBECONFIG` (or `~/.kube/config`), else the in-cluster service account.
    #[arg(long)]
    pub cluster: bool,

    /// The kubeconfig for `--cluster`.
    #[arg(long, value_name = "PATH", requires = "cluster")]
    pub kubeconfig: Option<PathBuf>,

    /// Only this namespace (repeatable); every namespace by default.
    #[arg(long, value_name = "NS", requires = "cluster")]
    pub namespace: Vec<String>,

    /// Check the images against this config: print `{"uncovered", "unused", "invalid"}` and
    /// exit 1 when an image is not covered.
    #[arg(long, value_name = "CONFIG")]
    pub against: Option<PathBuf>,

    /// Output format (ignored with `--against`).
    #[arg(long, value_enum, default_value_t = crate::discover::format::Format::List, value_name = "FORMAT")]
    pub format: crate::discover::format::Format,

    /// Objects per list request to the API server.
    #[arg(long, value_name = "N", hide = true, default_value_t = crate::discover::cluster::DEFAULT_PAGE_SIZE, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub page_size: u32,
}

/// `image-sync prune`.
#[derive(Debug, Args)]
pub struct PruneArgs {
    /// Delete (without it, only report what would be deleted).
    #[arg(long)]
    pub apply: bool,

    /// Above this many tags to delete, nothing is deleted and the exit code is 1.
    #[arg(long, value_name = "N", default_value_t = crate::run::prune::DEFAULT_MAX_DELETIONS)]
    pub max_deletions: u32,
}

/// `image-sync completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    pub shell: CompletionShell,
}

/// The shells `image-sync completions` writes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum CompletionShell {
    /// GNU bash.
    Bash,
    /// zsh.
    Zsh,
    /// fish.
    Fish,
}

/// The text of a generated document about the command line itself: a completion script or
/// the man page. Generated into memory so that a closed stdout is a write error to report,
/// not a panic inside a generator.
pub fn generated_text(command: &Command) -> Option<Vec<u8>> {
    use clap::CommandFactory;
    let mut out = Vec::new();
    match command {
        Command::Completions(args) => {
            let shell = match args.shell {
                CompletionShell::Bash => clap_complete::Shell::Bash,
                CompletionShell::Zsh => clap_complete::Shell::Zsh,
                CompletionShell::Fish => clap_complete::Shell::Fish,
            };
            clap_complete::generate(shell, &mut Cli::command(), "image-sync", &mut out);
        }
        Command::Man => clap_mangen::Man::new(Cli::command())
            .render(&mut out)
            .ok()?,
        Command::HostsToml(_)
        | Command::ConfigSchema
        | Command::Discover(_)
        | Command::Prune(_) => return None,
    }
    Some(out)
}

/// `image-sync hosts-toml`.
#[derive(Debug, Args)]
pub struct HostsTomlArgs {
    /// The cache as nodes reach it: `http://ADDR:PORT` with the Service's ClusterIP or a
    /// node address (nodes do not resolve cluster DNS names).
    #[arg(long, value_name = "URL")]
    pub mirror: String,

    /// Where to write `<registry>/hosts.toml` (containerd's `config_path`, usually
    /// `/etc/containerd/certs.d`).
    #[arg(long, value_name = "DIR")]
    pub dir: PathBuf,

    /// Make the cache the only registry nodes ask: a pull the cache cannot serve fails
    /// instead of going to the upstream with the node's own quota.
    #[arg(long)]
    pub fail_closed: bool,
}

/// How logs are written to stderr.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line, for cluster log pipelines.
    Json,
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn check_and_dry_run_exclude_each_other() {
        assert!(Cli::try_parse_from(["image-sync", "--check", "--dry-run"]).is_err());
        let cli = Cli::try_parse_from(["image-sync", "--config", "x.yaml", "--log-format", "json"])
            .expect("parses");
        assert_eq!(
            (cli.config, cli.log_format),
            (PathBuf::from("x.yaml"), LogFormat::Json)
        );
        assert!(cli.command.is_none());
    }

    #[test]
    fn hosts_toml_is_a_subcommand_that_takes_the_config_before_or_after_it() {
        for args in [
            &[
                "image-sync",
                "--config",
                "c.yaml",
                "hosts-toml",
                "--mirror",
                "http://10.0.0.1:5000",
                "--dir",
                "d",
            ][..],
            &[
                "image-sync",
                "hosts-toml",
                "--config",
                "c.yaml",
                "--mirror",
                "http://10.0.0.1:5000",
                "--dir",
                "d",
                "--fail-closed",
            ][..],
        ] {
            let cli = Cli::try_parse_from(args).expect("parses");
            assert_eq!(cli.config, PathBuf::from("c.yaml"));
            let Some(Command::HostsToml(hosts)) = cli.command else {
                panic!("no subcommand in {args:?}");
            };
            assert_eq!(
                (hosts.mirror.as_str(), hosts.dir),
                ("http://10.0.0.1:5000", PathBuf::from("d"))
            );
        }
        assert!(Cli::try_parse_from(["image-sync", "hosts-toml", "--dir", "d"]).is_err());
    }
}

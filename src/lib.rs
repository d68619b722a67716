//! image-sync: keeps a container image cache registry filled with exactly the configured
//! images, digest-first, so that unchanged images cost no upstream pull quota.
//!
//! [`run`] is the whole program: load and validate the config into a [`input::plan::Plan`], find
//! the tools, sync every image, print the [`output::report::Report`], and return the exit code.

pub mod cluster;
pub mod input;
pub mod nodes;
pub mod output;
pub mod process;
pub mod registry;
pub mod resources;
pub mod run;
pub mod tls;

use std::sync::Arc;

use crate::input::cli::{self, Cli};
use crate::input::plan::{self, Plan};
use crate::input::{config, reference, shard};
use crate::output::report::Report;
use crate::output::{exit, metrics};
use crate::registry::{Toolbox, docker_hub};
use crate::run::{coordination, partition, signals, sync, tag_listing};
use crate::tls::TlsPolicy;

/// The subcommands that print a document generated from image-sync's own definitions (the
/// config schema, completions, the man page) and need no config; `None` for the others.
fn print_generated(command: &cli::Command) -> Option<u8> {
    use std::io::Write as _;
    let text = match command {
        cli::Command::ConfigSchema => {
            let mut text = serde_json::to_vec_pretty(&input::schema::config_schema()).ok()?;
            text.push(b'\n');
            text
        }
        other => cli::generated_text(other)?,
    };
    let mut stdout = std::io::stdout().lock();
    match stdout.write_all(&text).and_then(|()| stdout.flush()) {
        Ok(()) => Some(exit::SUCCESS),
        // `| head` closing the pipe early is the reader's choice, not a failure.
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => Some(exit::SUCCESS),
        Err(err) => {
            tracing::error!("cannot write to stdout: {err}");
            Some(exit::IMAGES_FAILED)
        }
    }
}

/// Runs image-sync with parsed arguments and returns the process exit code.
pub fn run(cli: &Cli) -> u8 {
    if let Some(command) = &cli.command
        && let Some(code) = print_generated(command)
    {
        return code;
    }
    let plan = match load_plan(cli) {
        Ok(plan) => plan,
        Err(message) => {
            tracing::error!("{message}");
            return exit::USAGE;
        }
    };
    if let Some(cli::Command::HostsToml(args)) = &cli.command {
        return nodes::run(&plan, args);
    }
    if cli.check {
        tracing::info!("{}", describe_plan(&plan));
        if !plan.selections.is_empty() {
            tracing::info!("{}", tag_listing::describe(&plan));
        }
        if let Some(count) = cli.shard_count.or(cli.shard.map(|shard| shard.count)) {
            tracing::info!("{}", partition::describe_partition(&plan, count));
        }
        return exit::SUCCESS;
    }
    let sharding = shard::select(
        cli.shard,
        cli.shard_count,
        std::env::var(shard::INDEX_VAR).ok().as_deref(),
    );
    let shard = match sharding {
        Ok(shard) => shard,
        Err(message) => {
            tracing::error!("{message}");
            return exit::USAGE;
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            tracing::error!("cannot start the async runtime: {err}");
            return exit::IMAGES_FAILED;
        }
    };
    runtime.block_on(sync_and_report(&plan, cli, shard))
}

fn load_plan(cli: &Cli) -> Result<Plan, String> {
    let raw = config::load(&cli.config).map_err(|err| format!("invalid config {err}"))?;
    let mut plan = plan::resolve(raw, &cli.config).map_err(|err| err.to_string())?;
    if let Some(secs) = cli.deadline {
        plan.settings.run_deadline = Some(std::time::Duration::from_secs(secs));
    }
    // At --check and at the start of a run: crane would go anonymous without a word.
    if let Some(warning) = docker_hub::check_docker_config() {
        tracing::warn!("{warning}");
    }
    Ok(plan)
}

async fn sync_and_report(plan: &Plan, cli: &Cli, shard: Option<shard::Shard>) -> u8 {
    let mut plan = plan.clone();
    let plan = &mut plan;
    let dry_run = cli.dry_run;
    let started_at = std::time::SystemTime::now();
    let started = std::time::Instant::now();
    // Before any registry request: another run holding the cache means no copies at all.
    let (lease, renewal) = match cli.lease.as_deref() {
        None => (None, None),
        Some(name) => match coordination::acquire(name).await {
            coordination::Decision::Sync(lease, renewal) => (Some(lease), Some(renewal)),
            coordination::Decision::Skip(lease) => return skipped_run(plan, dry_run, shard, lease),
        },
    };
    let (cancel_tx, cancel) = tokio::sync::watch::channel(false);
    if let Err(err) = signals::listen(cancel_tx) {
        tracing::warn!("cannot listen for SIGINT/SIGTERM: {err}");
    }
    let toolbox = Arc::new(
        Toolbox::discover(
            tls_policy(plan).await,
            plan.settings.digest_check,
            &plan.cache_host,
            plan.settings.quota_reserve,
        )
        .await,
    );
    // Tag rules first (each shard lists every entry: listings are not pulls), then the
    // shard, so that each selected tag belongs to exactly one shard.
    let (tag_lists, mut unlisted) = tag_listing::expand(plan, &toolbox, &cancel).await;
    if let Some(shard) = shard {
        let total = plan.jobs.len();
        partition::restrict(plan, shard);
        unlisted.retain(|(index, _)| {
            plan.selections
                .iter()
                .find(|selection| selection.template.index == *index)
                .is_some_and(|selection| shard.owns(&selection.template))
        });
        tracing::info!(shard = %shard, images = plan.jobs.len(), of = total, "this run syncs one shard");
    }
    announce(plan, &toolbox, dry_run);
    // Token requests then cover the repositories the next checks need (16 scopes each).
    toolbox.expect(plan.jobs.iter().flat_map(|job| [&job.target, &job.source]));

    let synced = sync::sync_all(plan, &toolbox, dry_run, &cancel).await;
    sync::refresh_quota(plan, &synced, &toolbox, &cancel).await;
    let results = tag_listing::merge_in_config_order(plan, synced, unlisted);
    let ledger = toolbox.ledger();
    let (quota, requests, limits) = (ledger.report(), ledger.requests(), ledger.limits());
    // Closes pooled connections, so that the descriptors counted below are leaks only.
    drop(toolbox);
    let mut report = Report::new(&plan.cache_registry, dry_run, results);
    report.quota = quota;
    report.shard = shard;
    report.tag_lists = tag_lists;
    report.lease = lease;
    if let Some(renewal) = renewal {
        renewal.finish(shard.is_none()).await;
    }
    let pretty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    report.print(&mut std::io::stdout().lock(), pretty);
    for (registry, (heads, gets)) in &requests {
        match report.quota.get(registry) {
            Some(quota) => tracing::info!(
                registry = %registry,
                manifest_heads = heads,
                manifest_gets = gets,
                limit = quota.limit,
                remaining_at_start = quota.remaining_at_start,
                remaining_at_end = quota.remaining_at_end,
                reserve = quota.reserve,
                "upstream quota"
            ),
            None => {
                tracing::info!(registry = %registry, manifest_heads = heads, manifest_gets = gets, "upstream requests (no rate limit reported)")
            }
        }
    }
    tracing::info!(
        pulled = report.summary.pulled,
        already_cached = report.summary.already_cached,
        would_pull = report.summary.would_pull,
        failed = report.summary.failed,
        deferred = report.summary.deferred,
        total = report.summary.total,
        processes = process::spawned_count(),
        peak_rss_kib = resources::peak_rss_kib().unwrap_or(0),
        open_fds = resources::open_fds().unwrap_or(0),
        live_children = resources::live_children().unwrap_or(0),
        "run finished"
    );
    let code = signals::interrupted_exit_code()
        .unwrap_or_else(|| exit::for_report(&report, plan.settings.skip_on_error));
    let figures = metrics::RunFigures {
        report: &report,
        exit_code: code,
        started: started_at,
        duration: started.elapsed(),
        requests,
        limits,
        interrupted: signals::interrupted_exit_code().is_some(),
    };
    let pushgateway = cli
        .pushgateway
        .as_deref()
        .or(plan.settings.pushgateway.as_deref())
        // An empty variable (an empty ConfigMap key) means "not set".
        .filter(|url| !url.trim().is_empty());
    metrics::publish(&figures, cli.metrics_file.as_deref(), pushgateway).await;
    code
}

/// A run that copied nothing because of the lease: its report (no results, `lease` says
/// why), success when another run holds the cache, a failure when the lease could not be
/// asked for. No metrics are pushed: the run holding the lease reports the cache's state.
fn skipped_run(
    plan: &Plan,
    dry_run: bool,
    shard: Option<shard::Shard>,
    lease: coordination::LeaseReport,
) -> u8 {
    let code = if lease.outcome == "held" {
        exit::SUCCESS
    } else {
        exit::IMAGES_FAILED
    };
    let mut report = Report::new(&plan.cache_registry, dry_run, Vec::new());
    report.shard = shard;
    report.lease = Some(lease);
    let pretty = std::io::IsTerminal::is_terminal(&std::io::stdout());
    report.print(&mut std::io::stdout().lock(), pretty);
    code
}

/// The TLS policy, with the cache's address when a listed cache host resolves to an
/// address crane speaks plain HTTP to (so copies can go through crane without
/// `--insecure`, which would also weaken TLS towards the upstream).
async fn tls_policy(plan: &Plan) -> TlsPolicy {
    let policy = TlsPolicy::new(plan.settings.insecure_registries.clone());
    if !policy.is_listed(&plan.cache_host) || tls::crane_speaks_http(&plan.cache_host) {
        return policy;
    }
    let (name, port) = reference::split_port(&plan.cache_host);
    let port: u16 = port.and_then(|p| p.parse().ok()).unwrap_or(443);
    let lookup = tokio::time::timeout(
        plan.settings.check_timeout,
        tokio::net::lookup_host((name, port)),
    )
    .await;
    let addresses: Vec<_> = match lookup {
        Ok(Ok(addresses)) => addresses.map(|a| a.ip()).collect(),
        _ => Vec::new(),
    };
    // Only when every address qualifies: a literal must reach the same registry the name does.
    match addresses.first() {
        Some(&first) if addresses.iter().all(|&ip| tls::is_plain_http_literal(ip)) => {
            policy.with_cache_address(&plan.cache_host, first)
        }
        _ => policy,
    }
}

fn announce(plan: &Plan, toolbox: &Toolbox, dry_run: bool) {
    let listed: Vec<&str> = toolbox.tls().listed().collect();
    if !listed.is_empty() {
        tracing::info!(registries = ?listed, "treated as insecure (plain HTTP or unverified TLS): only these");
    }
    match (toolbox.crane(), toolbox.skopeo()) {
        (Some(_), _) => {}
        (None, Some(_)) => tracing::warn!(
            "crane is not on PATH (looked in {}): copies go through skopeo, and the digest checks image-sync cannot do itself (credential helpers, unusual answers) go through `skopeo inspect --raw`, manifest GETs that spend pull quota (Docker Hub counts each one) where crane's HEADs spend none. Install crane ({CRANE_INSTALL}) or add its directory to PATH",
            path_dirs()
        ),
        (None, None) => tracing::error!(
            "neither crane nor skopeo is on PATH (looked in {}): every image will fail. Install crane ({CRANE_INSTALL}) or add its directory to PATH",
            path_dirs()
        ),
    }
    tracing::info!(
        images = plan.jobs.len(),
        concurrency = plan.settings.concurrency,
        check_concurrency = plan.settings.check_concurrency,
        dry_run,
        cache = %plan.cache_registry,
        "starting sync"
    );
}

/// How to get crane, for the warnings when it is missing.
const CRANE_INSTALL: &str = "`go install github.com/google/go-containerregistry/cmd/crane@v0.22.1`, or a release binary from github.com/google/go-containerregistry/releases";

/// The PATH directories the tools were looked up in, for the warnings when one is missing.
fn path_dirs() -> String {
    let dirs: Vec<String> = std::env::var_os("PATH")
        .map(|path| {
            std::env::split_paths(&path)
                .map(|dir| reference::shorten(&dir.to_string_lossy()))
                .collect()
        })
        .unwrap_or_default();
    if dirs.is_empty() {
        "PATH is empty or unset".to_owned()
    } else {
        dirs.join(":")
    }
}

/// The resolved plan, one image per line, for `--check`.
pub fn describe_plan(plan: &Plan) -> String {
    let settings = &plan.settings;
    let mut text = format!(
        "config {} is valid: {} image(s) into {} (concurrency {}, check concurrency {}, retries {}, pull timeout {} s, check timeout {} s, run deadline {}, skip_on_error {}, digest check {})",
        plan.config_path.display(),
        plan.jobs.len(),
        plan.cache_registry,
        settings.concurrency,
        settings.check_concurrency,
        settings.retries,
        settings.pull_timeout.as_secs(),
        settings.check_timeout.as_secs(),
        settings
            .run_deadline
            .map_or_else(|| "none".to_owned(), |d| format!("{} s", d.as_secs())),
        settings.skip_on_error,
        match settings.digest_check {
            crate::registry::DigestCheck::Builtin => "builtin",
            crate::registry::DigestCheck::Crane => "crane",
        },
    );
    let reserve = match settings.quota_reserve {
        registry::quota::Reserve::Pulls(0) | registry::quota::Reserve::Percent(0) => {
            "off".to_owned()
        }
        registry::quota::Reserve::Pulls(pulls) => format!("{pulls} pulls"),
        registry::quota::Reserve::Percent(percent) => format!("{percent}% of each limit"),
    };
    let with_referrers = plan.jobs.iter().filter(|job| job.referrers).count();
    text.push_str(&format!(
        "
quota reserve: {reserve}; pushgateway: {}; referrers synced for {with_referrers} image(s){}",
        settings.pushgateway.as_deref().unwrap_or("none"),
        if settings.referrers_required {
            " (required)"
        } else {
            ""
        },
    ));
    if !settings.insecure_registries.is_empty() {
        let listed: Vec<&str> = settings
            .insecure_registries
            .iter()
            .map(String::as_str)
            .collect();
        text.push_str(&format!("\ninsecure registries: {}", listed.join(", ")));
    }
    for job in &plan.jobs {
        text.push_str(&format!(
            "\n  [{}] {} -> {}",
            job.index,
            job.source.with_tag(&job.tag),
            job.target.with_tag(&job.tag)
        ));
    }
    text
}

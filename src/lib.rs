//! image-sync: keeps a container image cache registry filled with exactly the configured
//! images, digest-first, so that unchanged images cost no upstream pull quota.
//!
//! [`run`] is the whole program: load and validate the config into a [`input::plan::Plan`], find
//! the tools, sync every image, print the [`output::report::Report`], and return the exit code.

pub mod cluster;
pub mod discover;
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
use crate::run::{coordination, partition, prune, signals, sync, tag_listing};
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
    if let Some(command) = &cli.command {
        if let Some(code) = print_generated(command) {
            return code;
        }
        if let cli::Command::Discover(args) = command {
            return discover::command::run(args);
        }
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
    if let Some(cli::Command::Prune(args)) = &cli.command {
        if cli.check {
            tracing::info!("{}", describe_plan(&plan));
            return exit::SUCCESS;
        }
        let options = prune::Options {
            apply: args.apply,
            max_deletions: args.max_deletions,
        };
        return match tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime.block_on(prune_only(&plan, options)),
            Err(err) => {
                tracing::error!("cannot start the async runtime: {err}");
                exit::IMAGES_FAILED
            }
        };
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
    runtime.block_on(sync_and_report(plan, cli, shard))
}

fn load_plan(cli: &Cli) -> Result<Plan, String> {
    let raw = config::load(&cli.config).map_err(|err| format!("invalid config {err}"))?;
    let mut plan = plan::resolve(raw, &cli.config).map_err(|err| err.to_string())?;
    // The command line and the environment get the check the config gets.
    if let Some(url) = cli
        .pushgateway
        .as_deref()
        .filter(|url| !url.trim().is_empty())
    {
        plan::check_pushgateway(url).map_err(|message| {
            format!("invalid --pushgateway (or IMAGE_SYNC_PUSHGATEWAY): {message}")
        })?;
    }
    if let Some(secs) = cli.deadline {
        plan.settings.run_deadline = Some(std::time::Duration::from_secs(secs));
    }
    // At --check and at the start of a run: crane would go anonymous without a word.
    if let Some(warning) = docker_hub::check_docker_config() {
        tracing::warn!("{warning}");
    }
    Ok(plan)
}

/// Takes the plan by value: a copy of it would cost as much memory as the image list.
async fn sync_and_report(mut plan: Plan, cli: &Cli, shard: Option<shard::Shard>) -> u8 {
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
    // The cluster is listed alongside the sync, against the whole config (before the shard).
    let coverage = (plan.settings.coverage || cli.coverage).then(|| {
        let whole = plan.clone();
        tokio::spawn(async move { run::coverage::check(&whole).await })
    });
    let toolbox = Arc::new(
        Toolbox::discover(
            tls_policy(plan).await,
            plan.settings.digest_check,
            &plan.cache_host,
            plan.settings.quota_reserve,
            // Each shard keeps its share of every registry's quota (see `Ledger`).
            shard.map_or(1, |shard| shard.count),
        )
        .await,
    );
    // Tag rules first (each shard lists every entry: listings are not pulls), then the
    // shard, so that each selected tag belongs to exactly one shard.
    // The run deadline's clock starts now: listings count against it, as images do.
    let limits = tag_listing::Limits {
        deadline: plan.settings.run_deadline.map(|limit| started + limit),
        breakers: Arc::default(),
    };
    let (tag_lists, mut unlisted) = tag_listing::expand(plan, &toolbox, &cancel, &limits).await;
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

    let synced = sync::sync_all(plan, &toolbox, dry_run, &cancel, &limits).await;
    sync::refresh_quota(plan, &synced, &toolbox, &cancel).await;
    if !dry_run {
        record_writes(plan, &synced, &toolbox, shard).await;
    }
    let results = tag_listing::merge_in_config_order(plan, synced, unlisted);
    let ledger = toolbox.ledger();
    let (quota, requests, limits) = (ledger.report(), ledger.requests(), ledger.limits());
    let mut report = Report::new(&plan.cache_registry, dry_run, results);
    report.quota = quota;
    report.shard = shard;
    report.tag_lists = tag_lists;
    if let Some(task) = coverage {
        // An interrupted run reports at once rather than wait for a slow API server.
        if signals::interrupted_exit_code().is_some() {
            task.abort();
        }
        report.coverage = Some(
            task.await
                .unwrap_or_else(|err| output::report::CoverageReport {
                    error: Some(format!("the coverage check failed: {err}")),
                    ..Default::default()
                }),
        );
    }
    // settings.prune: only after a run that synced every image of the whole config.
    let complete = !dry_run
        && shard.is_none()
        && signals::interrupted_exit_code().is_none()
        && report.summary.failed == 0
        && report.summary.deferred == 0
        && report.tag_lists.iter().all(|list| list.error.is_none());
    let mut prune_code = exit::SUCCESS;
    if plan.settings.prune {
        if complete {
            if let Some(client) = toolbox.client() {
                let options = prune::Options {
                    apply: true,
                    max_deletions: prune::DEFAULT_MAX_DELETIONS,
                };
                let (pruned, code) = prune::run(plan, client, options).await;
                report.prune = Some(pruned);
                prune_code = code;
            }
        } else {
            tracing::info!(
                "settings.prune: not pruning after a dry, sharded, failed, deferred or interrupted run"
            );
        }
    }
    report.lease = lease;
    if let Some(renewal) = renewal {
        renewal.finish(shard.is_none()).await;
    }
    // Closes pooled connections, so that the descriptors counted below are leaks only.
    drop(toolbox);
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
        .unwrap_or_else(|| exit::for_report(&report, plan.settings.skip_on_error))
        .max(prune_code);
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

/// Records in the cache the tags this run wrote (see [`prune::records`]), so that a later
/// prune may delete them once the config no longer lists them. A record that cannot be
/// written is a warning: those tags are then never pruned, the safe side.
async fn record_writes(
    plan: &Plan,
    synced: &[output::report::ImageResult],
    toolbox: &Toolbox,
    shard: Option<shard::Shard>,
) {
    let entries: Vec<prune::records::Entry> = plan
        .jobs
        .iter()
        .zip(synced)
        .filter(|(_, result)| result.action == output::report::Action::Pulled)
        .filter_map(|(job, result)| {
            Some(prune::records::Entry {
                repository: job.target.path().to_owned(),
                tag: job.tag.to_string(),
                digest: result
                    .filtered_digest()
                    .or_else(|| result.digests.remote())?
                    .to_string(),
            })
        })
        .collect();
    let Some(client) = toolbox.client() else {
        return;
    };
    let writer = match shard {
        Some(shard) => format!("shard-{}", shard.index),
        None => std::env::var("HOSTNAME").unwrap_or_else(|_| "run".to_owned()),
    };
    let records = prune::records::repository(plan);
    let budget = plan.settings.check_timeout;
    match prune::records::record(client, &records, &entries, &writer, budget).await {
        Ok(prune::records::Added::Covered) => {}
        Ok(prune::records::Added::Written(tag)) => {
            tracing::debug!(record = %tag, tags = entries.len(), "recorded the tags written")
        }
        Ok(prune::records::Added::Merged { tag, replaced }) => {
            tracing::debug!(record = %tag, replaced, "recorded the tags written; records merged")
        }
        Err(failure) => {
            tracing::warn!(cause = %failure, "cannot record the tags written in the cache; prune will leave them alone")
        }
    }
}

/// `image-sync prune`: prints `{"prune": ...}` and returns the exit code.
async fn prune_only(plan: &Plan, options: prune::Options) -> u8 {
    let toolbox = Toolbox::discover(
        tls_policy(plan).await,
        plan.settings.digest_check,
        &plan.cache_host,
        plan.settings.quota_reserve,
        // Prune reads the cache only: no upstream quota to share.
        1,
    )
    .await;
    let (report, code) = match toolbox.client() {
        Some(client) => prune::run(plan, client, options).await,
        None => (
            output::prune_report::PruneReport {
                error: Some("no HTTP client could be built: nothing deleted".to_owned()),
                ..output::prune_report::PruneReport::default()
            },
            exit::IMAGES_FAILED,
        ),
    };
    report.print(&mut std::io::stdout().lock());
    tracing::info!(
        would_delete = report.would_delete.len(),
        deleted = report.deleted.len(),
        kept = report.kept.len(),
        apply = options.apply,
        "prune finished"
    );
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
    let code = if lease.outcome == coordination::LeaseOutcome::Held {
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
    if settings.coverage {
        text.push_str("\ncoverage: cluster (each run lists the cluster's workloads, read-only)");
    }
    if let Some(platforms) = &settings.platforms {
        text.push_str(&format!(
            "\nplatforms: {} (images may override)",
            input::platforms::describe(platforms)
        ));
    }
    if settings.prune {
        text.push_str("\nprune: after every complete, unsharded run");
    }
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

//! `image-sync discover`: gather the sightings (manifests, the live cluster), build the
//! inventory, print it in the asked format or check it `--against` a config, and choose
//! the exit code.

use std::io::Write as _;

use crate::discover::coverage;
use crate::discover::format;
use crate::discover::inventory::Inventory;
use crate::input::cli::DiscoverArgs;
use crate::output::exit;

/// Runs `image-sync discover` and returns the exit code: 0 done (with `--against`: every
/// image covered), 1 an invalid reference was found (with `--against`: or an image is not
/// covered), 2 usage, config or input errors (a manifest that is not YAML, a cluster that
/// cannot be listed).
pub fn run(args: &DiscoverArgs) -> u8 {
    let plan = match &args.against {
        Some(path) => {
            let loaded = crate::input::config::load(path)
                .map_err(|err| format!("invalid config {err}"))
                .and_then(|raw| crate::input::plan::resolve(raw, path).map_err(|e| e.to_string()));
            match loaded {
                Ok(plan) => Some(plan),
                Err(message) => {
                    tracing::error!("{message}");
                    return exit::USAGE;
                }
            }
        }
        None => None,
    };
    let inventory = match gather(args) {
        Ok(inventory) => inventory,
        Err(message) => {
            tracing::error!("{message}");
            return exit::USAGE;
        }
    };
    for invalid in inventory.invalid() {
        for place in &invalid.found_in {
            tracing::warn!(
                image = %invalid.image,
                kind = %place.kind,
                namespace = place.namespace.as_deref().unwrap_or(""),
                name = %place.name,
                container = %place.container,
                file = place.file.as_deref().unwrap_or(""),
                "invalid image reference {}",
                invalid.error
            );
        }
    }
    let (text, code) = match &plan {
        Some(plan) => {
            let coverage = coverage::check(plan, &inventory);
            let mut text = serde_json::to_string_pretty(&coverage).unwrap_or_default();
            text.push('\n');
            tracing::info!(
                images = coverage.images,
                uncovered = coverage.uncovered.len(),
                unused = coverage.unused.len(),
                invalid = coverage.invalid.len(),
                "coverage checked against {}",
                plan.config_path.display()
            );
            let code = if coverage.complete() {
                exit::SUCCESS
            } else {
                exit::IMAGES_FAILED
            };
            (text, code)
        }
        None => {
            let code = if inventory.invalid().next().is_some() {
                exit::IMAGES_FAILED
            } else {
                exit::SUCCESS
            };
            (format::render(&inventory, args.format), code)
        }
    };
    let mut stdout = std::io::stdout().lock();
    match stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
    {
        Ok(()) => code,
        Err(err) if err.kind() == std::io::ErrorKind::BrokenPipe => code,
        Err(err) => {
            tracing::error!("cannot write to stdout: {err}");
            exit::IMAGES_FAILED
        }
    }
}

/// Every image from the manifests, then from the cluster.
fn gather(args: &DiscoverArgs) -> Result<Inventory, String> {
    let mut inventory = Inventory::default();
    crate::discover::manifests::read(&args.manifests, &mut inventory)
        .map_err(|err| format!("cannot read manifests: {err}"))?;
    if args.cluster {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .enable_all()
            .build()
            .map_err(|err| format!("cannot start the async runtime: {err}"))?;
        let listing = runtime.block_on(async {
            let client = crate::cluster::client::client(args.kubeconfig.as_deref())
                .await
                .map_err(|err| err.to_string())?;
            crate::discover::cluster::list(&client, &args.namespace, args.page_size)
                .await
                .map_err(|err| err.to_string())
        })?;
        tracing::info!(
            objects = listing.objects,
            pages = listing.pages,
            containers = listing.sightings.len(),
            "listed the cluster's workloads"
        );
        inventory.extend(listing.sightings);
    }
    inventory.finish();
    Ok(inventory)
}

//! Listing the workloads of a live cluster, read-only: Pods and every workload kind (their
//! templates included, so a Deployment scaled to zero or a suspended CronJob counts), in
//! every namespace or the given ones, page by page (`limit`/`continue`).

use kube::api::{Api, DynamicObject, ListParams};
use kube::discovery::ApiResource;

use crate::discover::workload::{self, Sighting};

/// Objects per page by default (kubectl's chunk size).
pub const DEFAULT_PAGE_SIZE: u32 = 500;

/// A list request the API server refused or that failed on the way.
#[derive(Debug)]
pub struct ListError {
    /// The kind being listed.
    pub kind: &'static str,
    /// The namespace, when listing one.
    pub namespace: Option<String>,
    /// The HTTP status the API server answered, when it answered.
    pub status: Option<u16>,
    /// The API server's (or the transport's) message.
    pub message: String,
}

impl std::fmt::Display for ListError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let scope = self.namespace.as_deref().map_or_else(
            || "all namespaces".to_owned(),
            |ns| format!("namespace {ns}"),
        );
        write!(f, "cannot list {}s in {scope}", self.kind)?;
        if let Some(status) = self.status {
            write!(f, " (HTTP {status})")?;
        }
        write!(f, ": {}", self.message)?;
        if self.status == Some(403) {
            write!(
                f,
                "; grant list on it (k8s/components/image-sync-coverage, or the chart's rbac.coverage)"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ListError {}

/// What one listing saw, beyond the sightings: pages and objects per kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Listing {
    /// Every container image found.
    pub sightings: Vec<Sighting>,
    /// List requests made.
    pub pages: usize,
    /// Objects listed.
    pub objects: usize,
}

fn resource(kind: &str) -> Option<ApiResource> {
    use k8s_openapi::api::{apps::v1 as apps, batch::v1 as batch, core::v1 as core};
    Some(match kind {
        "Pod" => ApiResource::erase::<core::Pod>(&()),
        "ReplicationController" => ApiResource::erase::<core::ReplicationController>(&()),
        "PodTemplate" => ApiResource::erase::<core::PodTemplate>(&()),
        "Deployment" => ApiResource::erase::<apps::Deployment>(&()),
        "ReplicaSet" => ApiResource::erase::<apps::ReplicaSet>(&()),
        "StatefulSet" => ApiResource::erase::<apps::StatefulSet>(&()),
        "DaemonSet" => ApiResource::erase::<apps::DaemonSet>(&()),
        "Job" => ApiResource::erase::<batch::Job>(&()),
        "CronJob" => ApiResource::erase::<batch::CronJob>(&()),
        _ => return None,
    })
}

/// Lists every workload kind in `namespaces` (all namespaces when empty), `page_size`
/// objects per request. Read-only: `list` is the only verb used.
pub async fn list(
    client: &kube::Client,
    namespaces: &[String],
    page_size: u32,
) -> Result<Listing, ListError> {
    let mut listing = Listing::default();
    let scopes: Vec<Option<&str>> = if namespaces.is_empty() {
        vec![None]
    } else {
        namespaces.iter().map(|ns| Some(ns.as_str())).collect()
    };
    for (kind, _) in workload::KINDS {
        let Some(resource) = resource(kind) else {
            continue;
        };
        for scope in &scopes {
            let api: Api<DynamicObject> = match scope {
                Some(ns) => Api::namespaced_with(client.clone(), ns, &resource),
                None => Api::all_with(client.clone(), &resource),
            };
            list_kind(&api, kind, *scope, page_size, &mut listing).await?;
        }
    }
    Ok(listing)
}

async fn list_kind(
    api: &Api<DynamicObject>,
    kind: &'static str,
    namespace: Option<&str>,
    page_size: u32,
    listing: &mut Listing,
) -> Result<(), ListError> {
    let mut token: Option<String> = None;
    loop {
        let mut params = ListParams::default().limit(page_size.max(1));
        if let Some(token) = &token {
            params = params.continue_token(token);
        }
        let page = api.list(&params).await.map_err(|err| {
            let status = match &err {
                kube::Error::Api(status) => Some(status.code),
                _ => None,
            };
            ListError {
                kind,
                namespace: namespace.map(str::to_owned),
                status,
                message: crate::input::reference::shorten(&err.to_string()),
            }
        })?;
        listing.pages += 1;
        listing.objects += page.items.len();
        for object in &page.items {
            let value = serde_json::json!({
                "metadata": {
                    "name": object.metadata.name,
                    "namespace": object.metadata.namespace,
                },
                "spec": object.data.get("spec"),
                "template": object.data.get("template"),
            });
            listing
                .sightings
                .extend(workload::sightings(kind, &value, None));
        }
        token = page.metadata.continue_.filter(|t| !t.is_empty());
        if token.is_none() {
            return Ok(());
        }
    }
}

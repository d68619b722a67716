//! A kube `Client` from `--kubeconfig PATH`, else `KUBECONFIG` (or `~/.kube/config`), else
//! the in-cluster service account, with bounded timeouts so that an unreachable API server
//! fails the call instead of hanging the run.

use std::path::Path;
use std::time::Duration;

/// Bound on opening a connection to the API server.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on reading one answer (one page of a list).
pub const READ_TIMEOUT: Duration = Duration::from_secs(60);

/// A client could not be built: no usable kubeconfig or service account.
#[derive(Debug)]
pub struct ClientError(pub String);

impl std::fmt::Display for ClientError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ClientError {}

/// A client for `kubeconfig` when given, else the inferred configuration (`KUBECONFIG` or
/// `~/.kube/config`, then the in-cluster service account).
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let config = match kubeconfig {
        Some(path) => return client_from_kubeconfig(path).await,
        None => kube::Config::infer().await.map_err(|err| {
            ClientError(format!(
                "no Kubernetes API to talk to: no kubeconfig (set KUBECONFIG or pass --kubeconfig) and not in a pod with a service account: {err}"
            ))
        })?,
    };
    build(config)
}

/// A client for the current context of the kubeconfig file at `path`.
pub async fn client_from_kubeconfig(path: &Path) -> Result<kube::Client, ClientError> {
    let shown = crate::input::reference::shorten(&path.display().to_string());
    let kubeconfig = kube::config::Kubeconfig::read_from(path)
        .map_err(|err| ClientError(format!("cannot read kubeconfig {shown}: {err}")))?;
    let config = kube::Config::from_custom_kubeconfig(
        kubeconfig,
        &kube::config::KubeConfigOptions::default(),
    )
    .await
    .map_err(|err| ClientError(format!("cannot use kubeconfig {shown}: {err}")))?;
    build(config)
}

fn build(mut config: kube::Config) -> Result<kube::Client, ClientError> {
    config.connect_timeout = Some(CONNECT_TIMEOUT);
    config.read_timeout = Some(READ_TIMEOUT);
    config.write_timeout = Some(READ_TIMEOUT);
    let cluster = config.cluster_url.to_string();
    kube::Client::try_from(config).map_err(|err| {
        ClientError(format!(
            "cannot build a client for {}: {err}",
            crate::input::reference::shorten(&cluster)
        ))
    })
}

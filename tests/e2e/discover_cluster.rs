//! `image-sync discover --cluster` against a real kube-apiserver and etcd: workloads made
//! with kubectl (a Deployment scaled to zero, a suspended CronJob, every other kind, more
//! Pods than one page holds), listed with a token of the ServiceAccount of `k8s/` under the
//! ClusterRole of `k8s/components/image-sync-coverage`. The API server's audit log shows
//! each list request: only `list`, paged with `limit`/`continue`, and no Secret read.

use std::path::Path;

use serde_json::Value;

use crate::support::control_plane::ControlPlane;
use crate::support::discover::{entries, entry, images};
use crate::support::repo_file;
use crate::support::runner::ImageSync;

/// Who image-sync runs as in these tests.
pub const SERVICE_ACCOUNT: &str = "system:serviceaccount:image-cache:image-sync";

/// Pods in `shop` beyond the one named `web`: with pages of 3, pods take several pages.
const EXTRA_PODS: usize = 7;

/// The workloads of the test cluster (and a Secret and a ConfigMap nobody may read).
pub fn workloads() -> String {
    let hex = "a".repeat(64);
    let mut yaml = format!(
        r#"
apiVersion: v1
kind: Namespace
metadata: {{name: shop}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: data}}
---
apiVersion: v1
kind: Namespace
metadata: {{name: image-cache}}
---
apiVersion: v1
kind: Pod
metadata: {{name: web, namespace: shop}}
spec:
  initContainers: [{{name: init, image: busybox}}]
  containers: [{{name: nginx, image: "nginx:1.27"}}]
---
apiVersion: apps/v1
kind: Deployment
metadata: {{name: api, namespace: shop}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: api}}}}
  template:
    metadata: {{labels: {{app: api}}}}
    spec:
      containers: [{{name: api, image: "org/app:1"}}]
---
apiVersion: apps/v1
kind: ReplicaSet
metadata: {{name: api-rs, namespace: shop}}
spec:
  replicas: 0
  selector: {{matchLabels: {{app: rs}}}}
  template:
    metadata: {{labels: {{app: rs}}}}
    spec:
      containers: [{{name: api, image: "docker.io/org/app:1"}}]
---
apiVersion: apps/v1
kind: StatefulSet
metadata: {{name: db, namespace: data}}
spec:
  serviceName: db
  replicas: 0
  selector: {{matchLabels: {{app: db}}}}
  template:
    metadata: {{labels: {{app: db}}}}
    spec:
      containers: [{{name: postgres, image: "postgres:16.4@sha256:{hex}"}}]
---
apiVersion: apps/v1
kind: DaemonSet
metadata: {{name: agent, namespace: data}}
spec:
  selector: {{matchLabels: {{app: agent}}}}
  template:
    metadata: {{labels: {{app: agent}}}}
    spec:
      containers: [{{name: agent, image: "quay.io/prometheus/node-exporter:v1.8.2"}}]
---
apiVersion: batch/v1
kind: Job
metadata: {{name: migrate, namespace: data}}
spec:
  suspend: true
  template:
    spec:
      restartPolicy: Never
      containers: [{{name: migrate, image: "ghcr.io/example/migrate:3"}}]
---
apiVersion: batch/v1
kind: CronJob
metadata: {{name: report, namespace: data}}
spec:
  schedule: "0 * * * *"
  suspend: true
  jobTemplate:
    spec:
      template:
        spec:
          restartPolicy: OnFailure
          containers: [{{name: report, image: "registry.example.com:5000/reports:2024.1"}}]
---
apiVersion: v1
kind: ReplicationController
metadata: {{name: legacy, namespace: shop}}
spec:
  replicas: 0
  selector: {{app: legacy}}
  template:
    metadata: {{labels: {{app: legacy}}}}
    spec:
      containers: [{{name: legacy, image: "redis:7"}}]
---
apiVersion: v1
kind: PodTemplate
metadata: {{name: template, namespace: shop}}
template:
  spec:
    containers: [{{name: worker, image: "ghcr.io/example/worker:v1"}}]
---
apiVersion: v1
kind: Secret
metadata: {{name: not-for-image-sync, namespace: shop}}
stringData: {{image: "decoy/secret:1"}}
---
apiVersion: v1
kind: ConfigMap
metadata: {{name: decoy, namespace: shop}}
data: {{image: "decoy/configmap:1"}}
"#
    );
    for index in 0..EXTRA_PODS {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: replica-{index}, namespace: shop}}\nspec:\n  containers: [{{name: app, image: \"org/app:1\"}}]\n"
        ));
    }
    yaml
}

/// The images of [`workloads`], normalised and sorted.
pub fn expected_images() -> Vec<String> {
    let hex = "a".repeat(64);
    vec![
        "docker.io/library/busybox:latest".to_owned(),
        "docker.io/library/nginx:1.27".to_owned(),
        format!("docker.io/library/postgres@sha256:{hex}"),
        "docker.io/library/redis:7".to_owned(),
        "docker.io/org/app:1".to_owned(),
        "ghcr.io/example/migrate:3".to_owned(),
        "ghcr.io/example/worker:v1".to_owned(),
        "quay.io/prometheus/node-exporter:v1.8.2".to_owned(),
        "registry.example.com:5000/reports:2024.1".to_owned(),
    ]
}

/// Starts a control plane holding [`workloads`] and the RBAC of `k8s/` (the ServiceAccount
/// and the coverage component's ClusterRole and binding); returns it with a kubeconfig for
/// that ServiceAccount's token.
pub fn cluster_with_workloads() -> Option<(ControlPlane, std::path::PathBuf)> {
    let plane = ControlPlane::start()?;
    plane.apply(&workloads());
    let account =
        repo_file("k8s/clusters/scale-test/infrastructure/image-sync/serviceaccount.yaml")
            .replace("metadata:\n", "metadata:\n  namespace: image-cache\n");
    plane.apply(&account);
    plane.apply(&repo_file(
        "k8s/components/image-sync-coverage/clusterrole.yaml",
    ));
    plane.apply(&repo_file(
        "k8s/components/image-sync-coverage/clusterrolebinding.yaml",
    ));
    let token = plane.kubectl(&["create", "token", "image-sync", "-n", "image-cache"]);
    assert!(
        token.status.success(),
        "kubectl create token: {}",
        String::from_utf8_lossy(&token.stderr)
    );
    let token = String::from_utf8(token.stdout).expect("token");
    let kubeconfig = plane.token_kubeconfig("image-sync.kubeconfig", token.trim());
    Some((plane, kubeconfig))
}

/// The audit events of requests made as the image-sync ServiceAccount.
pub fn requests_by_image_sync(plane: &ControlPlane) -> Vec<(String, String)> {
    plane
        .audit_events()
        .iter()
        .filter(|event| event["user"]["username"] == SERVICE_ACCOUNT)
        .map(|event: &Value| {
            (
                event["verb"].as_str().unwrap_or_default().to_owned(),
                event["requestURI"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect()
}

fn can_i(plane: &ControlPlane, kubeconfig: &Path, args: &[&str]) -> String {
    let mut full = vec!["auth", "can-i"];
    full.extend_from_slice(args);
    let output = plane.kubectl_as(kubeconfig, &full, None);
    String::from_utf8_lossy(&output.stdout).trim().to_owned()
}

#[test]
fn discover_lists_a_real_clusters_workloads_page_by_page_read_only() {
    let Some((plane, kubeconfig)) = cluster_with_workloads() else {
        return;
    };
    // The identity of k8s/ with the coverage ClusterRole: it lists the workload kinds and
    // can neither read Secrets nor write anything.
    for (args, answer) in [
        (&["list", "pods", "--all-namespaces"][..], "yes"),
        (&["watch", "cronjobs.batch", "--all-namespaces"][..], "yes"),
        (&["get", "podtemplates", "-n", "shop"][..], "yes"),
        (&["list", "secrets", "--all-namespaces"][..], "no"),
        (&["get", "secrets", "-n", "shop"][..], "no"),
        (&["list", "configmaps", "-n", "shop"][..], "no"),
        (&["create", "pods", "-n", "shop"][..], "no"),
        (&["delete", "deployments.apps", "-n", "shop"][..], "no"),
    ] {
        assert_eq!(can_i(&plane, &kubeconfig, args), answer, "can-i {args:?}");
    }
    let before = requests_by_image_sync(&plane).len();

    let run = ImageSync::new()
        .args([
            "discover",
            "--cluster",
            "--format",
            "json",
            "--page-size",
            "3",
            "--kubeconfig",
        ])
        .arg(&kubeconfig)
        .without_env("KUBECONFIG")
        .run();
    run.expect_code(0);
    let entries = entries(&run);
    assert_eq!(images(&entries), expected_images());
    let app = entry(&entries, "docker.io/org/app:1");
    assert_eq!(
        app["found_in"].as_array().expect("found_in").len(),
        2 + EXTRA_PODS
    );
    // The suspended CronJob.
    let report = entry(&entries, "registry.example.com:5000/reports:2024.1");
    assert_eq!(
        report["found_in"][0],
        serde_json::json!({"kind": "CronJob", "namespace": "data", "name": "report", "container": "report"})
    );

    // The audit log: every request a cluster-wide `list`, pods paged 3 at a time (8 pods:
    // 3 pages, the 2nd and 3rd with a continue token), one page for each other kind.
    let requests: Vec<(String, String)> = requests_by_image_sync(&plane).split_off(before);
    assert!(
        requests.iter().all(|(verb, _)| verb == "list"),
        "{requests:#?}"
    );
    assert!(
        requests.iter().all(|(_, uri)| uri.contains("limit=3")),
        "{requests:#?}"
    );
    assert!(
        !requests.iter().any(|(_, uri)| uri.contains("secrets")),
        "{requests:#?}"
    );
    let pod_pages: Vec<&String> = requests
        .iter()
        .map(|(_, uri)| uri)
        .filter(|uri| uri.starts_with("/api/v1/pods?"))
        .collect();
    assert_eq!(pod_pages.len(), 3, "{pod_pages:#?}");
    assert_eq!(
        pod_pages
            .iter()
            .filter(|uri| uri.contains("continue="))
            .count(),
        2
    );
    assert_eq!(requests.len(), 3 + 8, "{requests:#?}");

    // One namespace, with the kubeconfig from KUBECONFIG: only that namespace is listed.
    let before = requests_by_image_sync(&plane).len();
    let run = ImageSync::new()
        .args(["discover", "--cluster", "--namespace", "data"])
        .env("KUBECONFIG", &kubeconfig)
        .run();
    run.expect_code(0);
    assert_eq!(
        run.stdout.lines().collect::<Vec<_>>(),
        [
            &format!("docker.io/library/postgres@sha256:{}", "a".repeat(64))[..],
            "ghcr.io/example/migrate:3",
            "quay.io/prometheus/node-exporter:v1.8.2",
            "registry.example.com:5000/reports:2024.1",
        ]
    );
    let requests = requests_by_image_sync(&plane).split_off(before);
    assert_eq!(requests.len(), 9, "{requests:#?}");
    assert!(
        requests
            .iter()
            .all(|(verb, uri)| verb == "list" && uri.contains("/namespaces/data/")),
        "{requests:#?}"
    );
}

#[test]
fn an_identity_without_the_cluster_role_is_refused_with_what_to_grant() {
    let Some(plane) = ControlPlane::start() else {
        return;
    };
    plane.apply("apiVersion: v1\nkind: Namespace\nmetadata: {name: image-cache}\n---\napiVersion: v1\nkind: ServiceAccount\nmetadata: {name: image-sync, namespace: image-cache}\n");
    let token = plane.kubectl(&["create", "token", "image-sync", "-n", "image-cache"]);
    let token = String::from_utf8(token.stdout).expect("token");
    let kubeconfig = plane.token_kubeconfig("unbound.kubeconfig", token.trim());
    let run = ImageSync::new()
        .args(["discover", "--cluster", "--kubeconfig"])
        .arg(&kubeconfig)
        .run();
    run.expect_error(2, "cannot list Pods in all namespaces (HTTP 403)");
    assert!(
        run.stderr.contains("k8s/components/image-sync-coverage"),
        "{}",
        run.stderr
    );
    // No kubeconfig anywhere and not in a pod: a clear error, exit 2.
    let run = ImageSync::new()
        .args(["discover", "--cluster"])
        .env("KUBECONFIG", "/nonexistent/kubeconfig")
        .env("HOME", "/nonexistent")
        .without_env("KUBERNETES_SERVICE_HOST")
        .run();
    run.expect_code(2);
    assert!(
        run.stderr.contains("no Kubernetes API to talk to"),
        "{}",
        run.stderr
    );
}

fn metric(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|line| line.strip_prefix(&format!("{name} ")))
        .and_then(|value| value.trim().parse().ok())
}

#[test]
fn a_sync_run_with_coverage_reports_the_clusters_uncovered_images() {
    let Some(p) = crate::support::pair() else {
        return;
    };
    let Some((plane, kubeconfig)) = cluster_with_workloads() else {
        return;
    };
    let (up, cache) = (p.upstream.host(), p.cache.host());
    crate::support::image::push_new(
        &p.tools,
        crate::support::image::Kind::Single,
        "coverage",
        &format!("{up}/team/app:1"),
        crate::support::image::Format::Oci,
    );
    // Two more workloads: one pulls the synced image by its upstream name (through a
    // mirror), one names the cache directly; both are covered by the one config entry.
    plane.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: mirrored, namespace: shop}}\nspec:\n  containers: [{{name: app, image: \"{up}/team/app:1\"}}]\n---\napiVersion: v1\nkind: Pod\nmetadata: {{name: direct, namespace: shop}}\nspec:\n  containers: [{{name: app, image: \"{cache}/team/app:1\"}}]\n"
    ));
    let config = format!(
        "cache_registry: \"{cache}\"\nimages:\n  - source: \"{up}/team/app\"\n    tag: \"1\"\nsettings:\n  check_timeout_secs: 20\n  pull_timeout_secs: 60\n  coverage: cluster\n"
    );
    let before_sync = p.upstream.counts();
    let before_api = requests_by_image_sync(&plane).len();
    let run = ImageSync::new().config(&config);
    let metrics_dir = tempfile::tempdir().expect("metrics dir");
    let metrics = metrics_dir.path().join("metrics.prom");
    let run = run
        .arg("--metrics-file")
        .arg(&metrics)
        .env("KUBECONFIG", &kubeconfig)
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["pulled"]);
    assert_eq!(
        run.report()["coverage"],
        serde_json::json!({"images": 11, "uncovered": expected_images()})
    );
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    assert_eq!(metric(&text, "image_sync_coverage_ok"), Some(1.0), "{text}");
    assert_eq!(
        metric(&text, "image_sync_cluster_images"),
        Some(11.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "image_sync_uncovered_images"),
        Some(9.0),
        "{text}"
    );
    // The sync itself: one HEAD and one GET of the upstream manifest for the copy.
    let upstream = p.upstream.counts() - before_sync;
    assert_eq!(upstream.manifest_gets, 1, "{upstream:?}");
    // The API server saw one cluster-wide list per kind, nothing else.
    let api = requests_by_image_sync(&plane).split_off(before_api);
    assert_eq!(api.len(), 9, "{api:#?}");
    assert!(api.iter().all(|(verb, _)| verb == "list"), "{api:#?}");

    // `--coverage` (here through IMAGE_SYNC_COVERAGE) without the setting, with an
    // identity the API server refuses: the coverage is unknown, the sync still succeeds
    // (already cached: no manifest GET), and the gauge says so.
    plane.apply(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: unbound, namespace: image-cache}\n",
    );
    let token = plane.kubectl(&["create", "token", "unbound", "-n", "image-cache"]);
    let unbound = plane.token_kubeconfig(
        "unbound.kubeconfig",
        String::from_utf8(token.stdout).expect("token").trim(),
    );
    let config = config.replace("  coverage: cluster\n", "");
    let before_sync = p.upstream.counts();
    let run = ImageSync::new().config(&config);
    let metrics = metrics_dir.path().join("refused.prom");
    let run = run
        .arg("--metrics-file")
        .arg(&metrics)
        .env("KUBECONFIG", &unbound)
        .env("IMAGE_SYNC_COVERAGE", "true")
        .run();
    run.expect_code(0);
    assert_eq!(run.actions(), ["already_cached"]);
    let coverage = &run.report()["coverage"];
    assert!(coverage.get("images").is_none(), "{coverage}");
    assert!(
        coverage["error"]
            .as_str()
            .is_some_and(|e| e.contains("HTTP 403")),
        "{coverage}"
    );
    let text = std::fs::read_to_string(&metrics).expect("metrics file");
    assert_eq!(metric(&text, "image_sync_coverage_ok"), Some(0.0), "{text}");
    assert_eq!(metric(&text, "image_sync_uncovered_images"), None, "{text}");
    assert_eq!((p.upstream.counts() - before_sync).manifest_gets, 0);

    // Coverage off (the default): no `coverage` in the report, no gauge, no API request.
    let before_api = plane.audit_events().len();
    let run = ImageSync::new()
        .config(&config)
        .env("KUBECONFIG", &kubeconfig)
        .run();
    run.expect_code(0);
    assert!(run.report().get("coverage").is_none());
    assert_eq!(plane.audit_events().len(), before_api);
}

#[test]
fn an_unreachable_api_server_is_an_error_not_a_hang() {
    let port = crate::support::registry::free_port();
    let run = ImageSync::new();
    let kubeconfig = run.write(
        "kubeconfig",
        format!("apiVersion: v1\nkind: Config\nclusters:\n- name: gone\n  cluster:\n    server: https://127.0.0.1:{port}\nusers:\n- name: u\n  user:\n    token: x\ncontexts:\n- name: gone\n  context: {{cluster: gone, user: u}}\ncurrent-context: gone\n").as_bytes(),
    );
    let run = run
        .args(["discover", "--cluster", "--kubeconfig"])
        .arg(&kubeconfig)
        .run_within(std::time::Duration::from_secs(60));
    run.expect_error(2, "cannot list Pods in all namespaces");
}

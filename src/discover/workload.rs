//! The containers of one Kubernetes object: the pod spec of each workload kind (a Pod's
//! own, a Deployment's template, a CronJob's job template...) and every container in it
//! (`containers`, `initContainers`, `ephemeralContainers`). Other kinds hold no workload,
//! whatever their data says (a ConfigMap mentioning `image:` pulls nothing).

use serde::Serialize;
use serde_json::Value;

/// The kinds whose objects run pods, with the API group they belong to.
pub const KINDS: &[(&str, &str)] = &[
    ("Pod", ""),
    ("ReplicationController", ""),
    ("PodTemplate", ""),
    ("Deployment", "apps"),
    ("ReplicaSet", "apps"),
    ("StatefulSet", "apps"),
    ("DaemonSet", "apps"),
    ("Job", "batch"),
    ("CronJob", "batch"),
];

/// The container lists of a pod spec.
const CONTAINER_FIELDS: &[&str] = &["containers", "initContainers", "ephemeralContainers"];

/// Where an image reference was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FoundIn {
    /// The object's kind (`Deployment`).
    pub kind: String,
    /// Its namespace; `null` when a manifest leaves it to the namespace it is applied in.
    pub namespace: Option<String>,
    /// Its name.
    pub name: String,
    /// The container's name.
    pub container: String,
    /// The manifest file (`-` for stdin); absent for objects read from a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
}

/// One container's image as written, with where it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sighting {
    /// The `image` field as written; `None` when it is not a string.
    pub image: Option<String>,
    /// Where.
    pub found_in: FoundIn,
}

/// Whether `api_version` (`apps/v1`, `v1`, `batch/v1beta1`) belongs to `group` (`""` for
/// the core group). `extensions` held the apps kinds before `apps` did.
fn in_group(api_version: &str, group: &str) -> bool {
    match api_version.split_once('/') {
        None => group.is_empty(),
        Some((found, _)) => found == group || (group == "apps" && found == "extensions"),
    }
}

/// The pod spec of a workload object, or `None` for any other kind. `kind` is given apart
/// because objects listed from a cluster carry no `kind` of their own.
pub fn pod_spec<'a>(kind: &str, object: &'a Value) -> Option<&'a Value> {
    let spec = object.get("spec");
    match kind {
        "Pod" => spec,
        "PodTemplate" => object.get("template")?.get("spec"),
        "CronJob" => spec?
            .get("jobTemplate")?
            .get("spec")?
            .get("template")?
            .get("spec"),
        _ => spec?.get("template")?.get("spec"),
    }
}

/// Whether a manifest object (with `apiVersion` and `kind`) is a workload kind of the
/// Kubernetes API (a custom resource that happens to be called `Deployment` is not).
pub fn is_workload(api_version: &str, kind: &str) -> bool {
    KINDS
        .iter()
        .any(|(known, group)| *known == kind && in_group(api_version, group))
}

/// Every container image of one workload object of kind `kind`, in spec order. `file` names
/// the manifest it came from.
pub fn sightings(kind: &str, object: &Value, file: Option<&str>) -> Vec<Sighting> {
    let Some(spec) = pod_spec(kind, object) else {
        return Vec::new();
    };
    let metadata = object.get("metadata");
    let text = |field: &str| {
        metadata
            .and_then(|m| m.get(field))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let (name, namespace) = (text("name").unwrap_or_default(), text("namespace"));
    let mut found = Vec::new();
    for field in CONTAINER_FIELDS {
        let Some(containers) = spec.get(field).and_then(Value::as_array) else {
            continue;
        };
        for container in containers {
            // A container without `image` is one a later patch fills in: nothing to pull.
            let Some(image) = container.get("image") else {
                continue;
            };
            found.push(Sighting {
                image: image.as_str().map(str::to_owned),
                found_in: FoundIn {
                    kind: kind.to_owned(),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    container: container
                        .get("name")
                        .and_then(Value::as_str)
                        .unwrap_or_default()
                        .to_owned(),
                    file: file.map(str::to_owned),
                },
            });
        }
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn images(kind: &str, object: &Value) -> Vec<String> {
        sightings(kind, object, None)
            .into_iter()
            .map(|s| format!("{}/{}", s.found_in.container, s.image.unwrap_or_default()))
            .collect()
    }

    #[test]
    fn every_kind_has_its_pod_spec_where_kubernetes_puts_it() {
        let spec = json!({"containers": [{"name": "c", "image": "a"}],
                          "initContainers": [{"name": "i", "image": "b"}],
                          "ephemeralContainers": [{"name": "e", "image": "c"}]});
        let template = json!({"spec": {"template": {"spec": spec}}});
        for kind in [
            "Deployment",
            "ReplicaSet",
            "StatefulSet",
            "DaemonSet",
            "Job",
            "ReplicationController",
        ] {
            assert_eq!(images(kind, &template), ["c/a", "i/b", "e/c"], "{kind}");
        }
        assert_eq!(images("Pod", &json!({"spec": spec})), ["c/a", "i/b", "e/c"]);
        assert_eq!(
            images("PodTemplate", &json!({"template": {"spec": spec}})),
            ["c/a", "i/b", "e/c"]
        );
        let cron = json!({"spec": {"jobTemplate": {"spec": {"template": {"spec": spec}}}}});
        assert_eq!(images("CronJob", &cron), ["c/a", "i/b", "e/c"]);
        assert!(images("ConfigMap", &json!({"data": {"image": "x"}})).is_empty());
    }

    #[test]
    fn custom_resources_named_like_workloads_are_not_workloads() {
        assert!(is_workload("apps/v1", "Deployment"));
        assert!(is_workload("extensions/v1beta1", "DaemonSet"));
        assert!(is_workload("v1", "Pod"));
        assert!(is_workload("batch/v1", "CronJob"));
        assert!(!is_workload("example.com/v1", "Deployment"));
        assert!(!is_workload("apps/v1", "Pod"));
        assert!(!is_workload("v1", "ConfigMap"));
    }

    #[test]
    fn a_non_string_image_is_kept_as_invalid_and_a_missing_one_skipped() {
        let pod = json!({"metadata": {"name": "p", "namespace": "n"},
                         "spec": {"containers": [{"name": "a", "image": 5}, {"name": "b"}]}});
        let found = sightings("Pod", &pod, Some("f.yaml"));
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].image, None);
        assert_eq!(found[0].found_in.namespace.as_deref(), Some("n"));
        assert_eq!(found[0].found_in.file.as_deref(), Some("f.yaml"));
    }
}

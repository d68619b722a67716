//! Test fixtures: real registries, real tools, OCI images made here, and a builder that
//! runs the real `image-sync` binary.

pub mod containerd;
pub mod control_plane;
pub mod discover;
pub mod dns;
pub mod fault;
pub mod image;
pub mod registry;
pub mod runner;
pub mod tls_registry;

use std::path::{Path, PathBuf};

/// Set by CI: a missing tool fails the test instead of skipping it, so that a green run
/// always means the real tools ran.
pub const REQUIRE_TOOLS_VAR: &str = "IMAGE_SYNC_REQUIRE_TOOLS";

/// Finds an executable on PATH.
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// The paths of crane, skopeo and docker-registry, or `None` (the test is skipped) when one
/// is missing and CI did not require them. Under CI a missing tool panics.
pub fn tools() -> Option<Tools> {
    let found = (
        find_tool("crane"),
        find_tool("skopeo"),
        find_tool("docker-registry"),
    );
    match found {
        (Some(crane), Some(skopeo), Some(registry)) => Some(Tools {
            crane,
            skopeo,
            registry,
        }),
        _ => {
            let message = format!(
                "crane, skopeo and docker-registry are needed on PATH (found {found:?}); install them with scripts/install-test-tools"
            );
            assert!(std::env::var_os(REQUIRE_TOOLS_VAR).is_none(), "{message}");
            eprintln!("SKIPPED: {message}");
            None
        }
    }
}

/// The external tools a test uses.
#[derive(Debug, Clone)]
pub struct Tools {
    pub crane: PathBuf,
    pub skopeo: PathBuf,
    pub registry: PathBuf,
}

/// An upstream and a cache registry, both empty, with the tools.
pub struct Pair {
    pub tools: Tools,
    pub upstream: registry::Registry,
    pub cache: registry::Registry,
}

/// Starts a [`Pair`], or `None` (skip) when the tools are missing outside CI.
pub fn pair() -> Option<Pair> {
    let tools = tools()?;
    let upstream = registry::Registry::start(&tools);
    let cache = registry::Registry::start(&tools);
    Some(Pair {
        tools,
        upstream,
        cache,
    })
}

/// A `bin` directory under `dir` holding links to `tools`, for a PATH that offers only them.
pub fn bin_with(dir: &Path, tools: &[&Path]) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).expect("bin dir");
    for tool in tools {
        std::os::unix::fs::symlink(tool, bin.join(tool.file_name().expect("file name")))
            .expect("symlink");
    }
    bin
}

/// Writes an executable script (a shim in front of, or instead of, a tool).
pub fn write_script(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).expect("write script");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

/// An extra tool a test needs (`oras`, ...): its path, or `None` (skip) when it is missing
/// outside CI. Under CI (`IMAGE_SYNC_REQUIRE_TOOLS`) a missing tool panics.
pub fn extra_tool(name: &str) -> Option<PathBuf> {
    let found = find_tool(name);
    if found.is_none() {
        let message =
            format!("{name} is needed on PATH; install it with scripts/install-test-tools");
        assert!(std::env::var_os(REQUIRE_TOOLS_VAR).is_none(), "{message}");
        eprintln!("SKIPPED: {message}");
    }
    found
}

/// A path in the repository (`tests/discover`, `k8s/...`).
pub fn repo_path(relative: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(relative)
}

/// The text of a file in the repository; panics naming the file when it cannot be read.
pub fn repo_file(relative: &str) -> String {
    std::fs::read_to_string(repo_path(relative)).unwrap_or_else(|err| panic!("{relative}: {err}"))
}

/// Writes DIR/config.json, a Docker config holding USER:PASSWORD for HOST.
pub fn write_docker_config(dir: &Path, host: &str, user: &str, password: &str) {
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"));
    let config = serde_json::json!({"auths": {host: {"auth": auth}}});
    std::fs::write(dir.join("config.json"), config.to_string()).expect("write config.json");
}

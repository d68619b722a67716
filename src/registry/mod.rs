//! The registry layer: image-sync's own registry client (HTTP, auth, credentials), the
//! crane and skopeo command builders, and the one failure type every operation returns.
//! The rest of the program asks [`Toolbox`] for a digest or a copy and receives typed
//! answers.

pub mod auth;
pub mod client;
pub mod crane;
pub mod credentials;
pub mod docker_hub;
pub mod failure;
pub mod private_config;
pub mod quota;
pub mod skopeo;
pub mod tool_errors;
pub mod toolbox;

pub use client::{Listed, Referrer};
pub use failure::{Class, Failure, Side};
pub use toolbox::{Attempted, DigestCheck, Tool, Toolbox};

use std::path::PathBuf;

/// The first executable file called `name` in PATH.
pub fn find_on_path(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            std::fs::metadata(candidate)
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

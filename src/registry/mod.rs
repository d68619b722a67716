//! Registry operations (digest check, copy) carried out by crane, with skopeo as the
//! per-step fallback.

pub mod crane;
pub mod head;
pub mod skopeo;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Serialize;

use crate::credentials::Credentials;
use crate::failure::{Failure, FailureKind, classify};
use crate::process::{self, Cancel, CommandSpec, RunError};
use crate::reference::{Digest, Repository, Tag};
use crate::tls::{CopyRoute, TlsPolicy};
use head::{Checked, HeadChecker};

/// The tool that did a step.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tool {
    /// image-sync's own HEAD request (no child process).
    #[serde(rename = "image-sync")]
    Builtin,
    /// go-containerregistry's crane.
    Crane,
    /// skopeo.
    Skopeo,
}

impl Tool {
    /// The executable's name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Builtin => "image-sync",
            Self::Crane => "crane",
            Self::Skopeo => "skopeo",
        }
    }
}

/// The outcome of a step, and the last tool that tried it.
#[derive(Debug, Clone)]
pub struct Attempted<T> {
    /// The tool whose answer this is (`None` when no tool could run).
    pub tool: Option<Tool>,
    /// The value, or why the step failed.
    pub outcome: Result<T, Failure>,
}

/// The tools found on PATH and how to call them.
pub struct Toolbox {
    head: Option<HeadChecker>,
    crane: Option<PathBuf>,
    skopeo: Option<PathBuf>,
    authfile: Option<PathBuf>,
    tmpdir: PathBuf,
    tls: TlsPolicy,
}

impl Toolbox {
    /// Finds crane and skopeo on PATH and the credentials file crane would read.
    pub fn discover(tls: TlsPolicy) -> Self {
        let authfile = docker_config_file();
        Self {
            head: HeadChecker::new(tls.clone(), Credentials::load(authfile.as_deref())),
            crane: find_on_path("crane"),
            skopeo: find_on_path("skopeo"),
            authfile,
            tmpdir: std::env::temp_dir(),
            tls,
        }
    }

    /// crane's path, when found.
    pub fn crane(&self) -> Option<&Path> {
        self.crane.as_deref()
    }

    /// skopeo's path, when found.
    pub fn skopeo(&self) -> Option<&Path> {
        self.skopeo.as_deref()
    }

    /// The TLS policy in force.
    pub fn tls(&self) -> &TlsPolicy {
        &self.tls
    }

    /// Reads the digest of `repository:tag`: image-sync's own HEAD, else `crane digest`
    /// (HEAD), else `skopeo inspect --raw` (GET). A missing tag or repository is a
    /// definite failure.
    pub async fn digest(
        &self,
        repository: &Repository,
        tag: &Tag,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Attempted<Digest> {
        let reference = repository.with_tag(tag);
        if let Some(head) = &self.head {
            let mut cancel = cancel.clone();
            let checked = tokio::select! {
                checked = head.digest(repository, tag, timeout) => checked,
                _ = cancel.wait_for(|cancelled| *cancelled) => {
                    Checked::Failed(Failure::new(FailureKind::Interrupted, format!("HEAD {reference}")))
                }
            };
            match checked {
                Checked::Digest(digest) => {
                    return Attempted {
                        tool: Some(Tool::Builtin),
                        outcome: Ok(digest),
                    };
                }
                Checked::Failed(failure) => {
                    return Attempted {
                        tool: Some(Tool::Builtin),
                        outcome: Err(failure),
                    };
                }
                Checked::Delegate(why) => {
                    tracing::debug!(reference = %reference, why = %why, "digest check handed to crane")
                }
            }
        }
        let mut last = None;
        if let Some(crane) = &self.crane {
            let args =
                crane::digest_args(&reference, self.tls.crane_insecure_for(repository.host()));
            let what = format!("crane digest {reference}");
            let outcome = self
                .run(crane, args, timeout, cancel, &what, crane::error_line)
                .await
                .and_then(|stdout| {
                    crane::parse_digest(&stdout).ok_or_else(|| {
                        Failure::new(FailureKind::Other, format!("{what}: printed no digest"))
                    })
                });
            match outcome {
                Ok(digest) => {
                    return Attempted {
                        tool: Some(Tool::Crane),
                        outcome: Ok(digest),
                    };
                }
                Err(failure) if !failure.kind.worth_fallback() || self.skopeo.is_none() => {
                    return Attempted {
                        tool: Some(Tool::Crane),
                        outcome: Err(failure),
                    };
                }
                Err(failure) => last = Some(failure),
            }
        }
        let Some(skopeo) = &self.skopeo else {
            return no_tool();
        };
        if let Some(failure) = &last {
            tracing::warn!(reference = %reference, cause = %failure, "crane failed; retrying the digest check with skopeo (a manifest GET)");
        }
        let options = self.skopeo_options();
        let args = skopeo::inspect_args(
            &reference,
            self.tls.skopeo_verifies(repository.host()),
            &options,
        );
        let what = format!("skopeo inspect {reference}");
        let outcome = self
            .run(skopeo, args, timeout, cancel, &what, skopeo::error_line)
            .await
            .and_then(|stdout| {
                skopeo::digest_of_raw_manifest(&stdout).ok_or_else(|| {
                    Failure::new(FailureKind::Other, format!("{what}: printed no manifest"))
                })
            });
        Attempted {
            tool: Some(Tool::Skopeo),
            outcome,
        }
    }

    /// Copies `source@digest` to `target:tag`, every platform, keeping the digest.
    pub async fn copy(
        &self,
        source: &Repository,
        digest: &Digest,
        target: &Repository,
        tag: &Tag,
        timeout: Duration,
        cancel: &Cancel,
    ) -> Attempted<()> {
        let from = source.with_digest(digest);
        let to = target.with_tag(tag);
        let mut last = None;
        let route = self.tls.copy_route(source.host(), target.host());
        if let (
            Some(crane),
            CopyRoute::Crane {
                insecure,
                destination_host,
            },
        ) = (&self.crane, &route)
        {
            let crane_to = Repository::new(destination_host, target.path()).with_tag(tag);
            let args = crane::copy_args(&from, &crane_to, *insecure);
            let what = format!("crane copy {from} {crane_to}");
            match self
                .run(crane, args, timeout, cancel, &what, crane::error_line)
                .await
            {
                Ok(_) => {
                    return Attempted {
                        tool: Some(Tool::Crane),
                        outcome: Ok(()),
                    };
                }
                Err(failure) if !failure.kind.worth_fallback() || self.skopeo.is_none() => {
                    return Attempted {
                        tool: Some(Tool::Crane),
                        outcome: Err(failure),
                    };
                }
                Err(failure) => last = Some(failure),
            }
        }
        let Some(skopeo) = &self.skopeo else {
            return no_tool();
        };
        match &last {
            Some(failure) => {
                tracing::warn!(image = %from, cause = %failure, "crane failed; retrying the copy with skopeo")
            }
            None if self.crane.is_some() => {
                tracing::debug!(image = %from, "copying with skopeo: crane cannot reach the cache without weakening TLS towards the upstream")
            }
            None => {}
        }
        let options = self.skopeo_options();
        let args = skopeo::copy_args(
            &from,
            &to,
            self.tls.skopeo_verifies(source.host()),
            self.tls.skopeo_verifies(target.host()),
            &options,
        );
        let what = format!("skopeo copy {from} {to}");
        let outcome = self
            .run(skopeo, args, timeout, cancel, &what, skopeo::error_line)
            .await
            .map(drop);
        Attempted {
            tool: Some(Tool::Skopeo),
            outcome,
        }
    }

    fn skopeo_options(&self) -> skopeo::SkopeoOptions<'_> {
        skopeo::SkopeoOptions {
            authfile: self.authfile.as_deref(),
            tmpdir: Some(&self.tmpdir),
        }
    }

    /// Runs one tool command; a non-zero exit becomes a classified failure.
    async fn run(
        &self,
        program: &Path,
        args: Vec<String>,
        timeout: Duration,
        cancel: &Cancel,
        what: &str,
        error_line: impl Fn(&str) -> String,
    ) -> Result<Vec<u8>, Failure> {
        let spec = CommandSpec {
            program: program.to_owned(),
            args,
            env: Vec::new(),
            timeout,
        };
        match process::run(&spec, cancel).await {
            Ok(done) if done.success() => Ok(done.stdout),
            Ok(done) => {
                let line = error_line(&done.stderr);
                Err(Failure::new(classify(&line), format!("{what}: {line}")))
            }
            Err(RunError::TimedOut(after)) => Err(Failure::timed_out(after, what)),
            Err(RunError::Interrupted) => Err(Failure::new(FailureKind::Interrupted, what)),
            Err(RunError::Spawn(message)) => Err(Failure::new(FailureKind::Other, message)),
        }
    }
}

/// Reached only when neither tool is on PATH: a crane failure without skopeo returns early.
fn no_tool<T>() -> Attempted<T> {
    Attempted {
        tool: None,
        outcome: Err(Failure::new(
            FailureKind::NoTool,
            "neither crane nor skopeo is on PATH",
        )),
    }
}

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

/// The credentials file crane reads: `$DOCKER_CONFIG/config.json`, else
/// `~/.docker/config.json`; skopeo gets it explicitly so both tools agree.
fn docker_config_file() -> Option<PathBuf> {
    let candidate = match std::env::var_os("DOCKER_CONFIG") {
        Some(dir) => PathBuf::from(dir).join("config.json"),
        None => PathBuf::from(std::env::var_os("HOME")?)
            .join(".docker")
            .join("config.json"),
    };
    candidate.is_file().then_some(candidate)
}

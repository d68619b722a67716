//! Images made here: OCI layouts (a single manifest, or a multi-arch index) written to a
//! temp dir and pushed with real skopeo, so tests never depend on an outside registry.

use std::io::Write;
use std::path::Path;
use std::process::Command;

use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::Tools;

/// An OCI image layout on disk holding one tagged image (`latest`).
pub struct OciLayout {
    dir: tempfile::TempDir,
}

/// Which kind of image to make.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// An OCI index with linux/amd64 and linux/arm64 manifests.
    MultiArch,
    /// One OCI manifest (push it with `Format::DockerV2S2` for a Docker v2s2 manifest).
    Single,
}

/// Manifest format in the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Format {
    /// As made (OCI), digests preserved.
    Oci,
    /// Converted by skopeo to a Docker v2s2 manifest.
    DockerV2S2,
}

impl OciLayout {
    /// Makes an image whose content depends on `seed` (different seeds, different digests).
    /// `layer_bytes` pads the layer to at least that size.
    pub fn new(kind: Kind, seed: &str, layer_bytes: usize) -> Self {
        let layout = Self::empty();
        let top = match kind {
            Kind::Single => layout.write_manifest(seed, "amd64", layer_bytes),
            Kind::MultiArch => {
                let manifests: Vec<Value> = ["amd64", "arm64"]
                    .iter()
                    .map(|arch| {
                        let mut descriptor =
                            layout.write_manifest(&format!("{seed}-{arch}"), arch, layer_bytes);
                        descriptor["platform"] = json!({"architecture": arch, "os": "linux"});
                        descriptor
                    })
                    .collect();
                let index = json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.index.v1+json",
                    "manifests": manifests,
                });
                layout.write_blob(
                    "application/vnd.oci.image.index.v1+json",
                    &serde_json::to_vec(&index).expect("json"),
                )
            }
        };
        layout.tag_latest(top);
        layout
    }

    fn empty() -> Self {
        let dir = tempfile::tempdir().expect("layout dir");
        std::fs::create_dir_all(dir.path().join("blobs/sha256")).expect("blobs dir");
        std::fs::write(
            dir.path().join("oci-layout"),
            r#"{"imageLayoutVersion":"1.0.0"}"#,
        )
        .expect("oci-layout");
        Self { dir }
    }

    fn tag_latest(&self, mut top: Value) {
        top["annotations"] = json!({"org.opencontainers.image.ref.name": "latest"});
        let index = json!({"schemaVersion": 2, "manifests": [top]});
        std::fs::write(
            self.dir.path().join("index.json"),
            serde_json::to_vec(&index).expect("json"),
        )
        .expect("index.json");
    }

    /// An OCI index with one image per platform (`os/arch[/variant]`, layers of
    /// `layer_bytes`), and with `attestations` one buildx attestation manifest per platform
    /// (`unknown/unknown`, `vnd.docker.reference.digest` naming the platform's manifest).
    pub fn index(seed: &str, platforms: &[&str], attestations: bool, layer_bytes: usize) -> Self {
        let layout = Self::empty();
        let mut manifests = Vec::new();
        let mut attested = Vec::new();
        for platform in platforms {
            let parts: Vec<&str> = platform.split('/').collect();
            let mut descriptor =
                layout.write_manifest(&format!("{seed}-{platform}"), parts[1], layer_bytes);
            let mut described = json!({"os": parts[0], "architecture": parts[1]});
            if let Some(variant) = parts.get(2) {
                described["variant"] = json!(variant);
            }
            descriptor["platform"] = described;
            if attestations {
                let statement = layout.write_blob(
                    "application/vnd.in-toto+json",
                    format!("{{\"_type\":\"https://in-toto.io/Statement/v0.1\",\"seed\":\"{seed}-{platform}\"}}").as_bytes(),
                );
                let config = layout.write_blob("application/vnd.oci.image.config.v1+json", b"{\"architecture\":\"unknown\",\"os\":\"unknown\",\"config\":{},\"rootfs\":{\"type\":\"layers\",\"diff_ids\":[]}}");
                let manifest = json!({
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": config,
                    "layers": [statement],
                });
                let mut attestation = layout.write_blob(
                    "application/vnd.oci.image.manifest.v1+json",
                    &serde_json::to_vec(&manifest).expect("json"),
                );
                attestation["platform"] = json!({"os": "unknown", "architecture": "unknown"});
                attestation["annotations"] = json!({
                    "vnd.docker.reference.digest": descriptor["digest"],
                    "vnd.docker.reference.type": "attestation-manifest",
                });
                attested.push(attestation);
            }
            manifests.push(descriptor);
        }
        manifests.extend(attested);
        let index = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": manifests,
        });
        let top = layout.write_blob(
            "application/vnd.oci.image.index.v1+json",
            &serde_json::to_vec(&index).expect("json"),
        );
        layout.tag_latest(top);
        layout
    }

    fn write_manifest(&self, seed: &str, arch: &str, layer_bytes: usize) -> Value {
        let mut tar = tar::Builder::new(Vec::new());
        let mut content = format!("image-sync test layer {seed}\n").into_bytes();
        // Pseudo-random padding so that gzip cannot shrink a "large" layer to nothing.
        let mut state: u64 = seed.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
        });
        while content.len() < layer_bytes {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            content.extend_from_slice(&state.to_le_bytes());
        }
        let mut header = tar::Header::new_gnu();
        header.set_size(content.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        tar.append_data(&mut header, "seed.txt", content.as_slice())
            .expect("tar");
        let uncompressed = tar.into_inner().expect("tar bytes");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&uncompressed).expect("gzip");
        let layer = gz.finish().expect("gzip finish");
        let layer_descriptor =
            self.write_blob("application/vnd.oci.image.layer.v1.tar+gzip", &layer);
        let config = json!({
            "architecture": arch,
            "os": "linux",
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [sha256(&uncompressed)]},
        });
        let config_descriptor = self.write_blob(
            "application/vnd.oci.image.config.v1+json",
            &serde_json::to_vec(&config).expect("json"),
        );
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": config_descriptor,
            "layers": [layer_descriptor],
        });
        self.write_blob(
            "application/vnd.oci.image.manifest.v1+json",
            &serde_json::to_vec(&manifest).expect("json"),
        )
    }

    fn write_blob(&self, media_type: &str, bytes: &[u8]) -> Value {
        let digest = sha256(bytes);
        let hex = digest.trim_start_matches("sha256:");
        std::fs::write(self.dir.path().join("blobs/sha256").join(hex), bytes).expect("write blob");
        json!({"mediaType": media_type, "digest": digest, "size": bytes.len()})
    }

    /// The layout directory.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Pushes the image to `destination` (`host/repo:tag`) with skopeo, over plain HTTP.
    pub fn push(&self, tools: &Tools, destination: &str, format: Format) {
        self.push_as(tools, destination, format, None);
    }

    /// Pushes the image (OCI, digests kept) with the credentials of a Docker config file.
    pub fn push_with_authfile(&self, tools: &Tools, destination: &str, authfile: &Path) {
        self.push_as(tools, destination, Format::Oci, Some(authfile));
    }

    fn push_as(&self, tools: &Tools, destination: &str, format: Format, authfile: Option<&Path>) {
        let mut command = Command::new(&tools.skopeo);
        command.args(["copy", "--all", "--dest-tls-verify=false"]);
        match format {
            Format::Oci => command.arg("--preserve-digests"),
            Format::DockerV2S2 => command.args(["--format", "v2s2"]),
        };
        if let Some(authfile) = authfile {
            command.arg("--authfile").arg(authfile);
        }
        command
            .arg(format!("oci:{}:latest", self.path().display()))
            .arg(format!("docker://{destination}"));
        succeeded(&mut command, &format!("skopeo push to {destination}"));
    }
}

/// Makes an image and pushes it in one go.
pub fn push_new(tools: &Tools, kind: Kind, seed: &str, destination: &str, format: Format) {
    OciLayout::new(kind, seed, 64).push(tools, destination, format);
}

/// Pushes a small single-platform image to `host/REPO:1` for each repository (its name is
/// its seed, so each has its own digest).
pub fn push_singles(tools: &Tools, host: &str, repositories: &[&str]) {
    for repository in repositories {
        push_new(
            tools,
            Kind::Single,
            repository,
            &format!("{host}/{repository}:1"),
            Format::Oci,
        );
    }
}

/// Runs `command` (`what` it does, for the message); its stdout. Panics with its stderr
/// when it fails.
pub fn succeeded(command: &mut Command, what: &str) -> String {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("{what}: {err}"));
    assert!(
        output.status.success(),
        "{what} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs real crane with `args`; its stdout (panics with its stderr when it fails).
pub fn crane(tools: &Tools, args: &[&str]) -> String {
    succeeded(
        Command::new(&tools.crane).args(args),
        &format!("crane {args:?}"),
    )
}

/// The digest a registry holds for `reference`, read with real crane (`None`: missing).
pub fn digest_of(tools: &Tools, reference: &str) -> Option<String> {
    let output = Command::new(&tools.crane)
        .args(["digest", reference])
        .output()
        .expect("run crane");
    output
        .status
        .success()
        .then(|| String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The media type of the manifest a registry holds for `reference`.
pub fn media_type_of(tools: &Tools, reference: &str) -> String {
    let output = Command::new(&tools.crane)
        .args(["manifest", reference])
        .output()
        .expect("run crane");
    assert!(
        output.status.success(),
        "crane manifest {reference}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let manifest: Value = serde_json::from_slice(&output.stdout).expect("manifest json");
    manifest["mediaType"]
        .as_str()
        .unwrap_or_default()
        .to_owned()
}

fn sha256(bytes: &[u8]) -> String {
    let hash = Sha256::digest(bytes);
    format!(
        "sha256:{}",
        hash.iter().map(|b| format!("{b:02x}")).collect::<String>()
    )
}

//! An HTTPS Distribution registry on a free port, with a certificate made in the test: a
//! throwaway CA (its PEM file is what `SSL_CERT_FILE` should point at) signs a server
//! certificate for this machine's host name, `localhost` and 127.0.0.1.
//!
//! crane speaks plain HTTP by itself to `127.0.0.1` and `localhost`, so a TLS test must
//! reach the registry by a name it does not treat that way: this machine's host name
//! (`/proc/sys/kernel/hostname`), which /etc/hosts maps to 127.0.0.1. [`TlsRegistry::host`]
//! is `<hostname>:PORT`. Killed and reaped on drop, like [`super::registry::Registry`].
//!
//! ```ignore
//! let Some(tls) = TlsRegistry::start(&tools) else { return };
//! OciLayout::new(Kind::Single, "seed", 64).push(&tools, &format!("{}/demo/app:1", tls.host()), Format::Oci);
//! Command::new(&tools.crane)
//!     .args(["digest", &format!("{}/demo/app:1", tls.host())])
//!     .env("SSL_CERT_FILE", tls.ca_cert_path());
//! ```

use std::net::ToSocketAddrs;
use std::path::{Path, PathBuf};
use std::process::Child;

use super::Tools;
use super::image::{Kind, OciLayout};
use super::registry::{Counts, count_requests, free_port, parse_access_log, serve};

/// A running HTTPS registry.
pub struct TlsRegistry {
    child: Child,
    name: String,
    port: u16,
    dir: tempfile::TempDir,
}

impl TlsRegistry {
    /// Starts an anonymous HTTPS registry. `None` (the test should return: it is skipped)
    /// when this machine's host name does not resolve to 127.0.0.1 only, since then no name
    /// exists that crane would not speak plain HTTP to; under CI that panics instead.
    pub fn start(tools: &Tools) -> Option<Self> {
        let Some(name) = tls_host_name() else {
            let message = "this machine's host name does not resolve to 127.0.0.1 only (see /etc/hosts), so no TLS registry name is available";
            assert!(
                std::env::var_os(super::REQUIRE_TOOLS_VAR).is_none(),
                "{message}"
            );
            eprintln!("SKIPPED: {message}");
            return None;
        };
        let dir = tempfile::tempdir().expect("tls registry tempdir");
        write_certificates(dir.path(), &name);
        let port = free_port();
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {data}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n  tls:\n    certificate: {cert}\n    key: {key}\n",
            data = dir.path().join("data").display(),
            cert = dir.path().join("server.crt").display(),
            key = dir.path().join("server.key").display(),
        );
        let child = serve(tools, dir.path(), &config, port);
        Some(Self {
            child,
            name,
            port,
            dir,
        })
    }

    /// `<hostname>:PORT`: the name crane and skopeo must use (it is in the certificate).
    pub fn host(&self) -> String {
        format!("{}:{}", self.name, self.port)
    }

    /// The host name part of [`TlsRegistry::host`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The CA certificate (PEM) that signed the server certificate: point `SSL_CERT_FILE`
    /// at it for a Go tool that should trust the registry.
    pub fn ca_cert_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A directory holding only `ca.crt`, for skopeo's `--src-cert-dir`/`--dest-cert-dir`
    /// (and containers' `certs.d/<host>` layout).
    pub fn cert_dir(&self) -> PathBuf {
        self.dir.path().join("certs.d")
    }

    /// Makes an image from `seed` and pushes it to `reference` (on this registry) with
    /// skopeo, verifying TLS against the test CA.
    pub fn push_trusted(&self, tools: &Tools, kind: Kind, seed: &str, reference: &str) {
        let layout = OciLayout::new(kind, seed, 64);
        let output = std::process::Command::new(&tools.skopeo)
            .args(["copy", "--all", "--preserve-digests", "--dest-cert-dir"])
            .arg(self.cert_dir())
            .arg(format!("oci:{}:latest", layout.path().display()))
            .arg(format!("docker://{reference}"))
            .stdin(std::process::Stdio::null())
            .output()
            .expect("run skopeo");
        assert!(
            output.status.success(),
            "skopeo push over verified TLS: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Everything the registry logged (access log lines included).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Access-log request lines as (method, path, status).
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        parse_access_log(&self.access_log())
    }

    /// Request counts by kind.
    pub fn counts(&self) -> Counts {
        count_requests(&self.requests())
    }
}

impl Drop for TlsRegistry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// This machine's host name when it resolves to 127.0.0.1 and nothing else, and is not a
/// name crane speaks plain HTTP to by itself.
pub fn tls_host_name() -> Option<String> {
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()?
        .trim()
        .to_ascii_lowercase();
    if name.is_empty() || name == "localhost" || name.ends_with(".localhost") {
        return None;
    }
    let addresses: Vec<_> = (name.as_str(), 443).to_socket_addrs().ok()?.collect();
    let loopback_only = !addresses.is_empty()
        && addresses
            .iter()
            .all(|address| address.ip() == std::net::Ipv4Addr::LOCALHOST);
    loopback_only.then_some(name)
}

/// Writes `ca.pem`, `certs.d/ca.crt`, `server.crt` (the server certificate followed by
/// the CA) and `server.key` into `dir`.
fn write_certificates(dir: &Path, name: &str) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };

    let ca_key = KeyPair::generate().expect("generate the CA key");
    let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "image-sync test CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign the CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("generate the server key");
    let mut server_params = CertificateParams::new(vec![
        name.to_owned(),
        "localhost".to_owned(),
        "127.0.0.1".to_owned(),
    ])
    .expect("server params");
    server_params
        .distinguished_name
        .push(DnType::CommonName, name);
    server_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server_params
        .signed_by(&server_key, &issuer)
        .expect("sign the server certificate");

    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).expect("write ca.pem");
    std::fs::create_dir_all(dir.join("certs.d")).expect("certs.d");
    std::fs::write(dir.join("certs.d/ca.crt"), ca_cert.pem()).expect("write certs.d/ca.crt");
    std::fs::write(
        dir.join("server.crt"),
        format!("{}{}", server_cert.pem(), ca_cert.pem()),
    )
    .expect("write server.crt");
    std::fs::write(dir.join("server.key"), server_key.serialize_pem()).expect("write server.key");
}

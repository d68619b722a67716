//! A real Kubernetes control plane for the tests that list a cluster: etcd and
//! kube-apiserver (no kubelet, scheduler or controllers: objects are stored, nothing runs)
//! on free 127.0.0.1 ports, with certificates made here (rcgen), RBAC authorisation, and
//! an audit log that records every request, the API server's access log, from which tests
//! count the list requests (pages) a run made.
//!
//! The binaries come from `IMAGE_SYNC_K8S_BIN_DIR` (default `target/k8s-bin`), where
//! `tests/cluster/build-binaries` builds them. Missing binaries skip the test, or fail it
//! under `IMAGE_SYNC_REQUIRE_TOOLS`. Both processes are killed and reaped on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::registry::free_port;

/// Where the Kubernetes binaries are looked up.
pub const BIN_DIR_VAR: &str = "IMAGE_SYNC_K8S_BIN_DIR";

/// Bound on the API server becoming ready (about 15 s on an idle 2-core machine).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// A running etcd + kube-apiserver.
pub struct ControlPlane {
    etcd: Child,
    apiserver: Child,
    bin: PathBuf,
    port: u16,
    dir: tempfile::TempDir,
}

fn bin_dir() -> PathBuf {
    std::env::var_os(BIN_DIR_VAR).map_or_else(
        || Path::new(env!("CARGO_MANIFEST_DIR")).join("target/k8s-bin"),
        PathBuf::from,
    )
}

impl ControlPlane {
    /// Starts etcd and the API server and waits until `/readyz` answers. `None` (skip)
    /// when the binaries are missing outside CI.
    pub fn start() -> Option<Self> {
        let bin = bin_dir();
        let missing: Vec<&str> = ["etcd", "kube-apiserver", "kubectl"]
            .into_iter()
            .filter(|name| !bin.join(name).is_file())
            .collect();
        if !missing.is_empty() {
            let message = format!(
                "{missing:?} missing from {} (set {BIN_DIR_VAR}, or build them with tests/cluster/build-binaries)",
                bin.display()
            );
            assert!(
                std::env::var_os(super::REQUIRE_TOOLS_VAR).is_none(),
                "{message}"
            );
            eprintln!("SKIPPED: {message}");
            return None;
        }
        let dir = tempfile::tempdir().expect("control plane dir");
        let path = dir.path();
        write_certificates(path);
        std::fs::write(
            path.join("audit-policy.yaml"),
            "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n  - level: Metadata\n",
        )
        .expect("audit policy");
        let (client_port, peer_port, port) = (free_port(), free_port(), free_port());
        let log = |name: &str| std::fs::File::create(path.join(name)).expect("log file");
        let etcd = Command::new(bin.join("etcd"))
            .arg("--name=test")
            .arg(format!("--data-dir={}", path.join("etcd").display()))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=test=http://127.0.0.1:{peer_port}"
            ))
            .stdin(Stdio::null())
            .stdout(log("etcd.log"))
            .stderr(log("etcd.log"))
            .spawn()
            .expect("start etcd");
        let file = |name: &str| path.join(name).display().to_string();
        let apiserver = Command::new(bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg("--endpoint-reconciler-type=none")
            .arg(format!("--cert-dir={}", file("certs")))
            .arg(format!("--tls-cert-file={}", file("server.crt")))
            .arg(format!("--tls-private-key-file={}", file("server.key")))
            .arg(format!("--client-ca-file={}", file("ca.pem")))
            .arg(format!("--service-account-key-file={}", file("sa.pub")))
            .arg(format!(
                "--service-account-signing-key-file={}",
                file("sa.key")
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg("--service-cluster-ip-range=10.96.0.0/24")
            .arg("--authorization-mode=Node,RBAC")
            // No controller-manager creates the `default` ServiceAccounts pods would need.
            .arg("--disable-admission-plugins=ServiceAccount")
            .arg(format!("--audit-policy-file={}", file("audit-policy.yaml")))
            .arg(format!("--audit-log-path={}", file("audit.log")))
            .stdin(Stdio::null())
            .stdout(log("apiserver.log"))
            .stderr(log("apiserver.log"))
            .spawn()
            .expect("start kube-apiserver");
        let mut plane = Self {
            etcd,
            apiserver,
            bin,
            port,
            dir,
        };
        plane.write_kubeconfig("admin.kubeconfig", Auth::Certificate("admin"));
        plane.wait_ready();
        Some(plane)
    }

    fn wait_ready(&mut self) {
        let started = Instant::now();
        loop {
            if let Ok(Some(status)) = self.apiserver.try_wait() {
                panic!(
                    "kube-apiserver exited ({status}):\n{}",
                    self.log_tail("apiserver.log")
                );
            }
            let output = self.kubectl(&["get", "--raw", "/readyz"]);
            if output.status.success() {
                return;
            }
            assert!(
                started.elapsed() < READY_TIMEOUT,
                "kube-apiserver not ready after {READY_TIMEOUT:?}: {}\n{}",
                String::from_utf8_lossy(&output.stderr),
                self.log_tail("apiserver.log")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn log_tail(&self, name: &str) -> String {
        let text = std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// `https://127.0.0.1:PORT`.
    pub fn server(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// A kubeconfig of the cluster-admin identity (client certificate, `system:masters`).
    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("admin.kubeconfig")
    }

    /// Writes a kubeconfig named `name` for a ServiceAccount token and returns its path.
    pub fn token_kubeconfig(&self, name: &str, token: &str) -> PathBuf {
        self.write_kubeconfig(name, Auth::Token(token))
    }

    /// Writes a kubeconfig named `name` holding a fresh token (`kubectl create token`) of
    /// the ServiceAccount `account` in `namespace`, and returns its path.
    pub fn service_account_kubeconfig(
        &self,
        name: &str,
        namespace: &str,
        account: &str,
    ) -> PathBuf {
        let token = self.kubectl(&["create", "token", account, "-n", namespace]);
        assert!(
            token.status.success(),
            "kubectl create token: {}",
            String::from_utf8_lossy(&token.stderr)
        );
        let token = String::from_utf8(token.stdout).expect("token");
        self.token_kubeconfig(name, token.trim())
    }

    fn write_kubeconfig(&self, name: &str, auth: Auth<'_>) -> PathBuf {
        let path = self.dir.path().join(name);
        let user = match auth {
            Auth::Certificate(who) => format!(
                "    client-certificate: {}\n    client-key: {}\n",
                self.dir.path().join(format!("{who}.crt")).display(),
                self.dir.path().join(format!("{who}.key")).display()
            ),
            Auth::Token(token) => format!("    token: {token}\n"),
        };
        let text = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: {}\n    certificate-authority: {}\nusers:\n- name: user\n  user:\n{user}contexts:\n- name: test\n  context: {{cluster: test, user: user}}\ncurrent-context: test\n",
            self.server(),
            self.dir.path().join("ca.pem").display()
        );
        std::fs::write(&path, text).expect("write kubeconfig");
        path
    }

    /// Runs the real kubectl as the cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> Output {
        self.kubectl_as(&self.admin_kubeconfig(), args, None)
    }

    /// Runs kubectl with `kubeconfig`, feeding `stdin` when given.
    pub fn kubectl_as(&self, kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> Output {
        let mut child = Command::new(self.bin.join("kubectl"))
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .args(args)
            .stdin(if stdin.is_some() {
                Stdio::piped()
            } else {
                Stdio::null()
            })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        if let Some(text) = stdin {
            use std::io::Write as _;
            let mut pipe = child.stdin.take().expect("kubectl stdin");
            pipe.write_all(text.as_bytes())
                .expect("write kubectl stdin");
        }
        child.wait_with_output().expect("wait kubectl")
    }

    /// `kubectl apply -f -` of `yaml` as the admin; panics with kubectl's error on failure.
    pub fn apply(&self, yaml: &str) {
        let output = self.kubectl_as(&self.admin_kubeconfig(), &["apply", "-f", "-"], Some(yaml));
        assert!(
            output.status.success(),
            "kubectl apply: {}\n{yaml}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// The audit events so far (one JSON object per request, `ResponseComplete` stage).
    pub fn audit_events(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dir.path().join("audit.log"))
            .unwrap_or_default()
            .lines()
            .filter_map(|line| serde_json::from_str(line).ok())
            .collect()
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for child in [&mut self.apiserver, &mut self.etcd] {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

enum Auth<'a> {
    Certificate(&'a str),
    Token(&'a str),
}

/// A CA, the API server's serving certificate, the admin's client certificate
/// (`O=system:masters`) and the ServiceAccount signing key.
fn write_certificates(dir: &Path) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().expect("CA key");
    let mut ca_params = CertificateParams::new(Vec::new()).expect("CA params");
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "image-sync test cluster CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca_params.self_signed(&ca_key).expect("self-sign CA");
    let issuer = Issuer::new(ca_params, ca_key);

    let server_key = KeyPair::generate().expect("server key");
    let mut server = CertificateParams::new(vec![
        "127.0.0.1".to_owned(),
        "localhost".to_owned(),
        "kubernetes.default.svc".to_owned(),
    ])
    .expect("server params");
    server
        .distinguished_name
        .push(DnType::CommonName, "kube-apiserver");
    server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let server_cert = server.signed_by(&server_key, &issuer).expect("sign server");

    let admin_key = KeyPair::generate().expect("admin key");
    let mut admin = CertificateParams::new(Vec::new()).expect("admin params");
    admin.distinguished_name.push(DnType::CommonName, "admin");
    admin
        .distinguished_name
        .push(DnType::OrganizationName, "system:masters");
    admin.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    let admin_cert = admin.signed_by(&admin_key, &issuer).expect("sign admin");

    let sa_key = KeyPair::generate().expect("service account key");
    for (name, text) in [
        ("ca.pem", ca_cert.pem()),
        ("server.crt", server_cert.pem()),
        ("server.key", server_key.serialize_pem()),
        ("admin.crt", admin_cert.pem()),
        ("admin.key", admin_key.serialize_pem()),
        ("sa.key", sa_key.serialize_pem()),
        ("sa.pub", sa_key.public_key_pem()),
    ] {
        std::fs::write(dir.join(name), text).expect("write certificate");
    }
}

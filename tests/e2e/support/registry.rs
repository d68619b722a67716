//! A Distribution registry (`docker-registry serve`) on a free 127.0.0.1 port, with its
//! access log, killed and reaped on drop.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::Tools;

/// A running registry.
pub struct Registry {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Registry {
    /// An anonymous registry.
    pub fn start(tools: &Tools) -> Self {
        Self::start_with(tools, None)
    }

    /// A registry behind htpasswd basic auth for one user.
    pub fn start_with_auth(tools: &Tools, user: &str, password: &str) -> Self {
        Self::start_with(tools, Some((user, password)))
    }

    fn start_with(tools: &Tools, auth: Option<(&str, &str)>) -> Self {
        let dir = tempfile::tempdir().expect("registry tempdir");
        let port = free_port();
        let auth_section = match auth {
            Some((user, password)) => {
                let hash = bcrypt::hash(password, 5).expect("bcrypt");
                let htpasswd = dir.path().join("htpasswd");
                std::fs::write(&htpasswd, format!("{user}:{hash}\n")).expect("write htpasswd");
                format!(
                    "auth:\n  htpasswd:\n    realm: image-sync-test\n    path: {}\n",
                    htpasswd.display()
                )
            }
            None => String::new(),
        };
        let config = format!(
            "version: 0.1\nlog:\n  level: error\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n{auth_section}",
            dir.path().join("data").display()
        );
        let child = serve(tools, dir.path(), &config, port);
        Self { child, port, dir }
    }

    /// A registry that serves the OCI 1.1 referrers API, as Docker Hub and Zot do:
    /// go-containerregistry's registry (`tests/referrers-registry`, built by
    /// scripts/install-test-tools), with the same kind of access log. `None` (skip) when it
    /// is not installed, outside CI.
    pub fn start_with_referrers_api() -> Option<Self> {
        let binary = super::extra_tool(REFERRERS_REGISTRY)?;
        let dir = tempfile::tempdir().expect("registry tempdir");
        let port = free_port();
        let log_path = dir.path().join("access.log");
        let log = std::fs::File::create(&log_path).expect("access log");
        let child = Command::new(binary)
            .arg("-addr")
            .arg(format!("127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start the referrers registry");
        let child = wait_ready(child, port, &log_path);
        Some(Self { child, port, dir })
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Everything the registry logged (access log lines included).
    pub fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }

    /// Access-log request lines (`"METHOD /v2/... HTTP/1.1" STATUS`) as (method, path, status).
    pub fn requests(&self) -> Vec<(String, String, u16)> {
        parse_access_log(&self.access_log())
    }

    /// Request counts by kind: (manifest HEADs, manifest GETs, blob requests, writes).
    pub fn counts(&self) -> Counts {
        count_requests(&self.requests())
    }

    /// Panics with `why` and the request lines unless the registry has served `expected`
    /// manifest GETs (pulls) in all.
    pub fn expect_manifest_gets(&self, expected: usize, why: &str) {
        let requests = self.requests();
        assert_eq!(
            count_requests(&requests).manifest_gets,
            expected,
            "{why}: {requests:?}"
        );
    }
}

/// The `/v2/` request lines of a Distribution access log as (method, path, status).
pub fn parse_access_log(log: &str) -> Vec<(String, String, u16)> {
    log.lines()
        .filter_map(|line| {
            let quoted = line.split('"').nth(1)?;
            let mut parts = quoted.split(' ');
            let (method, path) = (parts.next()?, parts.next()?);
            let status = line
                .split('"')
                .nth(2)?
                .split_whitespace()
                .next()?
                .parse()
                .ok()?;
            path.starts_with("/v2/")
                .then(|| (method.to_owned(), path.to_owned(), status))
        })
        .collect()
}

/// Counts requests (as [`parse_access_log`] returns them) by kind.
pub fn count_requests(requests: &[(String, String, u16)]) -> Counts {
    let mut counts = Counts::default();
    for (method, path, _) in requests {
        match (
            method.as_str(),
            path.contains("/manifests/"),
            path.contains("/blobs/"),
        ) {
            ("HEAD", true, _) => counts.manifest_heads += 1,
            ("GET", true, _) => counts.manifest_gets += 1,
            (_, _, true) if matches!(method.as_str(), "GET" | "HEAD") => counts.blob_reads += 1,
            _ => {}
        }
        if matches!(method.as_str(), "PUT" | "POST" | "PATCH" | "DELETE") {
            counts.writes += 1;
        }
    }
    counts
}

/// Requests seen in an access log, by kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub manifest_heads: usize,
    pub manifest_gets: usize,
    pub blob_reads: usize,
    pub writes: usize,
}

impl std::ops::Sub for Counts {
    type Output = Counts;
    fn sub(self, before: Counts) -> Counts {
        Counts {
            manifest_heads: self.manifest_heads - before.manifest_heads,
            manifest_gets: self.manifest_gets - before.manifest_gets,
            blob_reads: self.blob_reads - before.blob_reads,
            writes: self.writes - before.writes,
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts `docker-registry serve` with `config` in `dir` (its log in `dir/access.log`) and
/// waits until `port` answers HTTP (a plain request to a TLS port gets a 400, enough to
/// know it listens).
pub fn serve(tools: &Tools, dir: &std::path::Path, config: &str, port: u16) -> Child {
    let config_path = dir.join("config.yml");
    std::fs::write(&config_path, config).expect("write registry config");
    let log_path = dir.join("access.log");
    let log = std::fs::File::create(&log_path).expect("access log");
    let child = Command::new(&tools.registry)
        .arg("serve")
        .arg(&config_path)
        .stdin(Stdio::null())
        .stdout(log.try_clone().expect("clone log"))
        .stderr(log)
        .spawn()
        .expect("start docker-registry");
    wait_ready(child, port, &log_path)
}

/// The test helper that serves the referrers API (`tests/referrers-registry`).
pub const REFERRERS_REGISTRY: &str = "image-sync-referrers-registry";

/// Waits until `port` answers HTTP; kills the child and panics with its log otherwise.
fn wait_ready(mut child: Child, port: u16, log_path: &std::path::Path) -> Child {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) {
            let _ = stream.write_all(b"GET /v2/ HTTP/1.0\r\n\r\n");
            let mut head = [0_u8; 12];
            if stream.read_exact(&mut head).is_ok() && head.starts_with(b"HTTP/1.") {
                return child;
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    let _ = child.wait();
    panic!(
        "registry on port {port} did not start; log:\n{}",
        std::fs::read_to_string(log_path).unwrap_or_default()
    );
}

/// A port nothing listens on right now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A socket that accepts connections and never answers: a hung registry.
pub struct HungSocket {
    port: u16,
    _thread: std::thread::JoinHandle<()>,
}

impl HungSocket {
    /// Starts accepting on a free port; connections are held open until the test ends.
    pub fn start() -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let thread = std::thread::spawn(move || {
            let mut held = Vec::new();
            for stream in listener.incoming().flatten() {
                held.push(stream);
            }
        });
        Self {
            port,
            _thread: thread,
        }
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
}

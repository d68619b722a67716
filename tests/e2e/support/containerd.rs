//! A real containerd (Debian's 1.6, run as root without systemd) with its own root, state
//! and socket under a temp dir, driven with `ctr`; killed and reaped on drop. With it, the
//! node side every containerd test sets up: registries and a containerd at once, and the
//! `hosts.toml` files `image-sync hosts-toml` writes.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use super::runner::ImageSync;
use super::{Pair, REQUIRE_TOOLS_VAR, find_tool};

/// The namespace the tests pull into.
const NAMESPACE: &str = "image-sync-test";

/// An upstream, a cache and a containerd; `None` (skip) when a tool is missing outside CI.
pub fn pair_and_containerd() -> Option<(Pair, Containerd)> {
    let pair = super::pair()?;
    Some((pair, Containerd::start()?))
}

/// Runs `image-sync hosts-toml --mirror MIRROR --dir DIR EXTRA...` for `config`: the files
/// a node's containerd reads from DIR.
pub fn hosts_toml(config: &str, mirror: &str, dir: &Path, extra: &[&str]) {
    ImageSync::new()
        .config(config)
        .arg("hosts-toml")
        .arg("--mirror")
        .arg(mirror)
        .arg("--dir")
        .arg(dir)
        .args(extra)
        .run()
        .expect_code(0);
}

/// A running containerd.
pub struct Containerd {
    child: Child,
    ctr: PathBuf,
    socket: PathBuf,
    dir: tempfile::TempDir,
}

/// What `ctr images check` says about a pulled image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pulled {
    /// The digest the image name points at (an index's digest for a multi-arch image).
    pub digest: String,
    /// Whether the layers were unpacked into a snapshot.
    pub unpacked: bool,
}

impl Containerd {
    /// Starts containerd, or returns `None` (the test is skipped) when containerd or ctr is
    /// missing or this is not root, outside CI. Under CI (`IMAGE_SYNC_REQUIRE_TOOLS`) that panics.
    pub fn start() -> Option<Self> {
        let found = (find_tool("containerd"), find_tool("ctr"));
        let root = {
            use std::os::unix::fs::MetadataExt;
            std::fs::metadata("/proc/self").is_ok_and(|meta| meta.uid() == 0)
        };
        let (Some(containerd), Some(ctr), true) = (found.0.clone(), found.1.clone(), root) else {
            let message = format!(
                "containerd and ctr are needed on PATH, run as root (found {found:?}, root: {root}); install them with scripts/install-test-tools"
            );
            assert!(std::env::var_os(REQUIRE_TOOLS_VAR).is_none(), "{message}");
            eprintln!("SKIPPED: {message}");
            return None;
        };
        let dir = tempfile::tempdir().expect("containerd dir");
        let socket = dir.path().join("containerd.sock");
        // The CRI plugin is not needed to pull; disabling it keeps start-up short and quiet.
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n[grpc]\n  address = \"{socket}\"\n\n[ttrpc]\n  address = \"{ttrpc}\"\n\n[debug]\n  address = \"{debug}\"\n\n[metrics]\n  address = \"\"\n",
            root = dir.path().join("root").display(),
            state = dir.path().join("state").display(),
            socket = socket.display(),
            ttrpc = dir.path().join("ttrpc.sock").display(),
            debug = dir.path().join("debug.sock").display(),
        );
        let config_path = dir.path().join("config.toml");
        std::fs::write(&config_path, config).expect("write containerd config");
        let log = std::fs::File::create(dir.path().join("containerd.log")).expect("log");
        let child = Command::new(containerd)
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log"))
            .stderr(log)
            .spawn()
            .expect("start containerd");
        let mut started = Self {
            child,
            ctr,
            socket,
            dir,
        };
        started.wait_ready();
        Some(started)
    }

    fn wait_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.ctr(&["version"]).status.success() {
                return;
            }
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("containerd exited ({status}); log:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("containerd did not answer in 20 s; log:\n{}", self.log());
    }

    /// containerd's own log.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("containerd.log")).unwrap_or_default()
    }

    /// Runs `ctr --address SOCK -n NAMESPACE ARGS`.
    pub fn ctr(&self, args: &[&str]) -> Output {
        Command::new(&self.ctr)
            .arg("--address")
            .arg(&self.socket)
            .args(["-n", NAMESPACE])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run ctr")
    }

    /// `ctr images pull --hosts-dir DIR REF`, unpacked with the `native` snapshotter (it
    /// works wherever overlayfs does not, e.g. inside a container).
    pub fn pull(&self, hosts_dir: &Path, reference: &str) -> Output {
        let hosts_dir = hosts_dir.to_str().expect("utf-8 hosts dir");
        self.ctr(&[
            "images",
            "pull",
            "--snapshotter",
            "native",
            "--hosts-dir",
            hosts_dir,
            reference,
        ])
    }

    /// Pulls `reference` and panics with ctr's and containerd's output unless it worked.
    pub fn pull_ok(&self, hosts_dir: &Path, reference: &str) -> Pulled {
        let output = self.pull(hosts_dir, reference);
        assert!(
            output.status.success(),
            "ctr pull {reference} failed:\n{}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        self.pulled(reference)
            .unwrap_or_else(|| panic!("{reference} pulled but not listed"))
    }

    /// What `ctr images check --snapshotter native` says about `reference`.
    pub fn pulled(&self, reference: &str) -> Option<Pulled> {
        let output = self.ctr(&["images", "check", "--snapshotter", "native"]);
        let text = String::from_utf8_lossy(&output.stdout).into_owned();
        text.lines().find_map(|line| {
            let columns: Vec<&str> = line.split_whitespace().collect();
            (columns.first() == Some(&reference)).then(|| Pulled {
                digest: columns.get(2).map(|d| (*d).to_owned()).unwrap_or_default(),
                unpacked: columns.last() == Some(&"true"),
            })
        })
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

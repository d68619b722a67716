//! A DNS server that fails on purpose, and a way to run a command that uses it.
//!
//! [`FailingDns`] answers every query on `127.0.0.77:53` (UDP) with `SERVFAIL` for names
//! that contain `servfail` (the resolver then says "temporary failure in name resolution"
//! / "server misbehaving": EAI_AGAIN) and `NXDOMAIN` for the others ("no such host").
//! [`FailingDns::wrap`] runs a command in its own mount namespace (`unshare --mount`, as
//! root) whose `/etc/resolv.conf` names only that server, so nothing outside the command
//! sees it. Stops on drop.

use std::net::UdpSocket;
use std::path::PathBuf;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

/// The address the server listens on (a loopback address of its own).
pub const ADDRESS: &str = "127.0.0.77:53";

/// A running failing DNS server.
pub struct FailingDns {
    stop: Arc<AtomicBool>,
    queries: Arc<AtomicUsize>,
    resolv_conf: tempfile::NamedTempFile,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl FailingDns {
    /// Starts the server; panics when the address cannot be bound (not root?).
    pub fn start() -> Self {
        let socket = UdpSocket::bind(ADDRESS).expect("bind 127.0.0.77:53 (the tests run as root)");
        socket
            .set_read_timeout(Some(Duration::from_millis(100)))
            .expect("read timeout");
        let stop = Arc::new(AtomicBool::new(false));
        let queries = Arc::new(AtomicUsize::new(0));
        let (thread_stop, thread_queries) = (Arc::clone(&stop), Arc::clone(&queries));
        let thread = std::thread::spawn(move || {
            let mut buffer = [0_u8; 512];
            while !thread_stop.load(Ordering::SeqCst) {
                let Ok((len, peer)) = socket.recv_from(&mut buffer) else {
                    continue;
                };
                thread_queries.fetch_add(1, Ordering::SeqCst);
                if let Some(answer) = answer(&buffer[..len]) {
                    let _ = socket.send_to(&answer, peer);
                }
            }
        });
        let mut resolv_conf = tempfile::NamedTempFile::new().expect("resolv.conf");
        std::io::Write::write_all(
            &mut resolv_conf,
            b"nameserver 127.0.0.77\noptions timeout:1 attempts:1\n",
        )
        .expect("write resolv.conf");
        Self {
            stop,
            queries,
            resolv_conf,
            thread: Some(thread),
        }
    }

    /// Queries answered so far.
    pub fn queries(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// `command`, run so that its name lookups go to this server only.
    pub fn wrap(&self, command: &Command) -> Command {
        let mut wrapped = Command::new("unshare");
        wrapped
            .args(["--mount", "--", "sh", "-c"])
            .arg("mount --bind \"$0\" /etc/resolv.conf && exec \"$@\"")
            .arg(self.resolv_conf.path())
            .arg(command.get_program())
            .args(command.get_args());
        for (key, value) in command.get_envs() {
            match value {
                Some(value) => wrapped.env(key, value),
                None => wrapped.env_remove(key),
            };
        }
        if let Some(dir) = command.get_current_dir() {
            wrapped.current_dir(dir);
        }
        wrapped
    }

    /// The resolv.conf the wrapped command sees.
    pub fn resolv_conf(&self) -> PathBuf {
        self.resolv_conf.path().to_owned()
    }
}

impl Drop for FailingDns {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The answer to one query: its header with QR, RA and the chosen RCODE, and its question.
fn answer(query: &[u8]) -> Option<Vec<u8>> {
    if query.len() < 12 {
        return None;
    }
    let mut name = String::new();
    let mut at = 12;
    while at < query.len() && query[at] != 0 {
        let len = usize::from(query[at]);
        let label = query.get(at + 1..at + 1 + len)?;
        name.push_str(&String::from_utf8_lossy(label));
        name.push('.');
        at += 1 + len;
    }
    let question_end = (at + 5).min(query.len());
    let rcode: u8 = if name.contains("servfail") { 2 } else { 3 };
    let mut reply = Vec::with_capacity(question_end);
    reply.extend_from_slice(&query[..2]);
    // QR=1, opcode 0, RD copied; RA=1, RCODE.
    reply.push(0x80 | (query[2] & 0x01));
    reply.push(0x80 | rcode);
    reply.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    reply.extend_from_slice(&query[12..question_end]);
    Some(reply)
}

//! The only place that spawns child processes.
//!
//! Every child gets a null stdin (or the bytes it is given), piped and drained stdout/stderr, its own process group
//! and `kill_on_drop` as a safety net. On timeout or interruption the whole group gets
//! SIGTERM, a short grace, then SIGKILL, and the child is always reaped.
//!
//! A child dies with image-sync, even when image-sync is SIGKILLed (nothing of its own
//! runs then): each child asks the kernel for SIGKILL when its parent goes
//! (`PR_SET_PDEATHSIG`, Linux). The kernel sends it when the *thread* that forked the child
//! exits, so every child is forked by one spawner thread that lives as long as the process
//! (a tokio worker or a helper's runtime thread may end before the child should). A child's
//! own children (a credential helper crane runs) are not covered: they are in its process
//! group, which the timeout and signal paths kill.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::Duration;

use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::sync::watch;

/// How long a child's group gets between SIGTERM and SIGKILL.
const KILL_GRACE: Duration = Duration::from_secs(2);

/// At most this much of a child's stdout is kept (a manifest is far smaller).
const MAX_STDOUT_BYTES: usize = 4 * 1024 * 1024;

/// At most this much of the end of a child's stderr is kept as evidence.
const MAX_STDERR_TAIL: usize = 16 * 1024;

/// How long a child's pipes are read after it exited: a grandchild that inherited them
/// (a credential helper's daemon) must not hold the step open.
const PIPE_GRACE: Duration = Duration::from_millis(500);

/// Children spawned by this process so far (tests and benchmarks read it from the log).
static SPAWNED: AtomicUsize = AtomicUsize::new(0);

/// Process groups of children not yet reaped, for [`kill_all_groups`] on a second signal.
static LIVE_GROUPS: Mutex<BTreeSet<i32>> = Mutex::new(BTreeSet::new());

/// A command described as data.
#[derive(Debug, Clone)]
pub struct CommandSpec {
    /// The executable (an absolute path found on PATH).
    pub program: PathBuf,
    /// Arguments, each validated before it got here.
    pub args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(OsString, OsString)>,
    /// Bytes written to the child's stdin (then closed); `None`: a null stdin.
    pub stdin: Option<Vec<u8>>,
    /// Bound on the whole run of the child.
    pub timeout: Duration,
}

/// What a child that ran to completion left behind.
#[derive(Debug, Clone)]
pub struct Finished {
    /// Exit code (`None` when a signal ended it).
    pub code: Option<i32>,
    /// Everything it wrote on stdout (bounded).
    pub stdout: Vec<u8>,
    /// The tail of its stderr, lossily decoded.
    pub stderr: String,
}

impl Finished {
    /// The child exited 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }
}

/// Why a child did not run to completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RunError {
    /// The executable could not be started.
    Spawn(String),
    /// It ran past its timeout and was killed.
    TimedOut(Duration),
    /// The run was interrupted by a signal and the child was killed.
    Interrupted,
}

/// A signal that stops the run; children watch it and are killed when it fires.
pub type Cancel = watch::Receiver<bool>;

/// Number of children spawned so far in this process.
pub fn spawned_count() -> usize {
    SPAWNED.load(Ordering::Relaxed)
}

/// SIGKILLs the process group of every child still running (the process is about to exit
/// at once, so nothing else would stop them).
pub fn kill_all_groups() {
    let groups = LIVE_GROUPS
        .lock()
        .map(|groups| groups.clone())
        .unwrap_or_default();
    for group in groups {
        let _ = killpg(Pid::from_raw(group), Signal::SIGKILL);
    }
}

/// Tracks a live process group until dropped (after the child is reaped).
struct LiveGroup(Option<i32>);

impl LiveGroup {
    fn new(pid: Option<Pid>) -> Self {
        let raw = pid.map(Pid::as_raw);
        if let (Some(raw), Ok(mut groups)) = (raw, LIVE_GROUPS.lock()) {
            groups.insert(raw);
        }
        Self(raw)
    }
}

impl Drop for LiveGroup {
    fn drop(&mut self) {
        if let (Some(raw), Ok(mut groups)) = (self.0, LIVE_GROUPS.lock()) {
            groups.remove(&raw);
        }
    }
}

/// Runs a command to completion, bounded by its timeout and by `cancel`.
pub async fn run(spec: &CommandSpec, cancel: &Cancel) -> Result<Finished, RunError> {
    if *cancel.borrow() {
        return Err(RunError::Interrupted);
    }
    let mut command = Command::new(&spec.program);
    command
        .args(&spec.args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .kill_on_drop(true);
    dies_with_this_process(&mut command);
    let mut child = spawn(command).await.map_err(|err| {
        RunError::Spawn(format!("cannot start {}: {err}", spec.program.display()))
    })?;
    let count = SPAWNED.fetch_add(1, Ordering::Relaxed) + 1;
    let pid = child
        .id()
        .and_then(|id| i32::try_from(id).ok())
        .map(Pid::from_raw);
    let _live = LiveGroup::new(pid);
    tracing::debug!(program = %spec.program.display(), args = ?spec.args, spawned = count, "spawned child");

    if let (Some(bytes), Some(mut stdin)) = (spec.stdin.clone(), child.stdin.take()) {
        tokio::spawn(async move {
            use tokio::io::AsyncWriteExt as _;
            // A child that exits without reading gives a broken pipe: not our failure.
            let _ = stdin.write_all(&bytes).await;
        });
    }
    let stdout = child
        .stdout
        .take()
        .map(|out| tokio::spawn(read_bounded(out, MAX_STDOUT_BYTES, false)));
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(read_bounded(err, MAX_STDERR_TAIL, true)));

    let mut cancel = cancel.clone();
    let outcome = tokio::select! {
        status = child.wait() => Ok(status),
        () = tokio::time::sleep(spec.timeout) => Err(RunError::TimedOut(spec.timeout)),
        () = wait_cancelled(&mut cancel) => Err(RunError::Interrupted),
    };
    let status = match outcome {
        Ok(status) => {
            status.map_err(|err| RunError::Spawn(format!("cannot wait for child: {err}")))?
        }
        Err(reason) => {
            terminate_group(&mut child, pid).await;
            return Err(reason);
        }
    };
    // The child is gone; whatever still holds its pipes is a grandchild in its group.
    let readers = [stdout, stderr];
    if tokio::time::timeout(PIPE_GRACE, readers_done(&readers))
        .await
        .is_err()
    {
        if let Some(pid) = pid {
            let _ = killpg(pid, Signal::SIGKILL);
        }
        let _ = tokio::time::timeout(PIPE_GRACE, readers_done(&readers)).await;
    }
    let [stdout, stderr] = readers;
    let (stdout, stderr) = (output_of(stdout).await, output_of(stderr).await);
    Ok(Finished {
        code: status.code(),
        stdout,
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    })
}

/// A command to fork on the spawner thread, in the caller's runtime.
struct SpawnRequest {
    command: Command,
    runtime: tokio::runtime::Handle,
    reply: tokio::sync::oneshot::Sender<std::io::Result<tokio::process::Child>>,
}

/// The spawner thread's queue (the thread runs as long as the process: the sender is
/// never dropped).
static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();

/// Forks `command` on the spawner thread (see the module documentation); in place when
/// that thread could not be started.
async fn spawn(mut command: Command) -> std::io::Result<tokio::process::Child> {
    let spawner = SPAWNER.get_or_init(|| {
        let (sender, requests) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("image-sync-spawner".to_owned())
            .spawn(move || {
                for request in requests {
                    let SpawnRequest {
                        mut command,
                        runtime,
                        reply,
                    } = request;
                    let _entered = runtime.enter();
                    let _ = reply.send(command.spawn());
                }
            })
            .map_err(|err| tracing::warn!(error = %err, "cannot start the spawner thread; children are forked by the runtime's threads"))
            .ok()
            .map(|_| sender)
    });
    let Some(spawner) = spawner else {
        return command.spawn();
    };
    let (reply, answer) = tokio::sync::oneshot::channel();
    let request = SpawnRequest {
        command,
        runtime: tokio::runtime::Handle::current(),
        reply,
    };
    if let Err(mpsc::SendError(request)) = spawner.send(request) {
        let mut command = request.command;
        return command.spawn();
    }
    answer
        .await
        .unwrap_or_else(|_| Err(std::io::Error::other("the spawner thread is gone")))
}

/// The child gets SIGKILL when this process dies (Linux: `PR_SET_PDEATHSIG`); a child
/// whose parent died before that took effect exits at once instead of running orphaned.
#[cfg(target_os = "linux")]
#[allow(unsafe_code)]
fn dies_with_this_process(command: &mut Command) {
    let parent = nix::unistd::Pid::from_raw(i32::try_from(std::process::id()).unwrap_or(0));
    // SAFETY: the closure runs in the forked child before exec and only makes two system
    // calls (prctl, getppid): async-signal-safe, no allocation, no lock.
    unsafe {
        command.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            if nix::unistd::getppid() != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

#[cfg(not(target_os = "linux"))]
fn dies_with_this_process(_command: &mut Command) {}

/// Returns once every pipe reader has finished.
async fn readers_done(readers: &[Option<tokio::task::JoinHandle<Vec<u8>>>]) {
    while readers.iter().flatten().any(|task| !task.is_finished()) {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// What a pipe reader read; nothing when it is still stuck (it is stopped).
async fn output_of(reader: Option<tokio::task::JoinHandle<Vec<u8>>>) -> Vec<u8> {
    match reader {
        Some(task) if task.is_finished() => task.await.unwrap_or_default(),
        Some(task) => {
            task.abort();
            Vec::new()
        }
        None => Vec::new(),
    }
}

async fn wait_cancelled(cancel: &mut Cancel) {
    // An Err means the sender is gone: nobody can cancel any more, so wait forever.
    if cancel.wait_for(|cancelled| *cancelled).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// SIGTERM the group, wait a grace period, SIGKILL it, and reap the child.
async fn terminate_group(child: &mut tokio::process::Child, pid: Option<Pid>) {
    if let Some(pid) = pid {
        // Errors mean the group is already gone, which is what we want.
        let _ = killpg(pid, Signal::SIGTERM);
        if tokio::time::timeout(KILL_GRACE, child.wait()).await.is_ok() {
            // The leader is gone; grandchildren in the group may linger.
            let _ = killpg(pid, Signal::SIGKILL);
            return;
        }
        let _ = killpg(pid, Signal::SIGKILL);
    }
    let _ = child.kill().await;
}

/// Reads a pipe to its end, keeping at most `limit` bytes: the head, or the tail.
async fn read_bounded(mut pipe: impl AsyncRead + Unpin, limit: usize, keep_tail: bool) -> Vec<u8> {
    let mut kept = Vec::new();
    let mut buffer = [0_u8; 8192];
    loop {
        match pipe.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                kept.extend_from_slice(&buffer[..n]);
                if kept.len() > limit {
                    if keep_tail {
                        kept.drain(..kept.len() - limit);
                    } else {
                        kept.truncate(limit);
                    }
                }
            }
        }
    }
    kept
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(program: &str, args: &[&str], timeout_ms: u64) -> CommandSpec {
        CommandSpec {
            program: PathBuf::from(program),
            args: args.iter().map(|s| s.to_string()).collect(),
            env: Vec::new(),
            stdin: None,
            timeout: Duration::from_millis(timeout_ms),
        }
    }

    #[tokio::test]
    async fn captures_output_and_exit_code() {
        let (_tx, cancel) = watch::channel(false);
        let done = run(
            &spec("/bin/sh", &["-c", "echo out; echo err >&2; exit 3"], 5_000),
            &cancel,
        )
        .await
        .expect("runs");
        assert_eq!(done.code, Some(3));
        assert_eq!(done.stdout, b"out\n");
        assert_eq!(done.stderr, "err\n");
    }

    #[tokio::test]
    async fn a_timeout_kills_the_whole_group() {
        let (_tx, cancel) = watch::channel(false);
        let dir = tempfile::tempdir().expect("tempdir");
        let marker = dir.path().join("grandchild.pid");
        let script = format!("sleep 30 & echo $! > {}; wait", marker.display());
        let result = run(&spec("/bin/sh", &["-c", &script], 300), &cancel).await;
        assert_eq!(
            result.expect_err("must fail"),
            RunError::TimedOut(Duration::from_millis(300))
        );
        let grandchild: i32 = std::fs::read_to_string(&marker)
            .expect("pid")
            .trim()
            .parse()
            .expect("number");
        // Signal 0 probes for existence; a zombie waiting for init to reap it counts as dead.
        let alive = || {
            nix::sys::signal::kill(Pid::from_raw(grandchild), None).is_ok()
                && !std::fs::read_to_string(format!("/proc/{grandchild}/stat"))
                    .unwrap_or_default()
                    .contains(") Z ")
        };
        for _ in 0..50 {
            if !alive() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        panic!("grandchild {grandchild} survived the timeout");
    }

    #[tokio::test]
    async fn cancellation_stops_a_running_child() {
        let (tx, cancel) = watch::channel(false);
        let handle =
            tokio::spawn(async move { run(&spec("/bin/sleep", &["30"], 60_000), &cancel).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        tx.send(true).expect("send");
        let result = tokio::time::timeout(Duration::from_secs(10), handle)
            .await
            .expect("stops")
            .expect("joins");
        assert_eq!(result.expect_err("must fail"), RunError::Interrupted);
    }

    #[tokio::test]
    async fn a_grandchild_holding_the_pipes_does_not_hold_the_step() {
        let (_tx, cancel) = watch::channel(false);
        let started = std::time::Instant::now();
        let done = run(
            &spec("/bin/sh", &["-c", "echo early; sleep 20 & exit 0"], 10_000),
            &cancel,
        )
        .await
        .expect("runs");
        assert!(done.success());
        assert_eq!(done.stdout, b"early\n", "what was written before is kept");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the pipes are read with a bound once the child exited: {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn stdin_bytes_reach_the_child() {
        let (_tx, cancel) = watch::channel(false);
        let mut with_input = spec("/bin/cat", &[], 5_000);
        with_input.stdin = Some(b"registry.example".to_vec());
        let done = run(&with_input, &cancel).await.expect("runs");
        assert_eq!(done.stdout, b"registry.example");
    }

    #[tokio::test]
    async fn a_missing_program_is_a_spawn_error() {
        let (_tx, cancel) = watch::channel(false);
        let result = run(&spec("/nonexistent/crane", &[], 1_000), &cancel).await;
        assert!(
            matches!(result, Err(RunError::Spawn(message)) if message.contains("/nonexistent/crane"))
        );
    }
}

//! Runs the real `image-sync` binary and returns its exit code, parsed report and stderr.

use std::ffi::OsString;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::Value;

/// A configured run of the binary.
pub struct ImageSync {
    dir: tempfile::TempDir,
    args: Vec<OsString>,
    env: Vec<(OsString, OsString)>,
    env_remove: Vec<OsString>,
}

/// What a run left behind.
#[derive(Debug)]
pub struct Outcome {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
    pub report: Option<Value>,
}

impl Outcome {
    /// The report; panics with the run's output when there is none.
    pub fn report(&self) -> &Value {
        self.report.as_ref().unwrap_or_else(|| {
            panic!(
                "no JSON report; stdout:\n{}\nstderr:\n{}",
                self.stdout, self.stderr
            )
        })
    }

    /// `results[i]`.
    pub fn result(&self, index: usize) -> &Value {
        &self.report()["results"][index]
    }

    /// The `action` of every result, in order.
    pub fn actions(&self) -> Vec<String> {
        self.report()["results"]
            .as_array()
            .expect("results array")
            .iter()
            .map(|r| r["action"].as_str().unwrap_or_default().to_owned())
            .collect()
    }

    /// Panics with the whole run output unless the exit code is `code`.
    pub fn expect_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.code, code,
            "exit code; stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    /// Panics with the whole run output unless the run exited with `code`, printed nothing
    /// on stdout and said `needle` on stderr.
    pub fn expect_error(&self, code: i32, needle: &str) -> &Self {
        self.expect_code(code);
        assert!(self.stdout.is_empty(), "stdout:\n{}", self.stdout);
        assert!(self.stderr.contains(needle), "{}", self.stderr);
        self
    }
}

impl ImageSync {
    /// A run with a fresh working directory.
    pub fn new() -> Self {
        Self {
            dir: tempfile::tempdir().expect("run dir"),
            args: Vec::new(),
            env: vec![("RUST_LOG".into(), "info".into())],
            env_remove: vec!["IMAGE_SYNC_CONFIG".into(), "DOCKER_CONFIG".into()],
        }
    }

    /// Writes `yaml` as the config and passes `--config` to it.
    pub fn config(mut self, yaml: &str) -> Self {
        let path = self.write("config.yaml", yaml.as_bytes());
        self.args.extend(["--config".into(), path.into_os_string()]);
        self
    }

    /// Writes a file into the run's directory and returns its path.
    pub fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).expect("write file");
        path
    }

    /// The run's directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Adds an argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Self {
        self.args.push(arg.into());
        self
    }

    /// Adds arguments.
    pub fn args<I: Into<OsString>>(mut self, args: impl IntoIterator<Item = I>) -> Self {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }

    /// Removes a variable from the binary's environment.
    pub fn without_env(mut self, key: impl Into<OsString>) -> Self {
        self.env_remove.push(key.into());
        self
    }

    /// Runs the binary to completion.
    pub fn run(self) -> Outcome {
        let output = self
            .command()
            .stdin(Stdio::null())
            .output()
            .expect("run image-sync");
        outcome(output)
    }

    /// Runs the binary to completion, killing it (and failing the test) when it runs past
    /// `limit`: for answers that must never make a run hang.
    pub fn run_within(self, limit: std::time::Duration) -> Outcome {
        let stdout_path = self.dir.path().join("bounded.stdout");
        let stderr_path = self.dir.path().join("bounded.stderr");
        // Files, not pipes: a child blocked on a full pipe would look like a hang.
        let mut child = self
            .command()
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&stdout_path).expect("stdout file"))
            .stderr(std::fs::File::create(&stderr_path).expect("stderr file"))
            .spawn()
            .expect("spawn image-sync");
        let started = std::time::Instant::now();
        let status = loop {
            if let Some(status) = child.try_wait().expect("poll image-sync") {
                break status;
            }
            if started.elapsed() > limit {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "image-sync still running after {limit:?}; killed. stderr:\n{}",
                    std::fs::read_to_string(&stderr_path).unwrap_or_default()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        outcome(std::process::Output {
            status,
            stdout: std::fs::read(&stdout_path).expect("read stdout"),
            stderr: std::fs::read(&stderr_path).expect("read stderr"),
        })
    }

    /// Runs the binary to completion with `stdin` piped in.
    pub fn run_with_stdin(self, stdin: &[u8]) -> Outcome {
        let mut child = self
            .command()
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn image-sync");
        let mut pipe = child.stdin.take().expect("stdin");
        pipe.write_all(stdin).expect("write stdin");
        drop(pipe);
        outcome(child.wait_with_output().expect("wait image-sync"))
    }

    /// Starts the binary with piped output, for tests that signal the running process;
    /// finish with `runner::outcome(child.wait_with_output()?)`.
    pub fn spawn(&self) -> std::process::Child {
        self.command()
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn image-sync")
    }

    /// The command.
    pub fn command(&self) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_image-sync"));
        command.args(&self.args).current_dir(self.dir.path());
        for key in &self.env_remove {
            command.env_remove(key);
        }
        for (key, value) in &self.env {
            command.env(key, value);
        }
        command
    }
}

/// Parses a finished process's output.
pub fn outcome(output: std::process::Output) -> Outcome {
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    let report = serde_json::from_str(&stdout).ok();
    Outcome {
        code: output.status.code().unwrap_or(-1),
        stdout,
        stderr,
        report,
    }
}

#![allow(dead_code)]
//! Child processes for the crash campaigns: this test binary run again as one `#[ignore]`d test,
//! its stdout read line by line as it comes, its stderr kept in a file, so that a child that
//! fails says why.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// A running child.
pub struct Child {
    proc: std::process::Child,
    lines: Arc<Mutex<Vec<String>>>,
    reader: Option<JoinHandle<()>>,
    stderr: PathBuf,
}

/// How a child ended.
pub struct Ended {
    pub status: ExitStatus,
    /// Its stdout, line by line.
    pub lines: Vec<String>,
    /// Its stderr.
    pub stderr: String,
    /// It had exited before it was killed.
    pub exited_early: bool,
}

impl Ended {
    /// The child's stderr, for a failure message.
    pub fn report(&self) -> String {
        format!(
            "child {} with stdout:\n{}\nstderr:\n{}",
            self.status,
            self.lines.join("\n"),
            self.stderr
        )
    }
}

/// Run test `test` of this binary as a child, with `env`, its stderr going to `stderr`.
pub fn spawn(test: &str, env: &[(&str, String)], stderr: &Path) -> Child {
    let err = std::fs::File::create(stderr).expect("create the child's stderr file");
    let mut cmd = Command::new(std::env::current_exe().expect("this test binary"));
    cmd.args([
        "--ignored",
        "--exact",
        test,
        "--nocapture",
        "--test-threads=1",
    ])
    .stdout(Stdio::piped())
    .stderr(err);
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut proc = cmd.spawn().expect("spawn the child");
    let lines = Arc::new(Mutex::new(Vec::new()));
    let stdout = proc.stdout.take().expect("piped stdout");
    let sink = lines.clone();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            sink.lock().expect("lines").push(line);
        }
    });
    Child {
        proc,
        lines,
        reader: Some(reader),
        stderr: stderr.to_path_buf(),
    }
}

impl Child {
    /// Stdout lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.lines.lock().expect("lines").clone()
    }

    /// Sleep up to `d`, returning early if the child exits.
    pub fn sleep(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while Instant::now() < end {
            if matches!(self.proc.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(2).min(end - Instant::now()));
        }
    }

    /// SIGKILL the child (if it still runs) and collect what it said.
    pub fn kill(mut self) -> Ended {
        let exited_early = matches!(self.proc.try_wait(), Ok(Some(_)));
        if !exited_early {
            self.proc.kill().expect("SIGKILL the child");
        }
        self.finish(exited_early)
    }

    /// Wait for the child to exit by itself.
    pub fn wait(self) -> Ended {
        self.finish(true)
    }

    fn finish(mut self, exited_early: bool) -> Ended {
        let status = self.proc.wait().expect("wait for the child");
        if let Some(r) = self.reader.take() {
            r.join().expect("stdout reader");
        }
        Ended {
            status,
            lines: self.lines(),
            stderr: std::fs::read_to_string(&self.stderr).unwrap_or_default(),
            exited_early,
        }
    }
}

/// In a child: arm failpoint `SIREN_FAILPOINT` (if set) to abort the process at its
/// `SIREN_FAILPOINT_HIT`-th hit (default 1), saying so on stderr first.
pub fn arm_failpoint_from_env() {
    let Ok(name) = std::env::var("SIREN_FAILPOINT") else {
        return;
    };
    let at: usize = std::env::var("SIREN_FAILPOINT_HIT")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1);
    let hits = std::sync::atomic::AtomicUsize::new(0);
    let label = name.clone();
    fail::cfg_callback(name, move || {
        if hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1 == at {
            eprintln!("{}", failpoint_message(&label));
            std::process::abort();
        }
    })
    .expect("a failpoint name");
}

/// What a child prints on stderr when an armed failpoint kills it.
pub fn failpoint_message(name: &str) -> String {
    format!("failpoint {name} hit: aborting")
}

/// The failpoints the engine has (see `fail::fail_point!` in engine/src).
pub const FAILPOINTS: [&str; 6] = [
    "compaction::after_stubs",
    "segment::after_rename",
    "compaction::after_commit",
    "watermark::before_write",
    "compaction::between_deletions",
    "recovery::between_deletions",
];

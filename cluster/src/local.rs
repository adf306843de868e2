//! NATS JetStream servers on this machine's loopback, for `siren cluster up`, the tests and the
//! benchmark: each server gets free ports, its own directory, `sync_interval: always`, and is
//! stopped by its process id.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// The server version `scripts/setup.sh` installs.
pub const PINNED_VERSION: &str = "2.15.1";
/// Older servers lose whole streams after process crashes (Jepsen, fixed in 2.10.23).
pub const MIN_VERSION: (u32, u32, u32) = (2, 10, 23);
/// Names the binary to use, ahead of every other place.
pub const SERVER_ENV: &str = "SIREN_NATS_SERVER";

/// Finds a `nats-server` of at least [`MIN_VERSION`]: `$SIREN_NATS_SERVER`, then where
/// `scripts/setup.sh` installs it (`target/tools/nats-server-<version>/bin`, next to the build),
/// then the `PATH`.
pub fn server_binary() -> Result<PathBuf> {
    let mut candidates: Vec<PathBuf> = Vec::new();
    if let Some(p) = std::env::var_os(SERVER_ENV) {
        let p = PathBuf::from(p);
        check_version(&p)?;
        return Ok(p);
    }
    let tail = format!("tools/nats-server-{PINNED_VERSION}/bin/nats-server");
    candidates.push(
        Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../target")
            .join(&tail),
    );
    if let Ok(exe) = std::env::current_exe() {
        // target/<profile>/siren and target/<profile>/deps/<test>.
        for up in exe.ancestors().skip(1).take(3) {
            candidates.push(up.join(&tail));
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("nats-server")));
    }
    let mut refused = Vec::new();
    for c in candidates.into_iter().filter(|c| c.is_file()) {
        match check_version(&c) {
            Ok(()) => return Ok(c),
            Err(e) => refused.push(e.to_string()),
        }
    }
    Err(Error::Server(format!(
        "no nats-server {}.{}.{} or newer found (run scripts/setup.sh, or set {SERVER_ENV}){}",
        MIN_VERSION.0,
        MIN_VERSION.1,
        MIN_VERSION.2,
        if refused.is_empty() {
            String::new()
        } else {
            format!("; refused: {}", refused.join("; "))
        }
    )))
}

/// Runs `nats-server --version` and checks it against [`MIN_VERSION`].
pub fn check_version(bin: &Path) -> Result<()> {
    let out = Command::new(bin)
        .arg("--version")
        .output()
        .map_err(|e| Error::Server(format!("{}: {e}", bin.display())))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .trim()
        .rsplit('v')
        .next()
        .and_then(parse_version)
        .ok_or_else(|| {
            Error::Server(format!(
                "{} printed {:?}, not a version",
                bin.display(),
                text.trim()
            ))
        })?;
    if version < MIN_VERSION {
        return Err(Error::Server(format!(
            "{} is version {}.{}.{}; versions before {}.{}.{} lose streams after crashes",
            bin.display(),
            version.0,
            version.1,
            version.2,
            MIN_VERSION.0,
            MIN_VERSION.1,
            MIN_VERSION.2
        )));
    }
    Ok(())
}

fn parse_version(s: &str) -> Option<(u32, u32, u32)> {
    let mut it = s.split('.').map(|p| p.parse::<u32>().ok());
    Some((it.next()??, it.next()??, it.next()??))
}

/// A port nobody listens on right now. Another process may take it before the server binds it;
/// [`LocalJetStream::start`] then picks new ports and tries again.
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").map_err(|e| Error::io("127.0.0.1:0", e))?;
    Ok(l.local_addr()
        .map_err(|e| Error::io("127.0.0.1:0", e))?
        .port())
}

/// How local servers run.
#[derive(Debug, Clone, Copy)]
pub struct LocalOptions {
    /// Each server gets SIGKILL when the thread that started it exits (for tests, so that a
    /// failed test leaves nothing running).
    pub die_with_parent: bool,
    /// `sync_interval: always` (fsync before acknowledging). Off only to measure what it costs.
    pub sync_always: bool,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            die_with_parent: false,
            sync_always: true,
        }
    }
}

/// One `nats-server` process.
pub struct LocalServer {
    pub name: String,
    pub client_port: u16,
    pub cluster_port: u16,
    pub monitor_port: u16,
    pub dir: PathBuf,
    binary: PathBuf,
    options: LocalOptions,
    child: Option<Child>,
}

impl LocalServer {
    /// `nats://127.0.0.1:<client port>`.
    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.client_port)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    fn config_path(&self) -> PathBuf {
        self.dir.join("server.conf")
    }

    fn write_config(&self, cluster_name: &str, routes: &[u16]) -> Result<()> {
        let mut conf = format!(
            "server_name: {name}\nlisten: \"127.0.0.1:{client}\"\nhttp: \"127.0.0.1:{monitor}\"\n\
             log_file: \"{dir}/server.log\"\npid_file: \"{dir}/server.pid\"\n\
             jetstream {{\n  store_dir: \"{dir}/jetstream\"\n{sync}  \
             max_memory_store: 1GB\n  max_file_store: 64GB\n}}\n",
            name = self.name,
            client = self.client_port,
            monitor = self.monitor_port,
            dir = self.dir.display(),
            sync = if self.options.sync_always {
                "  sync_interval: always\n"
            } else {
                ""
            },
        );
        if !routes.is_empty() {
            let routes: Vec<String> = routes
                .iter()
                .map(|p| format!("\"nats-route://127.0.0.1:{p}\""))
                .collect();
            conf.push_str(&format!(
                "cluster {{\n  name: {cluster_name}\n  listen: \"127.0.0.1:{}\"\n  routes: [{}]\n}}\n",
                self.cluster_port,
                routes.join(", ")
            ));
        }
        std::fs::write(self.config_path(), conf).map_err(|e| Error::io(self.config_path(), e))
    }

    /// Starts the process (again, after a kill: same ports, same data).
    pub fn start(&mut self) -> Result<()> {
        if self.is_running() {
            return Ok(());
        }
        let mut cmd = Command::new(&self.binary);
        cmd.arg("-c")
            .arg(self.config_path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        if self.options.die_with_parent {
            use std::os::unix::process::CommandExt;
            // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
            unsafe {
                cmd.pre_exec(|| {
                    libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                    Ok(())
                });
            }
        }
        let child = cmd
            .spawn()
            .map_err(|e| Error::Server(format!("{}: {e}", self.binary.display())))?;
        self.child = Some(child);
        Ok(())
    }

    /// `kill -9` of the process, by its id, and waits for it to be gone.
    pub fn kill(&mut self) -> Result<()> {
        self.signal(libc::SIGKILL)
    }

    /// A clean stop (SIGTERM: the server flushes and leaves the cluster), by process id.
    pub fn stop(&mut self) -> Result<()> {
        self.signal(libc::SIGTERM)
    }

    fn signal(&mut self, sig: i32) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        if child.try_wait().ok().flatten().is_none() {
            // SAFETY: plain kill(2) on the id of a child this process started and has not reaped.
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
        }
        child
            .wait()
            .map_err(|e| Error::Server(format!("waiting for {}: {e}", self.name)))?;
        Ok(())
    }

    /// The monitoring endpoint's answer to `GET path`, if it answers 200.
    pub fn monitor(&self, path: &str) -> Option<String> {
        http_get(self.monitor_port, path)
    }
}

impl Drop for LocalServer {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}

/// A minimal HTTP/1.0 GET against the server's monitoring port.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let (head, body) = out.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.1 200")
        .then(|| body.to_string())
        .or_else(|| head.starts_with("HTTP/1.0 200").then(|| body.to_string()))
}

/// A JetStream cluster of `n` servers (or one standalone server) on loopback.
pub struct LocalJetStream {
    pub servers: Vec<LocalServer>,
}

impl LocalJetStream {
    /// Starts `n` servers under `dir` and waits until JetStream is ready (a meta leader is
    /// elected when `n > 1`).
    pub fn start(dir: &Path, n: usize, options: LocalOptions) -> Result<LocalJetStream> {
        let binary = server_binary()?;
        let mut last = None;
        for _attempt in 0..3 {
            match Self::try_start(&binary, dir, n, options) {
                Ok(js) => return Ok(js),
                Err(e) => last = Some(e),
            }
        }
        Err(last.expect("tried at least once"))
    }

    fn try_start(binary: &Path, dir: &Path, n: usize, options: LocalOptions) -> Result<Self> {
        let mut servers = Vec::with_capacity(n);
        for i in 0..n {
            let sdir = dir.join(format!("nats-{}", i + 1));
            std::fs::create_dir_all(&sdir).map_err(|e| Error::io(&sdir, e))?;
            servers.push(LocalServer {
                name: format!("nats-{}", i + 1),
                client_port: free_port()?,
                cluster_port: free_port()?,
                monitor_port: free_port()?,
                dir: sdir,
                binary: binary.to_path_buf(),
                options,
                child: None,
            });
        }
        let cluster_ports: Vec<u16> = servers.iter().map(|s| s.cluster_port).collect();
        for s in &servers {
            let routes: Vec<u16> = if n > 1 {
                cluster_ports
                    .iter()
                    .copied()
                    .filter(|p| *p != s.cluster_port)
                    .collect()
            } else {
                Vec::new()
            };
            s.write_config("siren", &routes)?;
        }
        for s in &mut servers {
            s.start()?;
        }
        let js = LocalJetStream { servers };
        js.wait_ready(Duration::from_secs(60))?;
        Ok(js)
    }

    pub fn urls(&self) -> Vec<String> {
        self.servers.iter().map(LocalServer::url).collect()
    }

    /// Waits until every running server answers its health check and, in a cluster, reports a
    /// JetStream meta leader.
    pub fn wait_ready(&self, timeout: Duration) -> Result<()> {
        let start = Instant::now();
        loop {
            // /healthz answers 200 once JetStream is up and, in a cluster, current with the
            // meta leader.
            let ready = self.servers.iter().all(|s| {
                s.monitor("/healthz").is_some()
                    && (self.servers.len() == 1
                        || s.monitor("/jsz").is_some_and(|b| has_meta_leader(&b)))
            });
            if ready {
                return Ok(());
            }
            if start.elapsed() > timeout {
                return Err(Error::timeout("the JetStream servers to be ready", timeout));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Stops every server by process id (SIGTERM).
    pub fn stop(&mut self) -> Result<()> {
        for s in &mut self.servers {
            s.stop()?;
        }
        Ok(())
    }
}

fn has_meta_leader(jsz: &str) -> bool {
    serde_json::from_str::<serde_json::Value>(jsz)
        .ok()
        .and_then(|v| {
            v.get("meta_cluster")?
                .get("leader")?
                .as_str()
                .map(str::to_owned)
        })
        .is_some_and(|l| !l.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse() {
        assert_eq!(parse_version("2.15.1"), Some((2, 15, 1)));
        assert_eq!(parse_version("2.10"), None);
        assert!((2, 9, 10) < MIN_VERSION && (2, 10, 23) >= MIN_VERSION);
        assert!(has_meta_leader(r#"{"meta_cluster":{"leader":"nats-2"}}"#));
        assert!(!has_meta_leader(r#"{"meta_cluster":{"leader":""}}"#));
        assert!(!has_meta_leader(r#"{"config":{}}"#));
    }
}

//! What the cluster test and the cluster benchmark share: `siren cluster up` on a `siren demo`'s
//! data and model, the check for the NATS server, the demo's data as request bodies, and the
//! `read_after` tokens of writes.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{json, Value};
use siren_engine::{Db, Event, Options, ReadRange};

pub fn siren() -> Command {
    Command::new(env!("CARGO_BIN_EXE_siren"))
}

/// The pinned NATS server, or `None` (printing why); with `CI` set a missing one fails.
pub fn nats_available() -> bool {
    match siren_cluster::local::server_binary() {
        Ok(_) => true,
        Err(e) if std::env::var_os("CI").is_some() => {
            panic!("CI is set and the NATS server is missing: {e}")
        }
        Err(e) => {
            eprintln!("skipped: {e}");
            false
        }
    }
}

/// `siren cluster up`, stopped with SIGTERM (by process id) when dropped.
pub struct Up {
    child: Child,
    manifest: Value,
}

impl Up {
    /// `siren cluster up` in `dir` with the demo's database shape, model and codebook, and
    /// `args` (ports, partitions, nodes, timings); returns once it says it is ready.
    pub fn start(dir: &Path, demo: &Path, args: &[&str]) -> Up {
        let data = demo.join("data");
        let mut child = siren()
            .args(["cluster", "up"])
            .args(args)
            .arg("--dir")
            .arg(dir)
            .arg("--like-db")
            .arg(data.join("db"))
            .arg("--model")
            .arg(demo.join("model"))
            .arg("--codebook")
            .arg(data.join("codebook.bin"))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut said = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            said.push_str(&line);
            said.push('\n');
            if line.starts_with("ready") {
                break;
            }
        }
        if !said.contains("ready") {
            print_log_tails(dir);
            panic!("siren cluster up said:\n{said}");
        }
        print!("{said}");
        // Keep reading what it says until it exits.
        std::thread::spawn(move || lines.for_each(|l| println!("{}", l.unwrap_or_default())));
        let manifest = std::fs::read(dir.join("cluster.json")).unwrap();
        Up {
            child,
            manifest: serde_json::from_slice(&manifest).unwrap(),
        }
    }

    /// The URL and process id of the `i`-th of `what` (`nodes`, `routers`, `jetstream`).
    pub fn member(&self, what: &str, i: usize) -> (String, u32) {
        let n = &self.manifest[what][i];
        (
            n["url"].as_str().unwrap().to_string(),
            n["pid"].as_u64().unwrap() as u32,
        )
    }

    /// The URLs of every one of `what`.
    pub fn urls(&self, what: &str) -> Vec<String> {
        let n = self.manifest[what].as_array().map_or(0, Vec::len);
        (0..n).map(|i| self.member(what, i).0).collect()
    }

    pub fn stop(&mut self) -> bool {
        // SAFETY: kill(2) on the id of a child this process started and has not reaped.
        unsafe {
            libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM);
        }
        self.child.wait().unwrap().success()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            self.stop();
        }
    }
}

/// The last lines of the nodes' logs, to see why the cluster did not get where it should.
pub fn print_log_tails(dir: &Path) {
    let mut logs: Vec<_> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with("node-") && n.ends_with(".log"))
        .collect();
    logs.sort();
    for log in logs {
        let text = std::fs::read_to_string(dir.join(&log)).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(40).collect();
        let tail: Vec<&str> = tail.into_iter().rev().collect();
        println!("--- {log}, last lines:\n{}", tail.join("\n"));
    }
}

/// The demo's users' events (oldest first across users) and its catalog, as request bodies.
pub fn dataset(db: &Path) -> (Vec<Value>, Vec<Value>) {
    let db = Db::open(db, Db::created_with(db).unwrap().apply(Options::default())).unwrap();
    let snap = db.snapshot();
    let mut events: Vec<Event> = Vec::new();
    for u in snap.users() {
        events.extend(snap.read(u, ReadRange::default()).unwrap());
    }
    events.sort_by_key(|e| (e.ts, e.user));
    let events = events
        .iter()
        .map(|e| json!({"user": e.user, "ts": e.ts, "item": e.item, "action": e.action, "domain": e.domain}))
        .collect();
    let items = snap
        .items()
        .map(|it| {
            json!({"id": it.id, "category": it.category,
                   "semid": it.semid.map(|s| s.codes().to_vec()), "embedding": it.embedding})
        })
        .collect();
    (events, items)
}

/// Merges a write's `read_after` token into `into` (the largest position per stream).
pub fn merge_read_after(into: &mut BTreeMap<String, u64>, token: &str) {
    for part in token.split(',').filter(|p| !p.is_empty()) {
        let (stream, pos) = part.split_once(':').unwrap();
        let pos: u64 = pos.parse().unwrap();
        let e = into.entry(stream.to_string()).or_insert(0);
        *e = (*e).max(pos);
    }
}

/// A `read_after` token of `positions`.
#[allow(dead_code)] // the test's; the benchmark reads positions from the nodes' status instead
pub fn token(positions: &BTreeMap<String, u64>) -> String {
    let parts: Vec<String> = positions.iter().map(|(s, p)| format!("{s}:{p}")).collect();
    parts.join(",")
}

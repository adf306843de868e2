//! The disk as a power cut leaves it, rebuilt from the operations `iolog.c` recorded.
//!
//! Files and directories are inodes. Each file has the bytes that are durable (as of its last
//! fsync or fdatasync) and the operations since (writes, size changes); each directory has the
//! entries that are durable (as of its last fsync) and the entry changes since (creations,
//! renames, unlinks). [`Disk::crash`] writes out one state the disk may hold after the power
//! fails, of one of two shapes ([`CrashShape`]): every file's durable bytes plus either a prefix
//! of its later writes, the last one torn at a sector (what ext4 and XFS can leave), or any
//! subset of their 512-byte sectors, its size possibly covering lost ones (the worst POSIX
//! allows); every directory's durable entries plus a prefix (possibly empty) of its later
//! changes, in order, as a journaling file system commits them.

use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use rand::rngs::StdRng;
use rand::Rng;

const SECTOR: u64 = 512;
const O_CREAT: i64 = 0o100;
const O_TRUNC: i64 = 0o1000;
const FALLOC_FL_KEEP_SIZE: i32 = 1;

/// One recorded operation (see the record kinds in `iolog.c`).
#[derive(Debug)]
pub enum Op {
    Open {
        fd: i32,
        flags: i64,
        path: PathBuf,
    },
    Write {
        fd: i32,
        off: u64,
        data: Vec<u8>,
    },
    Sync {
        fd: i32,
    },
    Ftruncate {
        fd: i32,
        len: u64,
    },
    Truncate {
        path: PathBuf,
        len: u64,
    },
    Rename {
        from: PathBuf,
        to: PathBuf,
    },
    Unlink {
        path: PathBuf,
    },
    Mkdir {
        path: PathBuf,
    },
    Rmdir {
        path: PathBuf,
    },
    Close {
        fd: i32,
    },
    Dup {
        fd: i32,
        old: i32,
    },
    SyncAll,
    Fallocate {
        fd: i32,
        off: u64,
        len: u64,
        mode: i32,
    },
    Link {
        from: PathBuf,
        to: PathBuf,
    },
}

/// The records of a log; a record cut short by the kill ends it.
pub fn parse(log: &[u8]) -> Vec<Op> {
    const HEAD: usize = 1 + 4 + 8 + 8 + 4 + 4;
    let mut ops = Vec::new();
    let mut at = 0;
    while at + HEAD <= log.len() {
        let h = &log[at..at + HEAD];
        let le4 = |o: usize| u32::from_le_bytes(h[o..o + 4].try_into().expect("4 bytes"));
        let le8 = |o: usize| i64::from_le_bytes(h[o..o + 8].try_into().expect("8 bytes"));
        let (kind, fd, a, b) = (h[0], le4(1) as i32, le8(5), le8(13));
        let (l1, l2) = (le4(21) as usize, le4(25) as usize);
        if at + HEAD + l1 + l2 > log.len() {
            break;
        }
        let p1 = &log[at + HEAD..at + HEAD + l1];
        let p2 = &log[at + HEAD + l1..at + HEAD + l1 + l2];
        let path = |p: &[u8]| PathBuf::from(String::from_utf8_lossy(p).into_owned());
        ops.push(match kind {
            1 => Op::Open {
                fd,
                flags: a,
                path: path(p1),
            },
            2 => Op::Write {
                fd,
                off: a as u64,
                data: p1.to_vec(),
            },
            3 => Op::Sync { fd },
            4 => Op::Ftruncate { fd, len: a as u64 },
            5 => Op::Truncate {
                path: path(p1),
                len: a as u64,
            },
            6 => Op::Rename {
                from: path(p1),
                to: path(p2),
            },
            7 => Op::Unlink { path: path(p1) },
            8 => Op::Mkdir { path: path(p1) },
            9 => Op::Rmdir { path: path(p1) },
            10 => Op::Close { fd },
            11 => Op::Dup { fd, old: a as i32 },
            12 => Op::SyncAll,
            13 => Op::Fallocate {
                fd,
                off: a as u64,
                len: b as u64,
                mode: i32::from_le_bytes(p1.try_into().expect("mode")),
            },
            14 => Op::Link {
                from: path(p1),
                to: path(p2),
            },
            k => panic!("iolog record of unknown kind {k}"),
        });
        at += HEAD + l1 + l2;
    }
    ops
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Node {
    File(usize),
    Dir(usize),
}

enum FileOp {
    Write(u64, Vec<u8>),
    SetLen(u64),
}

#[derive(Default)]
struct File {
    durable: Vec<u8>,
    volatile: Vec<u8>,
    pending: Vec<FileOp>,
}

enum DirOp {
    Set(String, Node),
    Remove(String),
    Rename(String, String),
}

#[derive(Default)]
struct Dir {
    durable: BTreeMap<String, Node>,
    volatile: BTreeMap<String, Node>,
    pending: Vec<DirOp>,
}

fn apply_dir_op(entries: &mut BTreeMap<String, Node>, op: &DirOp) {
    match op {
        DirOp::Set(name, node) => {
            entries.insert(name.clone(), *node);
        }
        DirOp::Remove(name) => {
            entries.remove(name);
        }
        DirOp::Rename(from, to) => {
            if let Some(node) = entries.remove(from) {
                entries.insert(to.clone(), node);
            }
        }
    }
}

/// What the power cut may have left of the unsynced writes.
#[derive(Debug, Clone, Copy)]
pub enum CrashShape {
    /// What a journaling file system that writes data before the metadata that exposes it
    /// (ext4 with data=ordered, XFS) can leave: each file keeps a prefix of its unsynced writes,
    /// the last one possibly cut short at a sector, and its size ends where its data does.
    Ordered,
    /// The worst POSIX allows: any subset of the unsynced sectors of every file, each kept with
    /// chance `keep`, and with chance `full_size` a size covering lost sectors too (which read
    /// as zeros or old bytes).
    Adversarial { keep: f64, full_size: f64 },
    /// Nothing unsynced at all: only what was fsynced, files and directory entries.
    SyncedOnly,
}

impl CrashShape {
    pub fn random(rng: &mut StdRng) -> CrashShape {
        if rng.random_bool(0.5) {
            return CrashShape::Ordered;
        }
        let keep = match rng.random_range(0..4) {
            0 => 0.0,
            1 => 1.0,
            _ => rng.random_range(0.0..1.0),
        };
        CrashShape::Adversarial {
            keep,
            full_size: rng.random_range(0.0..1.0),
        }
    }
}

/// The disk under one root directory, durable and volatile.
pub struct Disk {
    root: PathBuf,
    files: Vec<File>,
    dirs: Vec<Dir>,
    fds: HashMap<i32, Node>,
}

impl Disk {
    /// The disk holding `content` (all durable, as after a reboot), recorded under `root`.
    pub fn load(content: &Path, root: &Path) -> Disk {
        let mut disk = Disk {
            root: root.to_path_buf(),
            files: Vec::new(),
            dirs: vec![Dir::default()],
            fds: HashMap::new(),
        };
        disk.load_dir(content, 0);
        disk
    }

    fn load_dir(&mut self, from: &Path, dir: usize) {
        for e in fs::read_dir(from).expect("read a directory").flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let node = if e.path().is_dir() {
                self.dirs.push(Dir::default());
                let d = self.dirs.len() - 1;
                self.load_dir(&e.path(), d);
                Node::Dir(d)
            } else {
                let bytes = fs::read(e.path()).expect("read a file");
                self.files.push(File {
                    durable: bytes.clone(),
                    volatile: bytes,
                    pending: Vec::new(),
                });
                Node::File(self.files.len() - 1)
            };
            self.dirs[dir].durable.insert(name.clone(), node);
            self.dirs[dir].volatile.insert(name, node);
        }
    }

    /// The directory and entry name of `path`, which must be under the root.
    fn parent(&self, path: &Path) -> (usize, String) {
        let rel = path
            .strip_prefix(&self.root)
            .unwrap_or_else(|_| panic!("{} is not under the recorded root", path.display()));
        let mut comps: Vec<String> = rel
            .components()
            .map(|c| c.as_os_str().to_string_lossy().into_owned())
            .collect();
        let name = comps.pop().expect("a path below the root");
        let mut dir = 0;
        for c in comps {
            match self.dirs[dir].volatile.get(&c) {
                Some(Node::Dir(d)) => dir = *d,
                _ => panic!(
                    "model out of step: no directory {c} on the way to {}",
                    path.display()
                ),
            }
        }
        (dir, name)
    }

    fn lookup(&self, path: &Path) -> Option<Node> {
        if path == self.root {
            return Some(Node::Dir(0));
        }
        let (dir, name) = self.parent(path);
        self.dirs[dir].volatile.get(&name).copied()
    }

    fn dir_op(&mut self, dir: usize, op: DirOp) {
        apply_dir_op(&mut self.dirs[dir].volatile, &op);
        self.dirs[dir].pending.push(op);
    }

    fn file_op(&mut self, file: usize, op: FileOp) {
        let f = &mut self.files[file];
        apply_file_op(&mut f.volatile, &op);
        f.pending.push(op);
    }

    fn file_of(&self, fd: i32) -> usize {
        match self.fds.get(&fd) {
            Some(Node::File(f)) => *f,
            other => panic!("model out of step: fd {fd} is {other:?}, not a file"),
        }
    }

    fn sync(&mut self, node: Node) {
        match node {
            Node::File(f) => {
                let f = &mut self.files[f];
                f.durable = f.volatile.clone();
                f.pending.clear();
            }
            Node::Dir(d) => {
                let d = &mut self.dirs[d];
                d.durable = d.volatile.clone();
                d.pending.clear();
            }
        }
    }

    /// Apply one recorded operation to the volatile state.
    pub fn apply(&mut self, op: &Op) {
        match op {
            Op::Open { fd, flags, path } => {
                let node = match self.lookup(path) {
                    Some(n) => n,
                    None => {
                        assert!(flags & O_CREAT != 0, "opened a missing {}", path.display());
                        self.files.push(File::default());
                        let node = Node::File(self.files.len() - 1);
                        let (dir, name) = self.parent(path);
                        self.dir_op(dir, DirOp::Set(name, node));
                        node
                    }
                };
                if let (Node::File(f), true) = (node, flags & O_TRUNC != 0) {
                    self.file_op(f, FileOp::SetLen(0));
                }
                self.fds.insert(*fd, node);
            }
            Op::Write { fd, off, data } => {
                let f = self.file_of(*fd);
                self.file_op(f, FileOp::Write(*off, data.clone()));
            }
            Op::Sync { fd } => {
                let node = *self.fds.get(fd).expect("sync of an unknown fd");
                self.sync(node);
            }
            Op::Ftruncate { fd, len } => {
                let f = self.file_of(*fd);
                self.file_op(f, FileOp::SetLen(*len));
            }
            Op::Truncate { path, len } => match self.lookup(path) {
                Some(Node::File(f)) => self.file_op(f, FileOp::SetLen(*len)),
                other => panic!("truncate of {}: {other:?}", path.display()),
            },
            Op::Rename { from, to } => {
                let (d1, n1) = self.parent(from);
                let (d2, n2) = self.parent(to);
                if d1 == d2 {
                    self.dir_op(d1, DirOp::Rename(n1, n2));
                } else {
                    let node = self.dirs[d1].volatile[&n1];
                    self.dir_op(d2, DirOp::Set(n2, node));
                    self.dir_op(d1, DirOp::Remove(n1));
                }
            }
            Op::Unlink { path } | Op::Rmdir { path } => {
                let (d, n) = self.parent(path);
                self.dir_op(d, DirOp::Remove(n));
            }
            Op::Mkdir { path } => {
                self.dirs.push(Dir::default());
                let node = Node::Dir(self.dirs.len() - 1);
                let (d, n) = self.parent(path);
                self.dir_op(d, DirOp::Set(n, node));
            }
            Op::Close { fd } => {
                self.fds.remove(fd);
            }
            Op::Dup { fd, old } => {
                let node = *self.fds.get(old).expect("dup of an unknown fd");
                self.fds.insert(*fd, node);
            }
            Op::SyncAll => {
                for f in 0..self.files.len() {
                    self.sync(Node::File(f));
                }
                for d in 0..self.dirs.len() {
                    self.sync(Node::Dir(d));
                }
            }
            Op::Fallocate { fd, off, len, mode } => {
                assert!(
                    mode & !FALLOC_FL_KEEP_SIZE == 0,
                    "fallocate mode {mode:#x} is not modelled"
                );
                let f = self.file_of(*fd);
                let end = off + len;
                if mode & FALLOC_FL_KEEP_SIZE == 0 && (self.files[f].volatile.len() as u64) < end {
                    self.file_op(f, FileOp::SetLen(end));
                }
            }
            Op::Link { from, to } => {
                let node = self.lookup(from).expect("link of a missing file");
                let (d, n) = self.parent(to);
                self.dir_op(d, DirOp::Set(n, node));
            }
        }
    }

    /// Write one state the disk may hold after a power cut now into `out`.
    pub fn crash(&self, rng: &mut StdRng, shape: CrashShape, out: &Path) {
        let dirs: Vec<BTreeMap<String, Node>> = self
            .dirs
            .iter()
            .map(|d| {
                let mut entries = d.durable.clone();
                let n = match (shape, rng.random_range(0..3)) {
                    (CrashShape::SyncedOnly, _) | (_, 0) => 0,
                    (_, 1) => d.pending.len(),
                    _ => rng.random_range(0..=d.pending.len()),
                };
                for op in &d.pending[..n] {
                    apply_dir_op(&mut entries, op);
                }
                entries
            })
            .collect();
        let files: Vec<Vec<u8>> = self
            .files
            .iter()
            .map(|f| crashed_file(f, rng, shape))
            .collect();
        write_tree(&dirs, &files, 0, out);
    }

    /// Check that the volatile state is what the real directory `live` holds: the recording
    /// missed nothing. (Only when the process ended by itself, with every write done.)
    pub fn check_against(&self, live: &Path) {
        let dirs: Vec<BTreeMap<String, Node>> =
            self.dirs.iter().map(|d| d.volatile.clone()).collect();
        compare_tree(&dirs, &self.files, 0, live);
    }
}

/// One file's bytes after the power cut.
fn crashed_file(f: &File, rng: &mut StdRng, shape: CrashShape) -> Vec<u8> {
    match shape {
        CrashShape::Ordered => ordered_file(f, rng),
        CrashShape::Adversarial { keep, full_size } => adversarial_file(f, rng, keep, full_size),
        CrashShape::SyncedOnly => f.durable.clone(),
    }
}

/// The durable bytes plus the first `k` unsynced operations, and a prefix of the sectors of the
/// next one if it is a write.
fn ordered_file(f: &File, rng: &mut StdRng) -> Vec<u8> {
    let mut data = f.durable.clone();
    let k = rng.random_range(0..=f.pending.len());
    for op in &f.pending[..k] {
        apply_file_op(&mut data, op);
    }
    if let Some(FileOp::Write(off, bytes)) = f.pending.get(k) {
        let end = off + bytes.len() as u64;
        let sectors: Vec<u64> = sector_ends(*off, end).collect();
        let cut = sectors[rng.random_range(0..sectors.len())];
        let torn = FileOp::Write(*off, bytes[..(cut - off) as usize].to_vec());
        apply_file_op(&mut data, &torn);
    }
    data
}

/// Any subset of the unsynced sectors and size changes, each kept with chance `keep`.
fn adversarial_file(f: &File, rng: &mut StdRng, keep: f64, full_size: f64) -> Vec<u8> {
    let mut data = f.durable.clone();
    for op in &f.pending {
        match op {
            FileOp::Write(off, bytes) => {
                let mut s = *off;
                for e in sector_ends(*off, off + bytes.len() as u64) {
                    if rng.random_bool(keep) {
                        let piece = bytes[(s - off) as usize..(e - off) as usize].to_vec();
                        apply_file_op(&mut data, &FileOp::Write(s, piece));
                    }
                    s = e;
                }
            }
            FileOp::SetLen(_) => {
                if rng.random_bool(keep) {
                    apply_file_op(&mut data, op);
                }
            }
        }
    }
    if data.len() < f.volatile.len() && rng.random_bool(full_size) {
        data.resize(f.volatile.len(), 0);
    }
    data
}

/// The ends of the pieces `[start, end)` falls into when cut at sector boundaries.
fn sector_ends(start: u64, end: u64) -> impl Iterator<Item = u64> {
    let mut s = start;
    std::iter::from_fn(move || {
        if s >= end {
            return None;
        }
        s = ((s / SECTOR + 1) * SECTOR).min(end);
        Some(s)
    })
}

fn apply_file_op(data: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write(off, bytes) => {
            let end = *off as usize + bytes.len();
            if data.len() < end {
                data.resize(end, 0);
            }
            data[*off as usize..end].copy_from_slice(bytes);
        }
        FileOp::SetLen(n) => data.resize(*n as usize, 0),
    }
}

fn write_tree(dirs: &[BTreeMap<String, Node>], files: &[Vec<u8>], dir: usize, out: &Path) {
    fs::create_dir_all(out).expect("create a directory");
    for (name, node) in &dirs[dir] {
        let p = out.join(name);
        match node {
            Node::Dir(d) => write_tree(dirs, files, *d, &p),
            Node::File(f) => fs::write(&p, &files[*f]).expect("write a file"),
        }
    }
}

fn compare_tree(dirs: &[BTreeMap<String, Node>], files: &[File], dir: usize, live: &Path) {
    let mut real: Vec<String> = fs::read_dir(live)
        .expect("read a directory")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    real.sort();
    let modelled: Vec<String> = dirs[dir].keys().cloned().collect();
    assert_eq!(
        modelled,
        real,
        "the recording missed entries of {}",
        live.display()
    );
    for (name, node) in &dirs[dir] {
        let p = live.join(name);
        match node {
            Node::Dir(d) => compare_tree(dirs, files, *d, &p),
            Node::File(f) => {
                let bytes = fs::read(&p).expect("read a file");
                assert!(
                    bytes == files[*f].volatile,
                    "the recording missed writes to {} ({} bytes on disk, {} modelled)",
                    p.display(),
                    bytes.len(),
                    files[*f].volatile.len()
                );
            }
        }
    }
}

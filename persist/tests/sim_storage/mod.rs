//! `SimStorage`: an in-memory [`Storage`] that knows, for every file and
//! every directory entry, what was written and what was synced, and can
//! simulate a power loss (or a kernel crash) at any operation.
//!
//! The model is the strict POSIX contract of `persist::storage`:
//!
//! - a file's data and length are durable once `sync_data` or `sync_all`
//!   returned; until then every write and `set_len` since the last sync is
//!   *pending*;
//! - a change of names (a creation, a removal, a rename) is durable once
//!   `sync_dir` returned on its directory (on both directories, for a
//!   rename from one to another); until then it is *pending*. Syncing a
//!   file does nothing for its name.
//!
//! [`SimStorage::crash`] builds the storage a restarted machine would find:
//! what was synced, and of what was pending whatever the choices say:
//!
//! - per file, its pending changes in order: each is kept, or is the last
//!   one kept in part: a prefix of a write (a torn write), or a prefix
//!   followed by zeros (the file's length reached the disk, not all of its
//!   data, as on XFS or ext4 with `data=writeback`); or it and all after
//!   it are lost;
//! - each pending change of names on its own, kept or lost, whatever
//!   came before or after it (no file system journal is assumed to keep
//!   them in order); a rename is kept or lost as a whole, never half done.
//!   A directory whose name is lost is gone with everything in it, and so
//!   is a file without a name.
//!
//! The choices are bytes (from proptest) read one at a time, 0 when they
//! run out; 0 always means "lost", so shrinking leads to the crash that
//! keeps nothing that was not synced.
//!
//! [`SimStorage::fail_after`] sets a power loss at a chosen operation: the
//! operation takes effect (pending, like any other), returns an error, and
//! every operation after it fails; the machine is down until `crash`.
//! A process merely killed (`kill -9`) loses nothing the kernel had, so it
//! needs no simulation: the files are as `current` says.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ffi::{OsStr, OsString};
use std::io;
use std::path::{Component, Path};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use persist::{Storage, StorageFile};

type Ino = usize;

const ROOT: Ino = 0;

#[derive(Clone, Debug)]
enum FileOp {
    Write { at: usize, bytes: Vec<u8> },
    SetLen(usize),
}

/// A change of names.
#[derive(Clone, Debug)]
enum DirOp {
    Link { dir: Ino, name: OsString, ino: Ino },
    Unlink { dir: Ino, name: OsString, ino: Ino },
    Rename { from: Ino, from_name: OsString, to: Ino, to_name: OsString, ino: Ino },
}

/// A change of names, and the directories it is not yet durable in.
#[derive(Clone, Debug)]
struct PendingDirOp {
    op: DirOp,
    unsynced: BTreeSet<Ino>,
}

/// Each directory's entries, by the directory's inode.
type Entries = BTreeMap<Ino, BTreeMap<OsString, Ino>>;

#[derive(Clone, Debug, Default)]
struct FileNode {
    /// What a crash keeps for sure.
    synced: Vec<u8>,
    /// What the kernel has: `synced` with `pending` applied.
    current: Vec<u8>,
    pending: Vec<FileOp>,
}

#[derive(Clone, Debug, Default)]
struct DirNode {
    /// What the kernel has.
    current: BTreeMap<OsString, Ino>,
}

#[derive(Clone, Debug)]
enum Node {
    File(FileNode),
    Dir(DirNode),
}

#[derive(Clone, Debug)]
struct Machine {
    /// Every file and directory ever made, by inode number; reachability
    /// from the root decides what exists.
    nodes: Vec<Node>,
    /// Every directory's durable entries.
    synced: Entries,
    /// Changes of names not durable yet, oldest first.
    pending: VecDeque<PendingDirOp>,
    /// Operations left before the power fails (`None`: it does not).
    budget: Option<u64>,
    down: bool,
    ops: u64,
}

/// The simulated storage. Clones share one machine.
#[derive(Clone, Debug)]
pub struct SimStorage {
    machine: Arc<Mutex<Machine>>,
}

fn power_lost() -> io::Error {
    io::Error::other("simulated power loss")
}

/// Whether `e` is the error of a simulated power loss.
pub fn is_power_loss(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::Other && e.to_string() == "simulated power loss"
}

fn not_found(path: &Path) -> io::Error {
    io::Error::new(io::ErrorKind::NotFound, format!("{}: no such file or directory", path.display()))
}

fn apply_file_op(data: &mut Vec<u8>, op: &FileOp) {
    match op {
        FileOp::Write { at, bytes } => {
            if data.len() < at + bytes.len() {
                data.resize(at + bytes.len(), 0);
            }
            data[*at..at + bytes.len()].copy_from_slice(bytes);
        }
        FileOp::SetLen(len) => data.resize(*len, 0),
    }
}

fn apply_dir_op(entries: &mut Entries, op: &DirOp) {
    let unlink = |entries: &mut Entries, dir: &Ino, name: &OsString, ino: &Ino| {
        let d = entries.entry(*dir).or_default();
        if d.get(name) == Some(ino) {
            d.remove(name);
        }
    };
    match op {
        DirOp::Link { dir, name, ino } => {
            entries.entry(*dir).or_default().insert(name.clone(), *ino);
        }
        DirOp::Unlink { dir, name, ino } => unlink(entries, dir, name, ino),
        DirOp::Rename { from, from_name, to, to_name, ino } => {
            unlink(entries, from, from_name, ino);
            entries.entry(*to).or_default().insert(to_name.clone(), *ino);
        }
    }
}

/// Crash decisions, read from bytes; 0 once they run out.
pub struct Choices<'a> {
    bytes: &'a [u8],
    /// What was decided, for a failing case's report.
    pub log: Vec<String>,
}

impl<'a> Choices<'a> {
    pub fn new(bytes: &'a [u8]) -> Choices<'a> {
        Choices { bytes, log: Vec::new() }
    }

    fn byte(&mut self) -> u8 {
        match self.bytes.split_first() {
            Some((b, rest)) => {
                self.bytes = rest;
                *b
            }
            None => 0,
        }
    }

    /// A number below `n` (`n` > 0).
    fn below(&mut self, n: usize) -> usize {
        let raw =
            if n <= 256 { usize::from(self.byte()) } else { usize::from(self.byte()) << 8 | usize::from(self.byte()) };
        raw % n
    }
}

impl Machine {
    fn dir(&self, ino: Ino) -> Option<&DirNode> {
        match self.nodes.get(ino) {
            Some(Node::Dir(d)) => Some(d),
            _ => None,
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Option<&mut DirNode> {
        match self.nodes.get_mut(ino) {
            Some(Node::Dir(d)) => Some(d),
            _ => None,
        }
    }

    fn file_mut(&mut self, ino: Ino) -> Option<&mut FileNode> {
        match self.nodes.get_mut(ino) {
            Some(Node::File(f)) => Some(f),
            _ => None,
        }
    }

    /// The directory holding `path`'s last component, and that name.
    fn parent<'p>(&self, path: &'p Path) -> io::Result<(Ino, &'p OsStr)> {
        let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
        let parent = path.parent().ok_or_else(|| not_found(path))?;
        let ino = self.lookup(parent)?;
        match self.dir(ino) {
            Some(_) => Ok((ino, name)),
            None => Err(io::Error::new(io::ErrorKind::NotADirectory, format!("{}: not a directory", parent.display()))),
        }
    }

    fn lookup(&self, path: &Path) -> io::Result<Ino> {
        let mut ino = ROOT;
        for c in path.components() {
            match c {
                Component::RootDir => ino = ROOT,
                Component::Normal(name) => {
                    let dir = self.dir(ino).ok_or_else(|| {
                        io::Error::new(io::ErrorKind::NotADirectory, format!("{}: not a directory", path.display()))
                    })?;
                    ino = *dir.current.get(name).ok_or_else(|| not_found(path))?;
                }
                _ => return Err(io::Error::new(io::ErrorKind::InvalidInput, "only absolute, plain paths")),
            }
        }
        Ok(ino)
    }

    /// Applies a change of names to the directories, pending.
    fn change_names(&mut self, op: DirOp) {
        let unsynced: BTreeSet<Ino> = match &op {
            DirOp::Link { dir, .. } | DirOp::Unlink { dir, .. } => [*dir].into(),
            DirOp::Rename { from, to, .. } => [*from, *to].into(),
        };
        let mut current: Entries = unsynced.iter().filter_map(|&d| Some((d, self.dir(d)?.current.clone()))).collect();
        apply_dir_op(&mut current, &op);
        for (d, entries) in current {
            if let Some(node) = self.dir_mut(d) {
                node.current = entries;
            }
        }
        self.pending.push_back(PendingDirOp { op, unsynced });
    }

    /// `sync_dir`: every change in `dir` is durable there; those durable
    /// in all their directories, oldest first, join the synced entries.
    fn sync_names(&mut self, dir: Ino) {
        for p in &mut self.pending {
            p.unsynced.remove(&dir);
        }
        while self.pending.front().is_some_and(|p| p.unsynced.is_empty()) {
            if let Some(p) = self.pending.pop_front() {
                apply_dir_op(&mut self.synced, &p.op);
            }
        }
    }

    fn file_op(&mut self, ino: Ino, op: FileOp) -> io::Result<()> {
        let f = self.file_mut(ino).ok_or_else(|| io::Error::other("stale handle"))?;
        apply_file_op(&mut f.current, &op);
        f.pending.push(op);
        Ok(())
    }

    fn sync_file(&mut self, ino: Ino) -> io::Result<()> {
        let f = self.file_mut(ino).ok_or_else(|| io::Error::other("stale handle"))?;
        f.synced = f.current.clone();
        f.pending.clear();
        Ok(())
    }
}

impl Default for SimStorage {
    fn default() -> Self {
        Self::new()
    }
}

impl SimStorage {
    /// An empty file system: `/` and nothing else, no power loss planned.
    pub fn new() -> SimStorage {
        let machine = Machine {
            nodes: vec![Node::Dir(DirNode::default())],
            synced: [(ROOT, BTreeMap::new())].into(),
            pending: VecDeque::new(),
            budget: None,
            down: false,
            ops: 0,
        };
        SimStorage { machine: Arc::new(Mutex::new(machine)) }
    }

    fn lock(&self) -> MutexGuard<'_, Machine> {
        self.machine.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A copy of this machine as it is, to try something on.
    pub fn fork(&self) -> SimStorage {
        let copy = self.lock().clone();
        SimStorage { machine: Arc::new(Mutex::new(copy)) }
    }

    /// The power fails during the operation after the next `n` (`None`:
    /// it does not).
    pub fn fail_after(&self, n: Option<u64>) {
        self.lock().budget = n;
    }

    /// Whether the power has failed.
    pub fn is_down(&self) -> bool {
        self.lock().down
    }

    /// Operations done so far.
    pub fn ops(&self) -> u64 {
        self.lock().ops
    }

    /// Whether anything written, created, renamed or removed is not durable.
    pub fn has_pending(&self) -> bool {
        let m = self.lock();
        !m.pending.is_empty() || m.nodes.iter().any(|n| matches!(n, Node::File(f) if !f.pending.is_empty()))
    }

    /// Runs one operation, counting it against the power budget.
    fn op<T>(&self, f: impl FnOnce(&mut Machine) -> io::Result<T>) -> io::Result<T> {
        let mut m = self.lock();
        if m.down {
            return Err(power_lost());
        }
        m.ops += 1;
        let result = f(&mut m);
        if let Some(left) = m.budget.as_mut() {
            if *left == 0 {
                m.down = true;
                return Err(power_lost());
            }
            *left -= 1;
        }
        result
    }

    /// The power fails now (if it has not yet) and the machine restarts:
    /// the storage it finds, after `choices` decided what of the pending
    /// changes reached the disk. This storage is dead from now on.
    pub fn crash(&self, choices: &mut Choices<'_>) -> SimStorage {
        let mut m = self.lock();
        m.down = true;
        // Each file's content after the crash.
        let mut nodes: Vec<Node> = Vec::with_capacity(m.nodes.len());
        for (ino, node) in m.nodes.iter().enumerate() {
            nodes.push(match node {
                Node::File(f) => {
                    let mut data = f.synced.clone();
                    for op in &f.pending {
                        let choice = choices.below(4);
                        match (choice, op) {
                            (1, _) => apply_file_op(&mut data, op),
                            (2 | 3, FileOp::Write { at, bytes }) => {
                                // Torn: its first `keep` bytes; zero-filled:
                                // its first `keep` bytes, then zeros to `len`.
                                let len = choices.below(bytes.len() + 1);
                                let keep = if choice == 2 { len } else { choices.below(len + 1) };
                                let mut part = bytes[..keep].to_vec();
                                part.resize(len, 0);
                                apply_file_op(&mut data, &FileOp::Write { at: *at, bytes: part });
                                choices.log.push(format!(
                                    "inode {ino}: kept {keep} of a {}-byte write at {at}{}; later changes lost",
                                    bytes.len(),
                                    if len > keep { format!(", then {} zeros", len - keep) } else { String::new() }
                                ));
                                break;
                            }
                            _ => {
                                choices.log.push(format!("inode {ino}: lost {op:?} and later changes"));
                                break;
                            }
                        }
                    }
                    Node::File(FileNode { synced: data.clone(), current: data, pending: Vec::new() })
                }
                Node::Dir(_) => Node::Dir(DirNode::default()),
            });
        }
        // Each directory's entries: what was synced, and each pending
        // change of names that the choices keep.
        let mut entries = m.synced.clone();
        for p in &m.pending {
            if p.unsynced.is_empty() || choices.below(2) == 1 {
                apply_dir_op(&mut entries, &p.op);
            } else {
                choices.log.push(format!("lost {:?}", p.op));
            }
        }
        // What is reachable from the root exists; the rest is gone.
        let mut synced = Entries::new();
        let mut todo = vec![ROOT];
        while let Some(ino) = todo.pop() {
            let Some(Node::Dir(d)) = nodes.get_mut(ino) else { continue };
            if synced.contains_key(&ino) {
                continue;
            }
            d.current = entries.remove(&ino).unwrap_or_default();
            todo.extend(d.current.values().copied());
            synced.insert(ino, d.current.clone());
        }
        let machine = Machine { nodes, synced, pending: VecDeque::new(), budget: None, down: false, ops: 0 };
        SimStorage { machine: Arc::new(Mutex::new(machine)) }
    }
}

/// A file open for writing on a [`SimStorage`].
#[derive(Debug)]
pub struct SimFile {
    storage: SimStorage,
    ino: Ino,
    pos: usize,
}

impl Storage for SimStorage {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        self.op(|m| {
            let (parent, name) = m.parent(path)?;
            if m.dir(parent).is_some_and(|d| d.current.contains_key(name)) {
                return Err(io::Error::new(io::ErrorKind::AlreadyExists, format!("{}: exists", path.display())));
            }
            m.nodes.push(Node::Dir(DirNode::default()));
            let ino = m.nodes.len() - 1;
            m.synced.insert(ino, BTreeMap::new());
            m.change_names(DirOp::Link { dir: parent, name: name.to_owned(), ino });
            Ok(())
        })
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        self.op(|m| {
            let ino = m.lookup(dir)?;
            let d = m.dir(ino).ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotADirectory, format!("{}: not a directory", dir.display()))
            })?;
            Ok(d.current.keys().cloned().collect())
        })
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        self.op(|m| {
            let ino = m.lookup(dir)?;
            if m.dir(ino).is_none() {
                return Err(io::Error::new(io::ErrorKind::NotADirectory, "not a directory"));
            }
            m.sync_names(ino);
            Ok(())
        })
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        self.op(|m| match m.nodes.get(m.lookup(path)?) {
            Some(Node::File(f)) => Ok(f.current.clone()),
            _ => Err(io::Error::new(io::ErrorKind::IsADirectory, format!("{}: is a directory", path.display()))),
        })
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let ino = self.op(|m| {
            let (parent, name) = m.parent(path)?;
            match m.dir(parent).and_then(|d| d.current.get(name)).copied() {
                Some(ino) => {
                    m.file_op(ino, FileOp::SetLen(0))
                        .map_err(|_| io::Error::new(io::ErrorKind::IsADirectory, "is a directory"))?;
                    Ok(ino)
                }
                None => {
                    m.nodes.push(Node::File(FileNode::default()));
                    let ino = m.nodes.len() - 1;
                    m.change_names(DirOp::Link { dir: parent, name: name.to_owned(), ino });
                    Ok(ino)
                }
            }
        })?;
        Ok(Box::new(SimFile { storage: self.clone(), ino, pos: 0 }))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        let ino = self.op(|m| {
            let ino = m.lookup(path)?;
            match m.nodes.get(ino) {
                Some(Node::File(_)) => Ok(ino),
                _ => Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory")),
            }
        })?;
        Ok(Box::new(SimFile { storage: self.clone(), ino, pos: 0 }))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        self.op(|m| {
            let (from_dir, from_name) = m.parent(from)?;
            let (to_dir, to_name) = m.parent(to)?;
            if (from_dir, from_name) == (to_dir, to_name) {
                return m.lookup(from).map(drop);
            }
            let ino = *m.dir(from_dir).and_then(|d| d.current.get(from_name)).ok_or_else(|| not_found(from))?;
            if m.dir(to_dir).and_then(|d| d.current.get(to_name)).is_some_and(|&old| m.dir(old).is_some()) {
                return Err(io::Error::new(io::ErrorKind::IsADirectory, "target is a directory"));
            }
            m.change_names(DirOp::Rename {
                from: from_dir,
                from_name: from_name.to_owned(),
                to: to_dir,
                to_name: to_name.to_owned(),
                ino,
            });
            Ok(())
        })
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        self.op(|m| {
            let (dir, name) = m.parent(path)?;
            let ino = *m.dir(dir).and_then(|d| d.current.get(name)).ok_or_else(|| not_found(path))?;
            if m.dir(ino).is_some() {
                return Err(io::Error::new(io::ErrorKind::IsADirectory, "is a directory"));
            }
            m.change_names(DirOp::Unlink { dir, name: name.to_owned(), ino });
            Ok(())
        })
    }
}

impl StorageFile for SimFile {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        let at = self.pos;
        self.storage.op(|m| m.file_op(self.ino, FileOp::Write { at, bytes: bytes.to_vec() }))?;
        self.pos += bytes.len();
        Ok(())
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        let len = usize::try_from(len).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "too long"))?;
        self.storage.op(|m| m.file_op(self.ino, FileOp::SetLen(len)))
    }

    fn sync_data(&mut self) -> io::Result<()> {
        self.storage.op(|m| m.sync_file(self.ino))
    }

    fn sync_all(&mut self) -> io::Result<()> {
        self.storage.op(|m| m.sync_file(self.ino))
    }
}

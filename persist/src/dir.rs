//! The state directory: checkpoint files, log files, recovery.

use std::ffi::OsString;
use std::io;
use std::path::{Path as FsPath, PathBuf};
use std::sync::Arc;

use crate::codec::Reader;
use crate::log::{self, LogRecord};
use crate::storage::{FsStorage, Storage, StorageFile};
use crate::{FORMAT_VERSION, LoadError, Problem, SavedState, checkpoint};

/// What [`StateDir::load`] found.
#[derive(Debug)]
pub struct Recovered {
    pub state: SavedState,
    /// The last commit included.
    pub seq: u64,
    /// Things repaired on the way (a torn last log record), for the log.
    pub warnings: Vec<String>,
}

/// A directory holding checkpoints and commit logs, on a [`Storage`].
#[derive(Debug)]
pub struct StateDir {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
    log: Option<Box<dyn StorageFile>>,
}

/// Writes checkpoints into a state directory; cloned off a [`StateDir`]
/// ([`StateDir::checkpoint_writer`]) to write from a background thread.
#[derive(Clone, Debug)]
pub struct CheckpointWriter {
    storage: Arc<dyn Storage>,
    dir: PathBuf,
}

fn checkpoint_name(seq: u64) -> String {
    format!("checkpoint-{seq:020}.rxs")
}

/// Magic, format version, first sequence number.
const LOG_HEADER_LEN: usize = 8 + 4 + 8;

fn log_name(seq: u64) -> String {
    format!("log-{seq:020}.rxl")
}

/// Files named `<prefix><seq><suffix>`, sorted by seq.
fn numbered(storage: &dyn Storage, dir: &FsPath, prefix: &str, suffix: &str) -> io::Result<Vec<(u64, PathBuf)>> {
    let mut v = Vec::new();
    for name in storage.list(dir)? {
        let Some(name) = name.to_str() else { continue };
        if let Some(seq) = name.strip_prefix(prefix).and_then(|r| r.strip_suffix(suffix)).and_then(|n| n.parse().ok()) {
            v.push((seq, dir.join(name)));
        }
    }
    v.sort();
    Ok(v)
}

/// Creates `dir` and its missing parents, as `std::fs::create_dir_all`,
/// durably: each directory it creates is synced into its parent before
/// anything is created in it. Otherwise a power loss could take the new
/// state directory away, and with it every file synced in it since.
fn create_dir_all(storage: &dyn Storage, dir: &FsPath) -> io::Result<()> {
    let parent = dir.parent().map(|p| if p.as_os_str().is_empty() { FsPath::new(".") } else { p });
    let created = match storage.create_dir(dir) {
        Ok(()) => true,
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
        Err(e) if e.kind() == io::ErrorKind::NotFound && parent.is_some() => {
            if let Some(parent) = parent {
                create_dir_all(storage, parent)?;
            }
            match storage.create_dir(dir) {
                Ok(()) => true,
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => false,
                Err(e) => return Err(e),
            }
        }
        Err(e) => return Err(e),
    };
    match parent {
        Some(parent) if created => storage.sync_dir(parent),
        // There already: fine if it is a directory (it can be listed).
        _ => storage.list(dir).map(drop),
    }
}

/// Writes `bytes` as `dir/name`, whole or not at all: a temporary file
/// (`name.tmp`, which `prune` clears), fsync, rename, fsync of the
/// directory. Returns the path and the file, open for writing at its end.
fn write_whole(
    storage: &dyn Storage,
    dir: &FsPath,
    name: &str,
    bytes: &[u8],
) -> io::Result<(PathBuf, Box<dyn StorageFile>)> {
    let path = dir.join(name);
    let tmp = dir.join(format!("{name}.tmp"));
    let mut f = storage.create(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    storage.rename(&tmp, &path)?;
    storage.sync_dir(dir)?;
    Ok((path, f))
}

fn io_err(path: &FsPath) -> impl FnOnce(io::Error) -> LoadError + '_ {
    move |source| LoadError::Io { path: path.to_path_buf(), source }
}

fn corrupt(path: &FsPath, problem: Problem) -> LoadError {
    LoadError::Corrupt { path: path.to_path_buf(), problem }
}

impl CheckpointWriter {
    /// Writes `state` as the checkpoint after commit `seq`: a temporary
    /// file, fsync, rename, fsync of the directory. Touches nothing but
    /// the new file, so it may run beside appends to the log.
    pub fn write(&self, state: &SavedState, seq: u64) -> io::Result<PathBuf> {
        let (path, _) = write_whole(&*self.storage, &self.dir, &checkpoint_name(seq), &checkpoint::encode(state, seq))?;
        Ok(path)
    }
}

impl StateDir {
    /// Opens (creating if needed) the directory, on the real file system.
    pub fn open(dir: impl Into<PathBuf>) -> io::Result<StateDir> {
        StateDir::open_in(Arc::new(FsStorage), dir)
    }

    /// Opens (creating if needed) the directory on `storage`.
    pub fn open_in(storage: Arc<dyn Storage>, dir: impl Into<PathBuf>) -> io::Result<StateDir> {
        let dir = dir.into();
        create_dir_all(&*storage, &dir)?;
        Ok(StateDir { storage, dir, log: None })
    }

    pub fn path(&self) -> &FsPath {
        &self.dir
    }

    /// Writes `state` as the checkpoint after commit `seq` into `dir` on
    /// the real file system; see [`CheckpointWriter::write`].
    pub fn write_checkpoint(dir: &FsPath, state: &SavedState, seq: u64) -> io::Result<PathBuf> {
        CheckpointWriter { storage: Arc::new(FsStorage), dir: dir.to_path_buf() }.write(state, seq)
    }

    /// What writes checkpoints into this directory, from any thread.
    pub fn checkpoint_writer(&self) -> CheckpointWriter {
        CheckpointWriter { storage: Arc::clone(&self.storage), dir: self.dir.clone() }
    }

    /// Starts a new log file whose first record will be `first_seq`; later
    /// [`StateDir::append`]s go there.
    pub fn start_log(&mut self, first_seq: u64) -> io::Result<()> {
        // Written whole or not at all: a crash leaves either no new log or
        // one with its whole header, never a log that recovery cannot read.
        let mut header = Vec::with_capacity(LOG_HEADER_LEN);
        header.extend_from_slice(log::MAGIC);
        header.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
        header.extend_from_slice(&first_seq.to_le_bytes());
        let (_, f) = write_whole(&*self.storage, &self.dir, &log_name(first_seq), &header)?;
        self.log = Some(f);
        Ok(())
    }

    /// Appends records and makes them durable with one `fdatasync` (group
    /// commit): when this returns, a crash cannot lose them.
    pub fn append(&mut self, records: &[LogRecord]) -> io::Result<()> {
        if records.is_empty() {
            return Ok(());
        }
        let f = self.log.as_mut().ok_or_else(|| io::Error::other("no log file started"))?;
        let mut buf = Vec::new();
        for r in records {
            r.encode(&mut buf);
        }
        f.write_all(&buf)?;
        f.sync_data()
    }

    /// Files of this directory named `<prefix><seq><suffix>`, sorted by seq.
    fn numbered(&self, prefix: &str, suffix: &str) -> io::Result<Vec<(u64, PathBuf)>> {
        numbered(&*self.storage, &self.dir, prefix, suffix)
    }

    /// Removes checkpoints older than the one for `seq` and logs wholly
    /// before it; call once checkpoint `seq` is durable.
    pub fn prune(&self, seq: u64) -> io::Result<()> {
        for (s, p) in self.numbered("checkpoint-", ".rxs")? {
            if s < seq {
                self.storage.remove(&p)?;
            }
        }
        let logs = self.numbered("log-", ".rxl")?;
        // A log is wholly before `seq` if the next log starts at or before seq + 1.
        for (i, (_, p)) in logs.iter().enumerate() {
            if logs.get(i + 1).is_some_and(|(next, _)| *next <= seq + 1) {
                self.storage.remove(p)?;
            }
        }
        for (_, p) in self.numbered("checkpoint-", ".rxs.tmp")? {
            self.storage.remove(&p)?;
        }
        for (_, p) in self.numbered("log-", ".rxl.tmp")? {
            self.storage.remove(&p)?;
        }
        self.storage.sync_dir(&self.dir)
    }

    /// Moves every state file into `discarded-<n>/` (never deletes them, so
    /// they can be inspected), for `--discard-state`. Durably: the new
    /// directory is synced into this one before anything moves (a power
    /// loss keeps each file in one place or the other), and both are synced
    /// before this returns (the files never come back beside the next
    /// state's, where recovery would replay a new log onto an old
    /// checkpoint).
    pub fn set_aside(&self) -> io::Result<Option<PathBuf>> {
        let mut files = self.numbered("checkpoint-", ".rxs")?;
        files.extend(self.numbered("log-", ".rxl")?);
        if files.is_empty() {
            return Ok(None);
        }
        let names = self.storage.list(&self.dir)?;
        let mut n = 1;
        let target = loop {
            let name = OsString::from(format!("discarded-{n}"));
            if !names.contains(&name) {
                break self.dir.join(name);
            }
            n += 1;
        };
        self.storage.create_dir(&target)?;
        self.storage.sync_dir(&self.dir)?;
        for (_, p) in files {
            if let Some(name) = p.file_name() {
                self.storage.rename(&p, &target.join(name))?;
            }
        }
        self.storage.sync_dir(&target)?;
        self.storage.sync_dir(&self.dir)?;
        Ok(Some(target))
    }

    /// Loads the newest checkpoint and replays the logs after it. `None`
    /// if the directory holds no state. Corrupt or inconsistent state is an
    /// error naming the file and the problem; only a torn last record of the
    /// last log (a write that was never acknowledged) is repaired, with a
    /// warning.
    pub fn load(&self) -> Result<Option<Recovered>, LoadError> {
        let checkpoints = self.numbered("checkpoint-", ".rxs").map_err(io_err(&self.dir))?;
        let logs = self.numbered("log-", ".rxl").map_err(io_err(&self.dir))?;
        if checkpoints.is_empty() && logs.is_empty() {
            return Ok(None);
        }
        let mut warnings = Vec::new();
        let (mut state, mut seq) = match checkpoints.last() {
            Some((_, path)) => read_checkpoint(&*self.storage, path)?,
            None => {
                let root = engine::Perms::owned_by(engine::DomId(0));
                (
                    SavedState {
                        snapshot: engine::Snapshot::new(root),
                        domains: Vec::new(),
                        global_quotas: Vec::new(),
                    },
                    0,
                )
            }
        };
        let checkpoint_seq = seq;
        for (i, (_, path)) in logs.iter().enumerate() {
            let last_file = i + 1 == logs.len();
            let records = read_log(&*self.storage, path, last_file, &mut warnings)?;
            for rec in records {
                if rec.seq <= checkpoint_seq {
                    continue;
                }
                if rec.seq != seq + 1 {
                    return Err(LoadError::Inconsistent {
                        path: path.clone(),
                        what: format!("commit {} follows commit {seq}: commits are missing", rec.seq),
                    });
                }
                if let Some((domains, quotas)) =
                    rec.apply(&mut state.snapshot).map_err(|e| LoadError::Inconsistent {
                        path: path.clone(),
                        what: format!("commit {} does not apply: {e}", rec.seq),
                    })?
                {
                    state.domains = domains;
                    state.global_quotas = quotas;
                }
                seq = rec.seq;
            }
        }
        // The checkpoint was verified while it was built (every parent
        // present, counts computed); replayed records must keep it so.
        if seq != checkpoint_seq {
            state.snapshot.check_consistent().map_err(|e| LoadError::Inconsistent {
                path: self.dir.clone(),
                what: format!("the recovered tree is inconsistent: {e}"),
            })?;
        }
        Ok(Some(Recovered { state, seq, warnings }))
    }
}

fn read_checkpoint(storage: &dyn Storage, path: &FsPath) -> Result<(SavedState, u64), LoadError> {
    let data = storage.read(path).map_err(io_err(path))?;
    let mut r = Reader::new(&data, 0);
    let (version, seq) = checkpoint::header(&mut r).map_err(|p| corrupt(path, p))?;
    if version > FORMAT_VERSION {
        return Err(LoadError::NewerVersion { path: path.to_path_buf(), found: version, supported: FORMAT_VERSION });
    }
    let state = checkpoint::decode_body(&mut r).map_err(|p| corrupt(path, p))?;
    if !r.is_empty() {
        return Err(corrupt(path, Problem { offset: r.offset(), what: "trailing bytes after the checksum".into() }));
    }
    Ok((state, seq))
}

/// Reads a log's records. A record cut short at the very end of the last
/// log is the write a crash interrupted (never acknowledged): it is dropped
/// and the file truncated before it. Anything else wrong is corruption.
fn read_log(
    storage: &dyn Storage,
    path: &FsPath,
    last_file: bool,
    warnings: &mut Vec<String>,
) -> Result<Vec<LogRecord>, LoadError> {
    let data = storage.read(path).map_err(io_err(path))?;
    if last_file && data.len() < LOG_HEADER_LEN && log::MAGIC.starts_with(&data[..data.len().min(log::MAGIC.len())]) {
        // A log whose creation a crash interrupted (versions before 2026-11-27
        // created it in place): it holds no record, since records are
        // appended only once its header is durable. Removed, so that it
        // does not sit between the logs written from now on.
        warnings.push(format!(
            "{}: removing an empty log whose header a crash interrupted ({} of {LOG_HEADER_LEN} bytes)",
            path.display(),
            data.len()
        ));
        storage.remove(path).map_err(io_err(path))?;
        return Ok(Vec::new());
    }
    let mut r = Reader::new(&data, 0);
    let magic = r.take(8, "magic").map_err(|p| corrupt(path, p))?;
    if magic != log::MAGIC {
        return Err(corrupt(path, Problem { offset: 0, what: "not an rxenstored log (bad magic)".into() }));
    }
    let version = r.u32("format version").map_err(|p| corrupt(path, p))?;
    if version > FORMAT_VERSION {
        return Err(LoadError::NewerVersion { path: path.to_path_buf(), found: version, supported: FORMAT_VERSION });
    }
    r.u64("first sequence number").map_err(|p| corrupt(path, p))?;
    // Nothing but zeros from `at` on: what a crash leaves where a write's
    // new length reached the disk and (some of) its data did not.
    let zeros_from = |at: u64| {
        usize::try_from(at).ok().and_then(|at| data.get(at..)).is_some_and(|rest| rest.iter().all(|&b| b == 0))
    };
    let mut records = Vec::new();
    while !r.is_empty() {
        let start = r.offset();
        let framed = (|| {
            let len = r.u32("record length")? as usize;
            let crc = r.u32("record checksum")?;
            let payload = r.take(len, "record")?;
            Ok::<_, Problem>((crc, payload))
        })();
        let torn = |problem: Problem, warnings: &mut Vec<String>| -> Result<(), LoadError> {
            if !last_file {
                return Err(corrupt(path, problem));
            }
            warnings.push(format!(
                "{}: dropping an incomplete record at byte {start}, {} bytes to the end (a write interrupted by a crash, never acknowledged)",
                path.display(),
                data.len() as u64 - start
            ));
            let mut f = storage.open_write(path).map_err(io_err(path))?;
            f.set_len(start).and_then(|()| f.sync_all()).map_err(io_err(path))
        };
        if zeros_from(start) {
            // No record starts with zeros (its payload is never empty); eight
            // of them would even pass as an empty record with its checksum.
            torn(Problem { offset: start, what: "zeros where a record should be".into() }, warnings)?;
            break;
        }
        let (crc, payload) = match framed {
            Ok(x) => x,
            Err(problem) => {
                torn(problem, warnings)?;
                break;
            }
        };
        if crc32fast::hash(payload) != crc {
            let problem = Problem { offset: start, what: "record checksum mismatch".into() };
            // Only a damaged *last* record can be an interrupted write: one
            // that nothing but zeros follows.
            if zeros_from(r.offset()) {
                torn(problem, warnings)?;
                break;
            }
            return Err(corrupt(path, problem));
        }
        let mut pr = Reader::new(payload, start + 8);
        records.push(LogRecord::decode_payload(&mut pr).map_err(|p| corrupt(path, p))?);
    }
    Ok(records)
}

//! The file-system operations `persist` needs, behind a trait, so that
//! tests can put a storage under [`StateDir`](crate::StateDir) that
//! simulates a power loss (`persist/tests/power_loss.rs`) and check the
//! fsync and rename ordering instead of assuming it.
//!
//! The contract is POSIX's, read strictly, because that is what survives
//! a power loss or a kernel crash on any file system:
//!
//! - a file's data (and its length) is durable only once
//!   [`StorageFile::sync_data`] or [`StorageFile::sync_all`] returned;
//! - a name (a file created, renamed or removed, a directory created) is
//!   durable only once its directory was synced ([`Storage::sync_dir`]);
//!   syncing a file does not make its name durable;
//! - what was written and not synced may, after a power loss, be there,
//!   be gone, or be there in part.
//!
//! A process killed with `kill -9` loses nothing the calls below returned
//! from: the kernel has it. Only the machine going down loses what was not
//! synced, and that is the crash the trait lets tests simulate.

use std::ffi::OsString;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

/// A file system: what [`StateDir`](crate::StateDir) does to its
/// directory and its files. Implementations: [`FsStorage`] (the real one)
/// and, in the tests, a simulation of what a power loss keeps.
pub trait Storage: Send + Sync + Debug {
    /// Creates the directory `path`; its parent must exist. Fails with
    /// [`io::ErrorKind::AlreadyExists`] if there is something there already.
    /// Durable once the parent is synced.
    fn create_dir(&self, path: &Path) -> io::Result<()>;

    /// The names of the entries of directory `dir`, in no particular order.
    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>>;

    /// Makes the entries of directory `dir` durable: files and directories
    /// created in it, renamed into or out of it, removed from it.
    fn sync_dir(&self, dir: &Path) -> io::Result<()>;

    /// The whole content of file `path`.
    fn read(&self, path: &Path) -> io::Result<Vec<u8>>;

    /// Creates file `path`, or empties it if it exists, and opens it for
    /// writing.
    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;

    /// Opens the existing file `path` for writing (to cut it short).
    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>>;

    /// Renames `from` to `to`, replacing `to` if it exists. Atomic: `to`
    /// names either the old file or the new one, never neither. Durable
    /// once the directories of both are synced.
    fn rename(&self, from: &Path, to: &Path) -> io::Result<()>;

    /// Removes file `path`. Durable once its directory is synced.
    fn remove(&self, path: &Path) -> io::Result<()>;
}

/// A file open for writing. `persist` only ever appends to a file it
/// created, or cuts one short, so there is no seek.
pub trait StorageFile: Send + Sync + Debug {
    /// Writes all of `bytes` after what this handle wrote before.
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()>;

    /// Cuts the file to `len` bytes (or extends it with zeros).
    fn set_len(&mut self, len: u64) -> io::Result<()>;

    /// `fdatasync`: the data written and the file's length become durable.
    fn sync_data(&mut self) -> io::Result<()>;

    /// `fsync`: the same, and the rest of the file's metadata. Neither
    /// makes the file's name durable; see [`Storage::sync_dir`].
    fn sync_all(&mut self) -> io::Result<()>;
}

/// The real file system, through `std::fs`.
#[derive(Clone, Copy, Debug, Default)]
pub struct FsStorage;

impl Storage for FsStorage {
    fn create_dir(&self, path: &Path) -> io::Result<()> {
        fs::create_dir(path)
    }

    fn list(&self, dir: &Path) -> io::Result<Vec<OsString>> {
        fs::read_dir(dir)?.map(|entry| entry.map(|e| e.file_name())).collect()
    }

    fn sync_dir(&self, dir: &Path) -> io::Result<()> {
        File::open(dir)?.sync_all()
    }

    fn read(&self, path: &Path) -> io::Result<Vec<u8>> {
        fs::read(path)
    }

    fn create(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(File::create(path)?))
    }

    fn open_write(&self, path: &Path) -> io::Result<Box<dyn StorageFile>> {
        Ok(Box::new(OpenOptions::new().write(true).open(path)?))
    }

    fn rename(&self, from: &Path, to: &Path) -> io::Result<()> {
        fs::rename(from, to)
    }

    fn remove(&self, path: &Path) -> io::Result<()> {
        fs::remove_file(path)
    }
}

impl StorageFile for File {
    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        Write::write_all(self, bytes)
    }

    fn set_len(&mut self, len: u64) -> io::Result<()> {
        File::set_len(self, len)
    }

    fn sync_data(&mut self) -> io::Result<()> {
        File::sync_data(self)
    }

    fn sync_all(&mut self) -> io::Result<()> {
        File::sync_all(self)
    }
}

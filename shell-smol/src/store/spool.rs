//! Spool files: one per message, `spool/<shard>/<message id>`, the shard being the last two
//! characters of the id (its random part, so files spread evenly). The files of finished
//! messages are emptied and kept in `spool/free/` to hold new ones ([`Recycler`]).

use std::collections::BTreeMap;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, OnceLock, mpsc};
use std::time::UNIX_EPOCH;

use outpost_core::io::SpoolFile;
use outpost_core::{MessageId, Time};

use super::StoreError;

pub const SPOOL_DIR: &str = "spool";
/// Emptied files waiting to be reused, named by a number (never a message id, so the
/// orphan scan passes them by).
const FREE_DIR: &str = "free";
/// Files kept in `free/` at most; past it a finished message's file is unlinked. As many
/// as the writer deletes in one go (`MAX_DEFERRED_DELETIONS`): under load the files of
/// one round of deletions hold the next round of new messages.
const MAX_FREE: usize = 4096;
const TEMP_PREFIX: &str = ".tmp-";

/// Where the message's spool file lives.
pub fn spool_path(data_dir: &Path, id: MessageId) -> PathBuf {
    let name = id.to_string();
    let shard = &name[name.len() - 2..];
    data_dir.join(SPOOL_DIR).join(shard).join(name)
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
}

/// A spool file written under its name, not yet synced: [`Recycler::stage`], then the file and its
/// directory are synced (side by side with the rest of the group, see [`concurrently`]),
/// then the row that names it may commit. A new file is created under its final name
/// (no temp name): until its row commits, a file is named by nothing, and one a crash
/// leaves behind is an orphan that the orphan clean-up removes (it spares young files and
/// messages the engine holds). A reused file is renamed from `free/`; syncing the
/// destination directory makes the new name durable, and the old name, if a crash keeps
/// it, is dropped at start-up ([`Recycler::open`]).
#[derive(Debug)]
pub struct Staged {
    pub path: PathBuf,
    pub dir: PathBuf,
}

/// A new file at `path` with `bytes`.
fn create(path: &Path, dir: &Path, data_dir: &Path, bytes: &[u8]) -> io::Result<fs::File> {
    let open = || {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)
    };
    let mut file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            make_shard(dir, data_dir)?;
            open()?
        }
        Err(e) => return Err(e),
    };
    match file.write_all(bytes) {
        Ok(()) => Ok(file),
        Err(e) => {
            let _ = fs::remove_file(path);
            Err(e)
        }
    }
}

/// A free file (open, emptied) written with `bytes` and renamed to `path`.
fn place(
    mut file: fs::File,
    free: &Path,
    path: &Path,
    dir: &Path,
    data_dir: &Path,
    bytes: &[u8],
) -> io::Result<fs::File> {
    let placed = file
        .write_all(bytes)
        .and_then(|()| match fs::rename(free, path) {
            Err(e) if e.kind() == io::ErrorKind::NotFound && free.exists() => {
                make_shard(dir, data_dir)?;
                fs::rename(free, path)
            }
            other => other,
        });
    match placed {
        Ok(()) => Ok(file),
        Err(e) => {
            let _ = fs::remove_file(free);
            Err(e)
        }
    }
}

/// The shard directory is new (or was removed): create it, and make its name durable.
fn make_shard(dir: &Path, data_dir: &Path) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fsync_dir(&data_dir.join(SPOOL_DIR))
}

impl Staged {
    /// Removes the file (its batch failed).
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// Spool files open for sending, by path, with how many connections hold each. A file in
/// here is not recycled (it is unlinked instead): a connection still reading it must not
/// see the next message's bytes.
fn readers() -> MutexGuard<'static, BTreeMap<PathBuf, usize>> {
    static READERS: Mutex<BTreeMap<PathBuf, usize>> = Mutex::new(BTreeMap::new());
    READERS.lock().unwrap_or_else(|p| p.into_inner())
}

/// Keeps a spool file open for sending out of the [`Recycler`]'s reach until dropped.
pub struct ReaderGuard {
    path: PathBuf,
}

impl Drop for ReaderGuard {
    fn drop(&mut self) {
        let mut readers = readers();
        if let Some(n) = readers.get_mut(&self.path) {
            *n -= 1;
            if *n == 0 {
                readers.remove(&self.path);
            }
        }
    }
}

/// Opens a spool file to send it. The open and the registration happen under the
/// registry's lock: a recycler either moved the file away first (then this fails with
/// `NotFound`, as after an unlink) or finds it registered and leaves it be.
pub fn open_for_sending(path: &Path) -> io::Result<(fs::File, ReaderGuard)> {
    let mut readers = readers();
    let file = fs::File::open(path)?;
    *readers.entry(path.to_path_buf()).or_insert(0) += 1;
    Ok((
        file,
        ReaderGuard {
            path: path.to_path_buf(),
        },
    ))
}

/// The emptied files of finished messages, reused for new ones.
///
/// Why: creating a file allocates an inode, and ext4 without a journal (this project's
/// benchmark VM) skips every inode freed in the last 30 s while it looks for one, reading
/// each one's inode block; with thousands of messages a second delivered and unlinked,
/// that scan was a third of the daemon's CPU. A rename into place allocates nothing, on
/// any filesystem.
///
/// Safety of the bytes: a file is recycled only when no connection has it open
/// ([`open_for_sending`]); otherwise it is unlinked as before. Crash safety: the free list
/// is not durable and is emptied at start-up (a crash can leave a rename made durable at
/// one end only, so a name in `free/` might still be a live message's; unlinking that
/// name leaves the message's own name and bytes alone).
pub struct Recycler {
    data_dir: PathBuf,
    dir: PathBuf,
    free: Vec<u32>,
    next: u32,
}

impl Recycler {
    /// Starts with an empty free list, removing what an earlier run left in `free/`.
    pub fn open(data_dir: &Path) -> Recycler {
        let dir = data_dir.join(SPOOL_DIR).join(FREE_DIR);
        if let Ok(entries) = fs::read_dir(&dir) {
            for entry in entries.flatten() {
                let _ = fs::remove_file(entry.path());
            }
        }
        if let Err(e) = fs::create_dir_all(&dir) {
            tracing::warn!(error = %e, "no spool free list: every new message gets a new file");
        }
        Recycler {
            data_dir: data_dir.to_path_buf(),
            dir,
            free: Vec::new(),
            next: 0,
        }
    }

    /// Step 1 of a group write: the file, written but not synced (returned to be synced).
    /// A free file, if there is one, is written and then renamed into place rather than a
    /// new one created (written first, so that the file appears under its name with its
    /// bytes and a fresh modification time, which the orphan clean-up goes by).
    pub fn stage(&mut self, id: MessageId, bytes: &[u8]) -> io::Result<(Staged, fs::File)> {
        let path = spool_path(&self.data_dir, id);
        let dir = path
            .parent()
            .ok_or_else(|| io::Error::other("spool path has no parent"))?
            .to_path_buf();
        let file = match self.take() {
            Some((free, file)) => place(file, &free, &path, &dir, &self.data_dir, bytes)?,
            None => create(&path, &dir, &self.data_dir, bytes)?,
        };
        Ok((Staged { path, dir }, file))
    }

    fn free_path(&self, n: u32) -> PathBuf {
        self.dir.join(n.to_string())
    }

    /// A free file, opened for writing and emptied, with its path; `None` if there is
    /// none (or it could not be opened: it is dropped).
    fn take(&mut self) -> Option<(PathBuf, fs::File)> {
        let n = self.free.pop()?;
        let free = self.free_path(n);
        match fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&free)
        {
            Ok(file) => Some((free, file)),
            Err(_) => {
                let _ = fs::remove_file(&free);
                None
            }
        }
    }

    /// Disposes of a finished message's file: emptied into the free list, or unlinked
    /// if the list is full or a connection still has the file open.
    pub fn release(&mut self, path: &Path) -> io::Result<()> {
        if self.free.len() >= MAX_FREE {
            return fs::remove_file(path);
        }
        let n = self.next;
        let free = self.free_path(n);
        {
            let readers = readers();
            if readers.contains_key(path) {
                drop(readers);
                return fs::remove_file(path);
            }
            fs::rename(path, &free)?;
        }
        // Moved away under the lock: nobody opens it by its old name any more.
        self.next = self.next.wrapping_add(1);
        match fs::OpenOptions::new()
            .write(true)
            .truncate(true)
            .open(&free)
        {
            Ok(_) => {
                self.free.push(n);
                Ok(())
            }
            Err(_) => fs::remove_file(&free),
        }
    }

    /// Releases the spool files of finished messages (missing ones are fine).
    pub fn release_all(&mut self, ids: &[MessageId]) {
        for &id in ids {
            match self.release(&spool_path(&self.data_dir, id)) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => {
                    tracing::warn!(message = %id, error = %e, "could not delete spool file");
                }
            }
        }
    }
}

/// What a group syncs: its spool files and their directories.
pub enum SyncItem {
    File(fs::File),
    Dir(PathBuf),
}

impl SyncItem {
    /// fsync (a file is closed afterwards, on the syncing thread).
    pub fn sync(self) -> io::Result<()> {
        match self {
            SyncItem::File(f) => f.sync_all(),
            SyncItem::Dir(d) => fsync_dir(&d),
        }
    }
}

/// Threads a group's fsyncs are spread over (started once, on first use, and kept).
/// Measured on a 2-vCPU VM: 32 files synced by 16 threads took ~4 ms, by 32 ~11 ms, by 4
/// ~28 ms, one after the other ~100 ms.
const SYNC_THREADS: usize = 16;

type Job = Box<dyn FnOnce() + Send>;

/// The persistent fsync threads, each with its own queue (handing a group's chunks out
/// wakes each thread directly, rather than one after the other through a shared lock).
struct SyncPool {
    workers: Vec<Mutex<mpsc::Sender<Job>>>,
}

/// The pool, `None` if no thread could be started (then everything runs inline).
fn sync_pool() -> Option<&'static SyncPool> {
    static POOL: OnceLock<Option<SyncPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let mut workers = Vec::new();
        for _ in 0..SYNC_THREADS {
            let (tx, rx) = mpsc::channel::<Job>();
            let spawned = std::thread::Builder::new()
                .name("outpost-fsync".into())
                .spawn(move || {
                    for job in rx {
                        // A panicking job loses its results (the caller sees an error),
                        // not the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if spawned.is_ok() {
                workers.push(Mutex::new(tx));
            }
        }
        (!workers.is_empty()).then_some(SyncPool { workers })
    })
    .as_ref()
}

/// Runs `f` on every item, spread over the persistent fsync threads; results in order.
///
/// Why: an fsync waits for the disk (and, with a journal, for a journal commit), and
/// concurrent fsyncs on one filesystem share that wait (ext4/jbd2, xfs), so N files synced
/// side by side cost about one wait instead of N (the reason Postfix's many cleanup
/// processes keep up). Used for the spool files of a group and their directories.
pub fn concurrently<T: Send + 'static>(
    items: Vec<T>,
    f: fn(T) -> io::Result<()>,
) -> Vec<io::Result<()>> {
    let n = items.len();
    let pool = match sync_pool() {
        Some(p) if n > 1 => p,
        _ => return items.into_iter().map(f).collect(),
    };
    let per = n.div_ceil(pool.workers.len());
    let (tx, rx) = mpsc::channel::<(usize, Vec<io::Result<()>>)>();
    let mut items = items.into_iter();
    let mut chunks = 0;
    let mut inline = Vec::new();
    for worker in &pool.workers {
        let chunk: Vec<T> = items.by_ref().take(per).collect();
        if chunk.is_empty() {
            break;
        }
        let tx = tx.clone();
        let i = chunks;
        chunks += 1;
        let job: Job = Box::new(move || {
            let _ = tx.send((i, chunk.into_iter().map(f).collect()));
        });
        let sent = worker.lock().unwrap_or_else(|p| p.into_inner()).send(job);
        if let Err(mpsc::SendError(job)) = sent {
            // That thread is gone: do it here.
            inline.push(job);
        }
    }
    drop(tx);
    for job in inline {
        job();
    }
    let mut parts: Vec<Option<Vec<io::Result<()>>>> = (0..chunks).map(|_| None).collect();
    for (i, results) in rx {
        if let Some(slot) = parts.get_mut(i) {
            *slot = Some(results);
        }
    }
    let mut out = Vec::with_capacity(n);
    for (i, part) in parts.into_iter().enumerate() {
        match part {
            Some(results) => out.extend(results),
            None => {
                let len = per.min(n.saturating_sub(i * per));
                out.extend((0..len).map(|_| Err(io::Error::other("fsync thread panicked"))));
            }
        }
    }
    out
}

/// Every spool file with its modification time. Temp files are left out (a crash can
/// leave one; it is rewritten or, being unnamed to any message, harmless).
pub fn list(data_dir: &Path) -> io::Result<Vec<SpoolFile>> {
    let root = data_dir.join(SPOOL_DIR);
    let mut out = Vec::new();
    for shard in fs::read_dir(&root)? {
        let shard = shard?;
        if !shard.file_type()?.is_dir() {
            continue;
        }
        for entry in fs::read_dir(shard.path())? {
            let entry = entry?;
            let name = entry.file_name();
            let Some(name) = name.to_str() else { continue };
            let Ok(message) = name.parse::<MessageId>() else {
                continue;
            };
            let modified = entry.metadata()?.modified()?;
            let ms = modified
                .duration_since(UNIX_EPOCH)
                .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
                .unwrap_or(0);
            out.push(SpoolFile {
                message,
                modified: Time(ms),
            });
        }
    }
    out.sort_by_key(|f| f.message);
    Ok(out)
}

pub fn delete(data_dir: &Path, ids: &[MessageId]) -> Result<(), StoreError> {
    let mut first_err = None;
    for &id in ids {
        match fs::remove_file(spool_path(data_dir, id)) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(message = %id, error = %e, "could not delete spool file");
                first_err.get_or_insert(e);
            }
        }
    }
    match first_err {
        Some(e) => Err(e.into()),
        None => Ok(()),
    }
}

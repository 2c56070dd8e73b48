//! Spool files: one per message, `spool/<shard>/<message id>`, the shard being the last two
//! characters of the id (its random part, so files spread evenly).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, mpsc};
use std::time::UNIX_EPOCH;

use outpost_core::io::SpoolFile;
use outpost_core::{MessageId, Time};

use super::StoreError;

pub const SPOOL_DIR: &str = "spool";
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

/// A spool file written under its name, not yet synced: [`stage`], then the file and its
/// directory are synced (side by side with the rest of the group, see [`concurrently`]),
/// then the row that names it may commit. No temp name and rename: until its row commits,
/// a file is named by nothing, and one a crash leaves behind is an orphan that the orphan
/// clean-up removes (it spares young files and messages the engine holds); a rename would
/// only put one more serial step (and a third round of syncs) before the commit.
#[derive(Debug)]
pub struct Staged {
    pub path: PathBuf,
    pub dir: PathBuf,
}

/// Step 1 of a group write: the file, written but not synced (returned to be synced).
pub fn stage(data_dir: &Path, id: MessageId, bytes: &[u8]) -> io::Result<(Staged, fs::File)> {
    let path = spool_path(data_dir, id);
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("spool path has no parent"))?
        .to_path_buf();
    let open = || {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
    };
    let mut file = match open() {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            // The shard directory is new (or was removed): create it, and make its name
            // durable too.
            fs::create_dir_all(&dir)?;
            fsync_dir(&data_dir.join(SPOOL_DIR))?;
            open()?
        }
        Err(e) => return Err(e),
    };
    match file.write_all(bytes) {
        Ok(()) => Ok((Staged { path, dir }, file)),
        Err(e) => {
            let _ = fs::remove_file(&path);
            Err(e)
        }
    }
}

impl Staged {
    /// Removes the file (its batch failed).
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.path);
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

//! Spool files: one per message, `spool/<shard>/<message id>`, the shard being the last two
//! characters of the id (its random part, so files spread evenly).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock, mpsc};
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

/// A spool file written under its temp name, not yet synced nor renamed ([`stage`], then
/// `file.sync_all()` (see [`concurrently`]), then [`Staged::publish`], then [`fsync_dir`]
/// of `dir`, so that a group's files can be synced together).
#[derive(Debug)]
pub struct Staged {
    pub file: Option<fs::File>,
    pub tmp: PathBuf,
    pub path: PathBuf,
    pub dir: PathBuf,
}

/// Step 1 of a group write: the temp file, written but not synced.
pub fn stage(data_dir: &Path, id: MessageId, bytes: &[u8]) -> io::Result<Staged> {
    let path = spool_path(data_dir, id);
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("spool path has no parent"))?
        .to_path_buf();
    let tmp = dir.join(format!("{TEMP_PREFIX}{id}"));
    let open = || {
        fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)
    };
    let file = match open() {
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
    let mut file = file;
    match file.write_all(bytes) {
        Ok(()) => Ok(Staged {
            file: Some(file),
            tmp,
            path,
            dir,
        }),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

impl Staged {
    /// Step 3: gives the synced file its name.
    pub fn publish(&self) -> io::Result<()> {
        fs::rename(&self.tmp, &self.path)
    }

    /// Removes the temp file (the group failed before publishing).
    pub fn discard(&self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

/// Threads a group's fsyncs are spread over (started once, on first use, and kept).
const SYNC_THREADS: usize = 64;

type Job = Box<dyn FnOnce() + Send>;

/// The persistent fsync threads: a queue of jobs they take from.
struct SyncPool {
    jobs: Mutex<mpsc::Sender<Job>>,
}

/// The pool, `None` if no thread could be started (then everything runs inline).
fn sync_pool() -> Option<&'static SyncPool> {
    static POOL: OnceLock<Option<SyncPool>> = OnceLock::new();
    POOL.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<Job>();
        let rx = Arc::new(Mutex::new(rx));
        let mut started = 0;
        for _ in 0..SYNC_THREADS {
            let rx = rx.clone();
            let spawned = std::thread::Builder::new()
                .name("outpost-fsync".into())
                .spawn(move || {
                    loop {
                        let job = match rx.lock() {
                            Ok(rx) => rx.recv(),
                            Err(_) => return,
                        };
                        let Ok(job) = job else { return };
                        // A panicking job loses its results (the caller sees an error),
                        // not the thread.
                        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(job));
                    }
                });
            if spawned.is_ok() {
                started += 1;
            }
        }
        (started > 0).then(|| SyncPool {
            jobs: Mutex::new(tx),
        })
    })
    .as_ref()
}

/// Runs `f` on every item, spread over the persistent fsync threads; results in order.
///
/// Why: an fsync waits for the disk (and, with a journal, for a journal commit), and
/// concurrent fsyncs on one filesystem share that wait (ext4/jbd2, xfs), so N files synced
/// side by side cost about one wait instead of N (the reason Postfix's many cleanup
/// processes keep up). Used for the spool files of a group, then for their directories.
pub fn concurrently<T: Send + 'static>(
    items: Vec<T>,
    f: fn(T) -> io::Result<()>,
) -> Vec<io::Result<()>> {
    let n = items.len();
    let pool = match sync_pool() {
        Some(p) if n > 1 => p,
        _ => return items.into_iter().map(f).collect(),
    };
    let per = n.div_ceil(SYNC_THREADS);
    let (tx, rx) = mpsc::channel::<(usize, Vec<io::Result<()>>)>();
    let mut items = items.into_iter();
    let mut chunks = 0;
    let mut inline = Vec::new();
    {
        let jobs = pool.jobs.lock().unwrap_or_else(|p| p.into_inner());
        loop {
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
            if let Err(mpsc::SendError(job)) = jobs.send(job) {
                // The threads are gone: do it here.
                inline.push(job);
            }
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

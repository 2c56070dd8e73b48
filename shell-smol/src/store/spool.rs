//! Spool files: one per message, `spool/<shard>/<message id>`, the shard being the last two
//! characters of the id (its random part, so files spread evenly).

use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};
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

/// A spool file written under its temp name, not yet synced nor renamed ([`write`] in
/// three steps, so that a group's files can be synced together).
#[derive(Debug)]
pub struct Staged {
    pub file: fs::File,
    pub tmp: PathBuf,
    pub path: PathBuf,
    pub dir: PathBuf,
}

/// Step 1 of a group write: the temp file, written but not synced. Then `file.sync_all()`
/// (see [`concurrently`]), then [`Staged::publish`], then [`fsync_dir`] of `dir`.
pub fn stage(data_dir: &Path, id: MessageId, bytes: &[u8]) -> io::Result<Staged> {
    let path = spool_path(data_dir, id);
    let dir = path
        .parent()
        .ok_or_else(|| io::Error::other("spool path has no parent"))?
        .to_path_buf();
    if !dir.is_dir() {
        fs::create_dir_all(&dir)?;
        // The new shard's name must be durable too.
        fsync_dir(&data_dir.join(SPOOL_DIR))?;
    }
    let tmp = dir.join(format!("{TEMP_PREFIX}{id}"));
    let written = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        Ok(f)
    })();
    match written {
        Ok(file) => Ok(Staged {
            file,
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

/// Most threads one group's fsyncs are spread over.
const MAX_SYNC_THREADS: usize = 32;

/// Runs `f` on every item, on up to `MAX_SYNC_THREADS` threads at once; results in order.
///
/// Why: an fsync waits for a journal commit, and concurrent fsyncs on one filesystem share
/// commits (ext4/jbd2, xfs), so N files synced side by side cost about one commit's wait
/// instead of N (the reason Postfix's many cleanup processes keep up). Used for the spool
/// files of a group, then for their directories.
pub fn concurrently<T: Sync>(
    items: &[T],
    f: impl Fn(&T) -> io::Result<()> + Sync,
) -> Vec<io::Result<()>> {
    if items.len() <= 1 {
        return items.iter().map(&f).collect();
    }
    let per = items.len().div_ceil(MAX_SYNC_THREADS);
    std::thread::scope(|scope| {
        let f = &f;
        let handles: Vec<_> = items
            .chunks(per)
            .map(|chunk| {
                let h = std::thread::Builder::new()
                    .name("outpost-fsync".into())
                    .spawn_scoped(scope, move || chunk.iter().map(f).collect::<Vec<_>>());
                (chunk, h)
            })
            .collect();
        let mut out = Vec::with_capacity(items.len());
        for (chunk, h) in handles {
            match h {
                Ok(h) => match h.join() {
                    Ok(results) => out.extend(results),
                    Err(_) => out.extend(
                        chunk
                            .iter()
                            .map(|_| Err(io::Error::other("fsync thread panicked"))),
                    ),
                },
                // No thread to be had: do this chunk here.
                Err(_) => out.extend(chunk.iter().map(f)),
            }
        }
        out
    })
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

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

/// Writes the file through a temp file: write, fsync, rename. The caller fsyncs the
/// directory (returned) before relying on the name.
pub fn write(data_dir: &Path, id: MessageId, bytes: &[u8]) -> io::Result<PathBuf> {
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
    let result = (|| {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(dir)
}

pub fn fsync_dir(dir: &Path) -> io::Result<()> {
    fs::File::open(dir)?.sync_all()
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

//! The SQLite store (WAL, `synchronous=FULL`) and the spool directory.
//!
//! Layout of the data directory:
//! - `outpost.db` (+ `-wal`, `-shm`): everything but message bodies, mode 0600.
//! - `spool/<shard>/<message id>`: each message as sent on the wire, written and synced
//!   (the file and its directory) before the row that references it commits.
//! - `spool/free/<n>`: emptied files of finished messages, renamed into place for new
//!   ones (`spool::Recycler`); not durable, cleared at start-up.
//!
//! One writer thread applies the engine's `StoreOp` batches with group commit
//! ([`Store::spawn_writer`]); the API reads through a small pool of connections
//! ([`Store::read`]); WAL lets them run side by side.

mod codec;
pub mod query;
mod schema;
mod snapshot;
mod spool;
mod writer;

use std::fs;
use std::io;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use outpost_core::io::SpoolFile;
use outpost_core::model::Snapshot;
use outpost_core::{MessageId, Time};
use rusqlite::{Connection, OpenFlags};

#[allow(unused_imports)]
pub use schema::CURRENT_VERSION as SCHEMA_VERSION;
#[allow(unused_imports)]
pub use spool::{open_for_sending, spool_path};
pub use writer::{Completions, WriterHandle};

/// How long a connection waits for a lock held by another connection.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);
/// Idle read connections kept for reuse. A connection opened past it is closed after its
/// read, and its successor starts cold (schema parse, every statement prepared again):
/// keep as many as requests commonly read at once (each HTTP connection's thread reads
/// on its own).
const MAX_IDLE_READERS: usize = 32;
/// Prepared statements cached per connection (rusqlite's default is 16, fewer than the
/// writer's statements or the API's queries: an LRU that small re-prepares in a cycle).
const STATEMENT_CACHE: usize = 96;
/// Page cache of a read connection, KiB. SQLite's default (2000 KiB) is per connection and
/// fills with whatever a large listing read: each pooled reader then holds ~1.3 MiB
/// rather than ~0.2 MiB. Reads are index lookups and short range scans over pages the
/// OS caches anyway (the start-up snapshot reads no slower with it).
const READER_CACHE_KIB: u32 = 256;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("sqlite: {0}")]
    Sqlite(#[from] rusqlite::Error),
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("schema: {0}")]
    Schema(String),
    #[error("corrupt record: {0}")]
    Corrupt(String),
}

/// The store. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Store {
    inner: Arc<Inner>,
}

struct Inner {
    data_dir: PathBuf,
    db_path: PathBuf,
    readers: Mutex<Vec<Connection>>,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Store")
            .field("data_dir", &self.inner.data_dir)
            .finish()
    }
}

/// Opens a connection with the store's settings.
fn open_connection(path: &Path) -> Result<Connection, StoreError> {
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(BUSY_TIMEOUT)?;
    conn.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
    // The query planner stability guarantee: one plan per statement whatever its bound
    // values. Without it SQLite prepares a cached statement again on every new binding of
    // a parameter that might sway the plan (the API key lookup, the send log: a full
    // parse and plan per request), which defeats the statement cache.
    conn.set_db_config(
        rusqlite::config::DbConfig::SQLITE_DBCONFIG_ENABLE_QPSG,
        true,
    )?;
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(StoreError::Schema(format!(
            "could not switch to WAL (journal_mode={mode})"
        )));
    }
    // Durability is the product: every commit reaches the disk.
    conn.execute_batch("PRAGMA synchronous=FULL; PRAGMA foreign_keys=ON;")?;
    Ok(conn)
}

/// A connection for `Store::read`: a smaller page cache (`READER_CACHE_KIB`).
fn open_reader(path: &Path) -> Result<Connection, StoreError> {
    let conn = open_connection(path)?;
    conn.execute_batch(&format!("PRAGMA cache_size=-{READER_CACHE_KIB};"))?;
    Ok(conn)
}

impl Store {
    /// Opens (creating if needed) the store in `data_dir` and runs migrations.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        if !data_dir.exists() {
            fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(data_dir)?;
        }
        fs::create_dir_all(data_dir.join(spool::SPOOL_DIR))?;
        let db_path = data_dir.join("outpost.db");
        // Create the file ourselves so that it (and the WAL SQLite derives from it) is 0600.
        fs::OpenOptions::new()
            .create(true)
            .append(true)
            .mode(0o600)
            .open(&db_path)?;
        fs::set_permissions(&db_path, fs::Permissions::from_mode(0o600))?;
        let mut conn = open_reader(&db_path)?;
        schema::migrate(&mut conn)?;
        let store = Store {
            inner: Arc::new(Inner {
                data_dir: data_dir.to_path_buf(),
                db_path,
                readers: Mutex::new(vec![conn]),
            }),
        };
        Ok(store)
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// Runs `f` on a pooled connection (reads, and the API's own small writes: tenants
    /// and keys). A connection that saw an error is dropped rather than reused.
    pub fn read<T>(
        &self,
        f: impl FnOnce(&mut Connection) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        let pooled = self
            .inner
            .readers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop();
        let mut conn = match pooled {
            Some(c) => c,
            None => open_reader(&self.inner.db_path)?,
        };
        let result = f(&mut conn);
        if result.is_ok() && conn.is_autocommit() {
            let mut idle = self.inner.readers.lock().unwrap_or_else(|p| p.into_inner());
            if idle.len() < MAX_IDLE_READERS {
                idle.push(conn);
            }
        }
        result
    }

    /// What the engine needs at start-up (`Input::Recovered`); see `Snapshot`.
    pub fn load_snapshot(
        &self,
        now: Time,
        warmup_window: Duration,
        idempotency_window: Duration,
    ) -> Result<Snapshot, StoreError> {
        let started = std::time::Instant::now();
        let snap =
            self.read(|conn| snapshot::load(conn, now, warmup_window, idempotency_window))?;
        tracing::info!(
            messages = snap.messages.len(),
            recipients = snap.recipients.len(),
            ms = started.elapsed().as_millis() as u64,
            "snapshot read"
        );
        Ok(snap)
    }

    /// Starts the single writer thread (group commit). Completions arrive on the returned
    /// receiver, one per submitted batch, in submission order.
    pub fn spawn_writer(&self) -> (WriterHandle, Completions) {
        writer::spawn(self.inner.db_path.clone(), self.inner.data_dir.clone())
    }

    /// Starts the single writer thread; it calls `done` (on its thread) with each batch's
    /// completion, in submission order.
    pub fn spawn_writer_with(
        &self,
        done: impl Fn(outpost_core::BatchId, Result<(), String>) + Send + Sync + 'static,
    ) -> WriterHandle {
        writer::spawn_with(
            self.inner.db_path.clone(),
            self.inner.data_dir.clone(),
            Box::new(done),
        )
    }

    /// Lists the spool files, and reads the live set (messages with any non-terminal
    /// recipient). Either part can fail on its own.
    #[allow(clippy::type_complexity)]
    pub fn scan_spool(
        &self,
    ) -> (
        Result<Vec<SpoolFile>, String>,
        Result<Vec<MessageId>, String>,
    ) {
        let files = spool::list(&self.inner.data_dir).map_err(|e| e.to_string());
        let live = self.read(query::live_messages).map_err(|e| e.to_string());
        (files, live)
    }

    /// Deletes spool files (missing ones are fine).
    pub fn delete_spool(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        spool::delete(&self.inner.data_dir, ids)
    }
}

#[cfg(test)]
pub(crate) mod tests;

//! The single writer thread: group commit of the engine's `StoreOp` batches.
//!
//! It takes whatever batches are waiting (up to `MAX_GROUP`), writes their spool files
//! (then syncs them and their directories, all side by side), and applies all of
//! them in one SQLite transaction, each batch inside its own SAVEPOINT: a batch that fails
//! (a constraint, a spool write on a full disk) is rolled back alone and answered `Err`,
//! the others commit. Answers go out only after COMMIT returned. It also removes the spool
//! files of final messages, many at a time, after the group in hand.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, mpsc};
use std::thread;

use outpost_core::io::{Receipt, ReceiptRecipient};
use outpost_core::model::StoreOp;
use outpost_core::status::{RecipientStatus, derive_message_status};
use outpost_core::{BatchId, MessageId};
use rusqlite::{Connection, OptionalExtension, params};

use super::codec::*;
use super::{StoreError, open_connection, spool};

/// Most batches applied in one transaction.
const MAX_GROUP: usize = 512;
/// Prepared statements the writer connection keeps (every statement it runs).
const STATEMENT_CACHE: usize = 64;

/// Where a batch's completion goes: `(batch, Ok(()) | Err(reason))`, in submission order.
type Done = Box<dyn Fn(BatchId, Result<(), String>) + Send + Sync>;

/// Where batch completions arrive: `(batch, Ok(()) | Err(reason))`, in submission order.
pub type Completions = async_channel::Receiver<(BatchId, Result<(), String>)>;

enum Cmd {
    Batch(BatchId, Vec<StoreOp>),
    /// Spool files of final messages, removed after the group in hand commits.
    DeleteSpool(Vec<MessageId>),
    Stop,
}

/// Feeds the writer thread. Dropping it without `flush_and_stop` also stops the thread
/// after the batches already submitted.
pub struct WriterHandle {
    tx: mpsc::Sender<Cmd>,
    done: Arc<Done>,
    thread: Option<thread::JoinHandle<()>>,
}

impl std::fmt::Debug for WriterHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriterHandle").finish_non_exhaustive()
    }
}

impl WriterHandle {
    /// Queues a batch; its completion is reported as `spawn`/`spawn_with` says.
    pub fn submit(&self, batch: BatchId, ops: Vec<StoreOp>) {
        if self.tx.send(Cmd::Batch(batch, ops)).is_err() {
            (self.done)(batch, Err("store writer is not running".to_string()));
        }
    }

    /// Queues the removal of spool files (missing ones are fine). The writer thread does
    /// it when no batch waits, many at a time, off the answers' path.
    /// Returns the ids back if the writer is not running.
    pub fn delete_spool(&self, ids: Vec<MessageId>) -> Result<(), Vec<MessageId>> {
        match self.tx.send(Cmd::DeleteSpool(ids)) {
            Ok(()) => Ok(()),
            Err(mpsc::SendError(Cmd::DeleteSpool(ids))) => Err(ids),
            Err(_) => Err(Vec::new()),
        }
    }

    /// Applies everything submitted so far, then stops the thread and waits for it.
    pub fn flush_and_stop(mut self) {
        let _ = self.tx.send(Cmd::Stop);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts the writer; completions arrive on the returned channel.
pub fn spawn(db_path: PathBuf, data_dir: PathBuf) -> (WriterHandle, Completions) {
    let (done_tx, done_rx) = async_channel::unbounded();
    let handle = spawn_with(
        db_path,
        data_dir,
        Box::new(move |batch, result| {
            let _ = done_tx.try_send((batch, result));
        }),
    );
    (handle, done_rx)
}

/// Starts the writer; it calls `done` with each batch's completion (from its thread).
pub fn spawn_with(db_path: PathBuf, data_dir: PathBuf, done: Done) -> WriterHandle {
    let (tx, rx) = mpsc::channel();
    let done = Arc::new(done);
    let report = done.clone();
    let thread = thread::Builder::new()
        .name("outpost-store-writer".to_string())
        .spawn(move || run(&db_path, &data_dir, &rx, &report))
        .ok();
    if thread.is_none() {
        tracing::error!("could not start the store writer thread");
    }
    WriterHandle { tx, done, thread }
}

/// Spool deletions kept waiting for an idle moment at most (then done between groups).
const MAX_DEFERRED_DELETIONS: usize = 4096;

fn run(db_path: &Path, data_dir: &Path, rx: &mpsc::Receiver<Cmd>, done: &Done) {
    let mut conn = match open_connection(db_path) {
        Ok(c) => {
            c.set_prepared_statement_cache_capacity(STATEMENT_CACHE);
            Some(c)
        }
        Err(e) => {
            tracing::error!(error = %e, "store writer could not open the database");
            None
        }
    };
    // Spool files to remove: done when nothing else is queued (commits come first, the
    // answers wait for them), or once too many wait.
    let mut deletions: Vec<MessageId> = Vec::new();
    // Finished messages' files hold the next ones (see `spool::Recycler`).
    let mut recycler = spool::Recycler::open(data_dir);
    let delete = |ids: &mut Vec<MessageId>, recycler: &mut spool::Recycler| {
        if !ids.is_empty() {
            // Errors are logged per file; nothing else to do about them here.
            recycler.release_all(ids);
            ids.clear();
        }
    };
    let mut stop = false;
    while !stop {
        let mut batches = Vec::new();
        let first = match rx.try_recv() {
            Ok(cmd) => Ok(cmd),
            Err(mpsc::TryRecvError::Disconnected) => break,
            Err(mpsc::TryRecvError::Empty) => {
                delete(&mut deletions, &mut recycler);
                rx.recv()
            }
        };
        match first {
            Ok(cmd) => stop = take(cmd, &mut batches, &mut deletions),
            Err(_) => break,
        }
        // Everything already queued goes into this group.
        while !stop && batches.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(cmd) => stop = take(cmd, &mut batches, &mut deletions),
                Err(_) => break,
            }
        }
        if !batches.is_empty() {
            let started = std::time::Instant::now();
            let results = match conn.as_mut() {
                Some(conn) => commit_group(conn, &mut recycler, batches),
                None => batches
                    .into_iter()
                    .map(|(id, _)| (id, Err("store is not open".to_string())))
                    .collect(),
            };
            crate::metrics::STORE_COMMIT.observe(started.elapsed());
            for (id, r) in results {
                done(id, r);
            }
        }
        if deletions.len() >= MAX_DEFERRED_DELETIONS {
            delete(&mut deletions, &mut recycler);
        }
    }
    delete(&mut deletions, &mut recycler);
}

/// Files a command: a batch into the group, deletions into the list. True for `Stop`.
fn take(
    cmd: Cmd,
    batches: &mut Vec<(BatchId, Vec<StoreOp>)>,
    deletions: &mut Vec<MessageId>,
) -> bool {
    match cmd {
        Cmd::Batch(id, ops) => {
            batches.push((id, ops));
            false
        }
        Cmd::DeleteSpool(ids) => {
            deletions.extend(ids);
            false
        }
        Cmd::Stop => true,
    }
}

/// Per batch: the spool files it wrote (to remove if it does not commit), and its error.
struct Pending {
    id: BatchId,
    ops: Vec<StoreOp>,
    written: Vec<PathBuf>,
    dirs: BTreeSet<PathBuf>,
    error: Option<String>,
}

impl Pending {
    fn fail(&mut self, error: String) {
        for p in self.written.drain(..) {
            let _ = std::fs::remove_file(p);
        }
        self.error.get_or_insert(error);
    }
}

/// Runs a statement without parameters through the connection's statement cache (BEGIN,
/// COMMIT, SAVEPOINT...: `execute_batch` would parse them anew every time).
fn exec_cached(conn: &Connection, sql: &str) -> rusqlite::Result<()> {
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

/// Applies a group of batches in one transaction; returns each batch's result in order.
pub(super) fn commit_group(
    conn: &mut Connection,
    recycler: &mut spool::Recycler,
    batches: Vec<(BatchId, Vec<StoreOp>)>,
) -> Vec<(BatchId, Result<(), String>)> {
    let mut pending: Vec<Pending> = batches
        .into_iter()
        .map(|(id, ops)| Pending {
            id,
            ops,
            written: Vec::new(),
            dirs: BTreeSet::new(),
            error: None,
        })
        .collect();

    // 1. Spool files, durable before the rows that name them commit: every file of the
    //    group written, then all of them and their directories synced side by side (see
    //    `spool::concurrently` for why not one after the other).
    let mut staged: Vec<(usize, spool::Staged)> = Vec::new();
    let mut files: Vec<spool::SyncItem> = Vec::new();
    let mut seen = BTreeSet::new();
    // One read transaction for the group's "already stored?" checks, not one per message.
    let read_txn = pending.iter().any(|p| {
        p.ops
            .iter()
            .any(|op| matches!(op, StoreOp::InsertMessage { .. }))
    }) && exec_cached(conn, "BEGIN").is_ok();
    for (i, p) in pending.iter_mut().enumerate() {
        stage_spools(conn, recycler, p, i, &mut staged, &mut files, &mut seen);
    }
    if read_txn {
        let _ = exec_cached(conn, "COMMIT");
    }
    let dirs: Vec<PathBuf> = staged
        .iter()
        .map(|(_, s)| s.dir.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let n_files = files.len();
    files.extend(dirs.iter().cloned().map(spool::SyncItem::Dir));
    let mut results = spool::concurrently(files, spool::SyncItem::sync).into_iter();
    let file_results: Vec<std::io::Result<()>> = results.by_ref().take(n_files).collect();
    let dir_result: BTreeMap<PathBuf, Result<(), String>> = dirs
        .into_iter()
        .zip(results.map(|r| r.map_err(|e| e.to_string())))
        .collect();
    for ((i, s), synced) in staged.iter().zip(file_results) {
        let Some(p) = pending.get_mut(*i) else {
            s.discard();
            continue;
        };
        if p.error.is_some() {
            s.discard();
            continue;
        }
        match synced {
            Ok(()) => {
                p.written.push(s.path.clone());
                p.dirs.insert(s.dir.clone());
            }
            Err(e) => {
                s.discard();
                tracing::warn!(path = %s.path.display(), error = %e, "spool write failed");
                p.fail(format!("spool write for {} failed: {e}", s.path.display()));
            }
        }
    }
    drop(staged);
    for p in &mut pending {
        let failed = p.dirs.iter().find_map(|d| match dir_result.get(d) {
            Some(Ok(())) => None,
            Some(Err(e)) => Some(e.clone()),
            None => Some("not synced".to_string()),
        });
        if let Some(e) = failed {
            p.fail(format!("spool directory fsync failed: {e}"));
        }
    }

    // 2. One transaction. Optimistically without savepoints (a failing batch is rare and
    //    a savepoint costs a sub-journal write of every page it touches); if a batch fails,
    //    the whole transaction is rolled back and the group is applied again with one
    //    savepoint per batch, so that only the failing batch is refused.
    let group_error = match apply_group(conn, &mut pending, false) {
        Ok(true) => None,
        Ok(false) => apply_group(conn, &mut pending, true).err(),
        Err(e) => Some(e),
    };
    if let Some(e) = group_error {
        tracing::error!(error = %e, "store transaction failed");
        for p in pending.iter_mut().filter(|p| p.error.is_none()) {
            p.fail(e.clone());
        }
    }
    pending
        .into_iter()
        .map(|p| match p.error {
            None => (p.id, Ok(())),
            Some(e) => (p.id, Err(e)),
        })
        .collect()
}

/// Applies the group's good batches in one transaction. Without `savepoints`, the first
/// failing batch rolls everything back and `Ok(false)` is returned (nothing committed,
/// no batch marked). With them, a failing batch is rolled back alone and marked failed.
/// `Err` is a failure of the transaction itself (BEGIN or COMMIT).
fn apply_group(
    conn: &Connection,
    pending: &mut [Pending],
    savepoints: bool,
) -> Result<bool, String> {
    exec_cached(conn, "BEGIN IMMEDIATE").map_err(|e| format!("begin: {e}"))?;
    for p in pending.iter_mut().filter(|p| p.error.is_none()) {
        let result = if savepoints {
            apply_batch(conn, &p.ops)
        } else {
            p.ops.iter().try_for_each(|op| apply_op(conn, op))
        };
        if let Err(e) = result {
            if !savepoints {
                tracing::debug!(batch = p.id.0, error = %e, "store group retried with savepoints");
                return match exec_cached(conn, "ROLLBACK") {
                    Ok(()) => Ok(false),
                    Err(e) => Err(format!("rollback: {e}")),
                };
            }
            tracing::warn!(batch = p.id.0, error = %e, "store batch rolled back");
            p.fail(e.to_string());
        }
    }
    if let Err(e) = exec_cached(conn, "COMMIT") {
        let _ = exec_cached(conn, "ROLLBACK");
        return Err(format!("commit: {e}"));
    }
    Ok(true)
}

/// Writes (unsynced) the spool files of the batch's new messages.
fn stage_spools(
    conn: &Connection,
    recycler: &mut spool::Recycler,
    p: &mut Pending,
    batch: usize,
    staged: &mut Vec<(usize, spool::Staged)>,
    files: &mut Vec<spool::SyncItem>,
    seen: &mut BTreeSet<outpost_core::MessageId>,
) {
    for op in &p.ops {
        let StoreOp::InsertMessage { message, spool } = op else {
            continue;
        };
        let id = message.id.to_string();
        // Idempotent: a replayed insert of a stored message leaves its file alone.
        let exists = conn
            .prepare_cached("SELECT 1 FROM messages WHERE id = ?1")
            .and_then(|mut s| s.query_row([&id], |_| Ok(())).optional());
        match exists {
            Ok(Some(())) => continue,
            Ok(None) => {}
            Err(e) => {
                p.error.get_or_insert(format!("reading message {id}: {e}"));
                return;
            }
        }
        // The same message twice in one group (a replay): one file is enough.
        if !seen.insert(message.id) {
            continue;
        }
        match recycler.stage(message.id, spool) {
            Ok((s, file)) => {
                staged.push((batch, s));
                files.push(spool::SyncItem::File(file));
            }
            Err(e) => {
                tracing::warn!(message = %message.id, error = %e, "spool write failed");
                p.error
                    .get_or_insert(format!("spool write for {id} failed: {e}"));
                return;
            }
        }
    }
}

fn apply_batch(conn: &Connection, ops: &[StoreOp]) -> Result<(), StoreError> {
    exec_cached(conn, "SAVEPOINT batch")?;
    let result = ops.iter().try_for_each(|op| apply_op(conn, op));
    match result {
        Ok(()) => {
            exec_cached(conn, "RELEASE batch")?;
            Ok(())
        }
        Err(e) => {
            exec_cached(conn, "ROLLBACK TO batch")?;
            exec_cached(conn, "RELEASE batch")?;
            Err(e)
        }
    }
}

fn json<T: serde::Serialize>(v: &T) -> Result<String, StoreError> {
    serde_json::to_string(v).map_err(|e| StoreError::Corrupt(e.to_string()))
}

/// A recipient update that never overwrites a terminal status (the statuses of
/// `RecipientStatus::is_terminal`; `terminal_status_is_never_overwritten` tests it).
const UPDATE_RECIPIENT_SQL: &str = "UPDATE recipients SET status = ?3, attempts = ?4,
    next_attempt_at = ?5, updated_at = ?6, reason = ?7
    WHERE message_id = ?1 AND idx = ?2
        AND status NOT IN ('delivered','bounced','failed','suppressed')";

pub(super) fn apply_op(conn: &Connection, op: &StoreOp) -> Result<(), StoreError> {
    match op {
        StoreOp::InsertMessage { message: m, .. } => {
            let id = m.id.to_string();
            let status = m.status();
            let receipt = match &m.idempotency {
                None => None,
                Some(_) => Some(json(&Receipt {
                    id: m.id,
                    message_id: format!("<{}>", m.message_id_header),
                    status,
                    recipients: m
                        .recipients
                        .iter()
                        .map(|r| ReceiptRecipient {
                            address: r.address.clone(),
                            status: r.status,
                        })
                        .collect(),
                })?),
            };
            let inserted = conn
                .prepare_cached(
                    "INSERT INTO messages (id, tenant_id, source, message_id_header, mail_from,
                        subject, tags, size, smtputf8, eight_bit, created_at, expires_at, status,
                        updated_at, idem_key, idem_hash, receipt)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?11, ?14, ?15, ?16)
                     ON CONFLICT(id) DO NOTHING",
                )?
                .execute(params![
                    id,
                    u64_to_sql(m.tenant.0),
                    source_str(m.source),
                    m.message_id_header,
                    m.mail_from,
                    m.subject,
                    json(&m.tags)?,
                    u64_to_sql(m.size),
                    m.smtputf8,
                    m.eight_bit,
                    time_to_sql(m.created_at),
                    time_to_sql(m.expires_at),
                    status.as_str(),
                    m.idempotency.as_ref().map(|i| &i.key),
                    m.idempotency.as_ref().map(|i| &i.request_hash),
                    receipt,
                ])?;
            if inserted == 0 {
                return Ok(());
            }
            let mut stmt = conn.prepare_cached(
                "INSERT INTO recipients (message_id, idx, address, domain, kind, status, attempts,
                    next_attempt_at, updated_at, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?;
            for r in &m.recipients {
                stmt.execute(params![
                    id,
                    r.idx,
                    r.address,
                    r.domain,
                    kind_str(r.kind),
                    r.status.as_str(),
                    r.attempts,
                    opt_time_to_sql(r.next_attempt_at),
                    time_to_sql(r.updated_at),
                    r.reason,
                ])?;
            }
        }
        StoreOp::UpdateRecipient {
            message,
            idx,
            status,
            attempts,
            next_attempt_at,
            at,
            reason,
        } => {
            let id = message.to_string();
            let changed = conn.prepare_cached(UPDATE_RECIPIENT_SQL)?.execute(params![
                id,
                idx,
                status.as_str(),
                attempts,
                opt_time_to_sql(*next_attempt_at),
                time_to_sql(*at),
                reason,
            ])?;
            if changed == 0 {
                tracing::debug!(message = %message, idx, "recipient update refused (terminal or unknown)");
                return Ok(());
            }
            let statuses = conn
                .prepare_cached("SELECT status FROM recipients WHERE message_id = ?1")?
                .query_map([&id], |r| {
                    get_parsed(r, 0, "recipient status", RecipientStatus::parse)
                })?
                .collect::<Result<Vec<_>, _>>()?;
            let derived = derive_message_status(statuses);
            conn.prepare_cached("UPDATE messages SET status = ?2, updated_at = ?3 WHERE id = ?1")?
                .execute(params![id, derived.as_str(), time_to_sql(*at)])?;
        }
        StoreOp::InsertAttempt(a) => {
            conn.prepare_cached(
                "INSERT INTO delivery_attempts (message_id, idx, attempt, tenant_id, domain,
                    started_at, duration_ms, status, stage, smtp_code, enhanced_code, response,
                    category, rule, mx, ip, tls, breaker_failure)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16,
                    ?17, ?18)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                a.message.to_string(),
                a.idx,
                a.attempt,
                u64_to_sql(a.tenant.0),
                a.domain,
                time_to_sql(a.started_at),
                u64_to_sql(a.duration_ms),
                a.status.as_str(),
                a.stage.as_str(),
                a.smtp_code,
                a.enhanced_code,
                a.response,
                a.category.as_str(),
                a.rule,
                a.mx,
                a.ip,
                json(&a.tls)?,
                a.breaker_failure,
            ])?;
        }
        StoreOp::InsertEvent(e) => {
            conn.prepare_cached(
                "INSERT INTO events (seq, id, tenant_id, kind, at, message_id, idx, payload)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(id) DO NOTHING",
            )?
            .execute(params![
                u64_to_sql(e.seq),
                e.id.to_string(),
                u64_to_sql(e.tenant.0),
                e.kind.as_str(),
                time_to_sql(e.at),
                e.message.to_string(),
                e.idx,
                &*e.payload,
            ])?;
        }
        StoreOp::AddSuppression(s) => {
            conn.prepare_cached(
                "INSERT INTO suppressions (tenant_id, address, source, reason, category,
                    smtp_code, enhanced_code, event_id, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                u64_to_sql(s.tenant.0),
                s.address,
                suppression_source_str(s.source),
                s.reason,
                s.category.map(|c| c.as_str()),
                s.smtp_code,
                s.enhanced_code,
                s.event.map(|e| e.to_string()),
                time_to_sql(s.created_at),
            ])?;
        }
        StoreOp::RemoveSuppression { tenant, address } => {
            conn.prepare_cached("DELETE FROM suppressions WHERE tenant_id = ?1 AND address = ?2")?
                .execute(params![u64_to_sql(tenant.0), address])?;
        }
        StoreOp::UpsertEndpoint(ep) => {
            let id = ep.id.to_string();
            let events: Vec<&str> = ep.events.iter().map(|k| k.as_str()).collect();
            let changed = conn
                .prepare_cached(
                    "INSERT INTO webhook_endpoints (id, tenant_id, url, events, created_at)
                     VALUES (?1, ?2, ?3, ?4, ?5)
                     ON CONFLICT(id) DO UPDATE SET url = excluded.url, events = excluded.events
                     WHERE webhook_endpoints.tenant_id = excluded.tenant_id",
                )?
                .execute(params![
                    id,
                    u64_to_sql(ep.tenant.0),
                    ep.url,
                    json(&events)?,
                    time_to_sql(ep.created_at),
                ])?;
            if changed == 0 {
                return Err(StoreError::Corrupt(format!(
                    "endpoint {id} belongs to another tenant"
                )));
            }
            conn.prepare_cached("DELETE FROM webhook_secrets WHERE endpoint_id = ?1")?
                .execute([&id])?;
            let mut stmt = conn.prepare_cached(
                "INSERT INTO webhook_secrets (endpoint_id, pos, key, created_at, expires_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?;
            for (pos, s) in ep.secrets.iter().enumerate() {
                stmt.execute(params![
                    id,
                    pos as i64,
                    s.key,
                    time_to_sql(s.created_at),
                    opt_time_to_sql(s.expires_at),
                ])?;
            }
        }
        StoreOp::DeleteEndpoint { tenant, endpoint } => {
            let id = endpoint.to_string();
            let changed = conn
                .prepare_cached("DELETE FROM webhook_endpoints WHERE id = ?1 AND tenant_id = ?2")?
                .execute(params![id, u64_to_sql(tenant.0)])?;
            if changed > 0 {
                conn.prepare_cached("DELETE FROM webhook_deliveries WHERE endpoint_id = ?1")?
                    .execute([&id])?;
                conn.prepare_cached("DELETE FROM webhook_attempts WHERE endpoint_id = ?1")?
                    .execute([&id])?;
            }
        }
        StoreOp::UpsertWebhookDelivery(d) => {
            conn.prepare_cached(
                "INSERT INTO webhook_deliveries (endpoint_id, event_id, event_seq, tenant_id,
                    state, attempts, next_attempt_at, updated_at)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT(endpoint_id, event_id) DO UPDATE SET state = excluded.state,
                    attempts = excluded.attempts, next_attempt_at = excluded.next_attempt_at,
                    updated_at = excluded.updated_at",
            )?
            .execute(params![
                d.endpoint.to_string(),
                d.event.to_string(),
                u64_to_sql(d.event_seq),
                u64_to_sql(d.tenant.0),
                delivery_state_str(d.state),
                d.attempts,
                opt_time_to_sql(d.next_attempt_at),
                time_to_sql(d.updated_at),
            ])?;
        }
        StoreOp::InsertWebhookAttempt(a) => {
            conn.prepare_cached(
                "INSERT INTO webhook_attempts (endpoint_id, event_id, attempt, tenant_id, at,
                    duration_ms, status_code, error)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)
                 ON CONFLICT DO NOTHING",
            )?
            .execute(params![
                a.endpoint.to_string(),
                a.event.to_string(),
                a.attempt,
                u64_to_sql(a.tenant.0),
                time_to_sql(a.at),
                u64_to_sql(a.duration_ms),
                a.status_code,
                a.error,
            ])?;
        }
    }
    Ok(())
}

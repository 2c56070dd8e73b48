//! PLACEHOLDER for the store (SQLite + spool), owned by the `store` branch. It has exactly
//! the agreed interface so the runtime can be built and tried before that branch is merged;
//! it keeps nothing across restarts except spool files. Replaced wholesale at the merge.
#![allow(dead_code, clippy::type_complexity)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use outpost_core::io::SpoolFile;
use outpost_core::model::{Snapshot, StoreOp};
use outpost_core::{BatchId, MessageId, Time};

#[derive(Debug, thiserror::Error)]
#[error("store: {0}")]
pub struct StoreError(pub String);

#[derive(Clone)]
pub struct Store {
    dir: Arc<PathBuf>,
}

pub struct WriterHandle {
    tx: std::sync::mpsc::Sender<(BatchId, Vec<StoreOp>)>,
    thread: std::thread::JoinHandle<()>,
}

pub fn spool_path(data_dir: &Path, id: MessageId) -> PathBuf {
    data_dir.join("spool").join(format!("{id}.eml"))
}

impl Store {
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir.join("spool")).map_err(|e| StoreError(e.to_string()))?;
        Ok(Store {
            dir: Arc::new(data_dir.to_path_buf()),
        })
    }

    pub fn load_snapshot(
        &self,
        _now: Time,
        _warmup_window: Duration,
        _idempotency_window: Duration,
    ) -> Result<Snapshot, StoreError> {
        Ok(Snapshot::default())
    }

    pub fn spawn_writer(
        &self,
    ) -> (
        WriterHandle,
        async_channel::Receiver<(BatchId, Result<(), String>)>,
    ) {
        let (tx, rx) = std::sync::mpsc::channel::<(BatchId, Vec<StoreOp>)>();
        let (done_tx, done_rx) = async_channel::unbounded();
        let dir = self.dir.clone();
        let thread = std::thread::spawn(move || {
            for (batch, ops) in rx {
                let mut r = Ok(());
                for op in ops {
                    if let StoreOp::InsertMessage { message, spool } = op
                        && let Err(e) = std::fs::write(spool_path(&dir, message.id), &spool[..])
                    {
                        r = Err(e.to_string());
                    }
                }
                let _ = done_tx.send_blocking((batch, r));
            }
        });
        (WriterHandle { tx, thread }, done_rx)
    }

    pub fn scan_spool(
        &self,
    ) -> (
        Result<Vec<SpoolFile>, String>,
        Result<Vec<MessageId>, String>,
    ) {
        (Ok(Vec::new()), Err("placeholder store".into()))
    }

    pub fn delete_spool(&self, ids: &[MessageId]) -> Result<(), StoreError> {
        for id in ids {
            let _ = std::fs::remove_file(spool_path(&self.dir, *id));
        }
        Ok(())
    }
}

impl WriterHandle {
    pub fn submit(&self, batch: BatchId, ops: Vec<StoreOp>) {
        let _ = self.tx.send((batch, ops));
    }
    pub fn flush_and_stop(self) {
        drop(self.tx);
        let _ = self.thread.join();
    }
}

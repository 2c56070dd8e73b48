#![allow(clippy::unwrap_used)]

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use outpost_core::classify::Category;
use outpost_core::model::*;
use outpost_core::smtp::Stage;
use outpost_core::status::{MessageStatus, RecipientStatus};
use outpost_core::{BatchId, EndpointId, EventId, MessageId, TenantId, Time, ulid};

use super::*;

pub(crate) const T0: Time = Time(1_800_000_000_000);
const HOUR: Duration = Duration::from_secs(3600);

pub(crate) fn msg_id(n: u64, at: Time) -> MessageId {
    MessageId(ulid(at, u128::from(n) * 7919 + 13))
}

pub(crate) fn message(id: MessageId, tenant: u64, rcpts: &[&str]) -> MessageRecord {
    MessageRecord {
        id,
        tenant: TenantId(tenant),
        source: Source::Api,
        message_id_header: format!("{id}@example.com"),
        mail_from: "sender@example.com".to_string(),
        subject: "hello".to_string(),
        tags: vec!["t1".to_string()],
        size: 42,
        smtputf8: false,
        eight_bit: true,
        created_at: id.minted_at(),
        expires_at: id.minted_at().plus(Duration::from_secs(7 * 86400)),
        idempotency: None,
        recipients: rcpts
            .iter()
            .enumerate()
            .map(|(i, a)| RecipientRecord {
                idx: i as u32,
                address: a.to_string(),
                domain: a.rsplit('@').next().unwrap().to_string(),
                kind: if i == 0 {
                    RecipientKind::To
                } else {
                    RecipientKind::Cc
                },
                status: RecipientStatus::Queued,
                attempts: 0,
                next_attempt_at: Some(id.minted_at()),
                updated_at: id.minted_at(),
                reason: None,
            })
            .collect(),
    }
}

pub(crate) fn insert(m: MessageRecord) -> StoreOp {
    let spool: Arc<[u8]> = Arc::from(format!("Subject: {}\r\n\r\nbody\r\n", m.id).as_bytes());
    StoreOp::InsertMessage { message: m, spool }
}

fn update(id: MessageId, idx: u32, status: RecipientStatus, at: Time) -> StoreOp {
    StoreOp::UpdateRecipient {
        message: id,
        idx,
        status,
        attempts: 1,
        next_attempt_at: None,
        at,
        reason: Some(format!("now {}", status.as_str())),
    }
}

pub(crate) fn attempt(id: MessageId, idx: u32, n: u32, at: Time) -> AttemptRecord {
    AttemptRecord {
        message: id,
        idx,
        tenant: TenantId(1),
        domain: "dest.example".to_string(),
        attempt: n,
        started_at: at,
        duration_ms: 120,
        status: RecipientStatus::Deferred,
        stage: Stage::Rcpt,
        smtp_code: Some(451),
        enhanced_code: Some("4.7.1".to_string()),
        response: "try later".to_string(),
        category: Category::RateLimited,
        rule: "r1".to_string(),
        mx: Some("mx.dest.example".to_string()),
        ip: Some("192.0.2.1".to_string()),
        tls: TlsRecord::Starttls { verified: false },
        breaker_failure: true,
    }
}

pub(crate) fn event(seq: u64, tenant: u64, id: MessageId, kind: EventKind) -> EventRecord {
    let eid = EventId(ulid(T0, u128::from(seq)));
    EventRecord {
        seq,
        id: eid,
        tenant: TenantId(tenant),
        kind,
        at: T0,
        message: id,
        idx: 0,
        payload: format!(
            r#"{{"id":"{eid}","seq":{seq},"type":"{}","data":{{"message_id":"{id}"}}}}"#,
            kind.as_str()
        )
        .into(),
    }
}

pub(crate) fn endpoint(n: u64, tenant: u64) -> EndpointRecord {
    EndpointRecord {
        id: EndpointId(ulid(T0, u128::from(n))),
        tenant: TenantId(tenant),
        url: format!("https://hooks.example/{n}"),
        events: [EventKind::Delivered, EventKind::Bounced]
            .into_iter()
            .collect(),
        secrets: vec![
            WebhookSecret {
                key: vec![1, 2, 3, 255],
                created_at: T0,
                expires_at: None,
            },
            WebhookSecret {
                key: vec![9; 24],
                created_at: Time(1),
                expires_at: Some(T0.plus(HOUR)),
            },
        ],
        created_at: T0,
    }
}

/// Applies batches through the real writer thread and returns their results.
pub(crate) fn apply(store: &Store, batches: Vec<Vec<StoreOp>>) -> Vec<Result<(), String>> {
    let (w, done) = store.spawn_writer();
    let n = batches.len();
    for (i, ops) in batches.into_iter().enumerate() {
        w.submit(BatchId(i as u64), ops);
    }
    w.flush_and_stop();
    let mut out = vec![Err("missing".to_string()); n];
    while let Ok((b, r)) = done.try_recv() {
        out[b.0 as usize] = r;
    }
    out
}

fn snapshot(store: &Store) -> Snapshot {
    store.load_snapshot(T0.plus(HOUR), HOUR, 24 * HOUR).unwrap()
}

#[test]
fn open_sets_wal_full_sync_schema_and_private_file() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(&dir.path().join("data")).unwrap();
    store
        .read(|c| {
            let mode: String = c.query_row("PRAGMA journal_mode", [], |r| r.get(0))?;
            assert_eq!(mode, "wal");
            let sync: i64 = c.query_row("PRAGMA synchronous", [], |r| r.get(0))?;
            assert_eq!(sync, 2, "synchronous=FULL");
            let cache: i64 = c.query_row("PRAGMA cache_size", [], |r| r.get(0))?;
            assert_eq!(cache, -i64::from(READER_CACHE_KIB));
            let v: i64 = c.query_row("SELECT version FROM schema_version", [], |r| r.get(0))?;
            assert_eq!(v, SCHEMA_VERSION);
            Ok(())
        })
        .unwrap();
    let meta = std::fs::metadata(dir.path().join("data/outpost.db")).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert!(dir.path().join("data/spool").is_dir());
    // Reopening runs no migration twice.
    drop(store);
    Store::open(&dir.path().join("data")).unwrap();
}

#[test]
fn both_snapshot_plans_read_the_same_live_set() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ids: Vec<MessageId> = (1..=7).map(|n| msg_id(n, T0)).collect();
    let mut batches = vec![
        ids.iter()
            .enumerate()
            .map(|(i, &id)| {
                let rcpts: &[&str] = if i % 2 == 1 {
                    &["a@one.example", "b@two.example", "c@one.example"]
                } else {
                    &["d@two.example"]
                };
                insert(message(id, 1, rcpts))
            })
            .collect::<Vec<_>>(),
    ];
    // Done: 0, 2 (delivered), 4 (its only recipient bounced), 6; live: 1 (one recipient
    // delivered, two waiting), 3 (sending), 5 (untouched).
    let mut done = Vec::new();
    for i in [0, 2, 6] {
        done.push(update(ids[i], 0, RecipientStatus::Sending, T0));
        done.push(update(ids[i], 0, RecipientStatus::Delivered, T0));
    }
    done.push(update(ids[4], 0, RecipientStatus::Sending, T0));
    done.push(update(ids[4], 0, RecipientStatus::Bounced, T0));
    done.push(update(ids[1], 1, RecipientStatus::Sending, T0));
    done.push(update(ids[1], 1, RecipientStatus::Delivered, T0));
    done.push(update(ids[3], 2, RecipientStatus::Sending, T0));
    batches.push(done);
    assert!(apply(&store, batches).iter().all(|r| r.is_ok()));
    let [scan, join] = store
        .read(|c| snapshot::live_messages_by_both_plans(c))
        .unwrap();
    assert_eq!(scan, join);
    let live: Vec<MessageId> = scan.0.iter().map(|m| m.id).collect();
    assert_eq!(live, vec![ids[1], ids[3], ids[5]]);
    let rcpts: Vec<(MessageId, u32, RecipientStatus)> = scan
        .1
        .iter()
        .map(|r| (r.message, r.idx, r.status))
        .collect();
    use RecipientStatus::{Delivered, Queued, Sending};
    assert_eq!(
        rcpts,
        vec![
            (ids[1], 0, Queued),
            (ids[1], 1, Delivered),
            (ids[1], 2, Queued),
            (ids[3], 0, Queued),
            (ids[3], 1, Queued),
            (ids[3], 2, Sending),
            (ids[5], 0, Queued),
            (ids[5], 1, Queued),
            (ids[5], 2, Queued),
        ]
    );
    // Shared strings: one allocation per domain and sender.
    assert!(Arc::ptr_eq(&scan.1[0].domain, &scan.1[2].domain));
    assert!(Arc::ptr_eq(&scan.0[0].mail_from, &scan.0[2].mail_from));
    // The snapshot itself (mostly live here: the scan plan) says the same.
    let snap = snapshot(&store);
    assert_eq!((snap.messages, snap.recipients), scan);
}

#[test]
fn live_status_list_matches_the_sql_list() {
    assert_eq!(
        format!("('{}')", schema::LIVE_MESSAGE_STATUS_LIST.join("','")),
        schema::LIVE_MESSAGE_STATUSES
    );
}

#[test]
fn refuses_newer_schema() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    store
        .read(|c| {
            c.execute("UPDATE schema_version SET version = 999", [])?;
            Ok(())
        })
        .unwrap();
    drop(store);
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Schema(_))
    ));
}

#[test]
fn every_op_round_trips_into_the_snapshot_and_survives_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let live = msg_id(1, T0);
    let done = msg_id(2, T0);
    let mut live_rec = message(live, 1, &["a@dest.example", "b@dest.example"]);
    live_rec.idempotency = Some(Idempotency {
        key: "k1".to_string(),
        request_hash: "h1".to_string(),
    });
    let done_rec = message(done, 1, &["c@dest.example"]);
    let ep = endpoint(1, 1);
    let ep2 = endpoint(2, 1);
    let ev1 = event(1, 1, live, EventKind::Queued);
    let ev2 = event(2, 1, done, EventKind::Delivered);
    let delivery = WebhookDeliveryRecord {
        endpoint: ep.id,
        event: ev1.id,
        event_seq: 1,
        tenant: TenantId(1),
        state: WebhookDeliveryState::Pending,
        attempts: 1,
        next_attempt_at: Some(T0.plus(HOUR)),
        updated_at: T0,
    };
    let delivered = WebhookDeliveryRecord {
        event: ev2.id,
        event_seq: 2,
        state: WebhookDeliveryState::Delivered,
        ..delivery.clone()
    };
    let supp = SuppressionRecord {
        tenant: TenantId(1),
        address: "c@dest.example".to_string(),
        source: SuppressionSource::Bounce,
        reason: "user unknown".to_string(),
        category: Some(Category::InvalidRecipient),
        smtp_code: Some(550),
        enhanced_code: Some("5.1.1".to_string()),
        event: Some(ev2.id),
        created_at: T0,
    };
    let old_attempt = attempt(live, 0, 1, T0.minus(2 * HOUR));
    let recent_attempt = attempt(live, 0, 2, T0.plus(Duration::from_secs(60)));
    let results = apply(
        &store,
        vec![
            vec![
                insert(live_rec.clone()),
                insert(done_rec.clone()),
                StoreOp::InsertEvent(ev1.clone()),
            ],
            vec![
                update(live, 0, RecipientStatus::Sending, T0),
                update(live, 0, RecipientStatus::Deferred, T0),
                update(done, 0, RecipientStatus::Sending, T0),
                update(done, 0, RecipientStatus::Delivered, T0),
                StoreOp::InsertAttempt(old_attempt.clone()),
                StoreOp::InsertAttempt(recent_attempt.clone()),
                StoreOp::InsertEvent(ev2.clone()),
                StoreOp::AddSuppression(supp.clone()),
                StoreOp::AddSuppression(SuppressionRecord {
                    address: "gone@dest.example".to_string(),
                    ..supp.clone()
                }),
                StoreOp::RemoveSuppression {
                    tenant: TenantId(1),
                    address: "gone@dest.example".to_string(),
                },
                StoreOp::UpsertEndpoint(ep.clone()),
                StoreOp::UpsertEndpoint(ep2.clone()),
                StoreOp::DeleteEndpoint {
                    tenant: TenantId(1),
                    endpoint: ep2.id,
                },
                StoreOp::UpsertWebhookDelivery(delivery.clone()),
                StoreOp::UpsertWebhookDelivery(delivered.clone()),
                StoreOp::InsertWebhookAttempt(WebhookAttemptRecord {
                    endpoint: ep.id,
                    event: ev1.id,
                    tenant: TenantId(1),
                    attempt: 1,
                    at: T0,
                    duration_ms: 5,
                    status_code: Some(500),
                    error: None,
                }),
            ],
        ],
    );
    assert_eq!(results, vec![Ok(()), Ok(())]);

    let check = |store: &Store| {
        let snap = snapshot(store);
        // Only the live message, with all its recipients.
        assert_eq!(snap.messages, vec![PendingMessage::of(&live_rec)]);
        assert_eq!(snap.recipients.len(), 2);
        let first = &snap.recipients[0];
        assert_eq!((first.message, first.idx), (live, 0));
        assert_eq!(
            (first.status, first.attempts),
            (RecipientStatus::Deferred, 1)
        );
        assert_eq!(first.next_attempt_at, None);
        assert_eq!(
            snap.recipients[1],
            PendingRecipient::of(live, &live_rec.recipients[1])
        );
        assert_eq!(
            snap.suppressions,
            vec![(TenantId(1), "c@dest.example".to_string())]
        );
        assert_eq!(snap.recent_attempts, vec![recent_attempt.clone()]);
        assert_eq!(snap.last_event_seq, 2);
        assert_eq!(snap.endpoints, vec![ep.clone()]);
        assert_eq!(snap.pending_deliveries.len(), 1);
        assert_eq!(snap.pending_deliveries[0].delivery, delivery);
        assert_eq!(snap.pending_deliveries[0].event, ev1);
        assert_eq!(snap.idempotency.len(), 1);
        let idem = &snap.idempotency[0];
        assert_eq!(
            (idem.key.as_str(), idem.request_hash.as_str()),
            ("k1", "h1")
        );
        assert_eq!(idem.receipt.id, live);
        assert_eq!(idem.receipt.message_id, format!("<{live}@example.com>"));
        assert_eq!(idem.receipt.status, MessageStatus::Queued);
        assert_eq!(idem.receipt.recipients.len(), 2);
        // The finished message is still readable by the API with its derived status.
        let (msg, attempts) = store
            .read(|c| query::get_message(c, TenantId(1), live))
            .unwrap()
            .unwrap();
        assert_eq!(msg.status(), MessageStatus::Deferred);
        assert_eq!(msg.recipients[0].reason.as_deref(), Some("now deferred"));
        assert_eq!(attempts, vec![old_attempt.clone(), recent_attempt.clone()]);
        let list = store
            .read(|c| {
                query::list_messages(c, TenantId(1), Some(MessageStatus::Delivered), None, 10)
            })
            .unwrap();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].id, done);
    };
    check(&store);
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    check(&store);
    // The idempotency window and the warm-up window are honoured.
    let later = store
        .load_snapshot(T0.plus(48 * HOUR), HOUR, 24 * HOUR)
        .unwrap();
    assert!(later.idempotency.is_empty());
    assert!(later.recent_attempts.is_empty());
}

#[test]
fn terminal_status_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = msg_id(1, T0);
    let r = apply(
        &store,
        vec![
            vec![insert(message(id, 1, &["a@dest.example"]))],
            vec![
                update(id, 0, RecipientStatus::Sending, T0),
                update(id, 0, RecipientStatus::Delivered, T0),
            ],
            // A late reply, a replay: refused by the guard, not an error.
            vec![update(id, 0, RecipientStatus::Bounced, T0.plus(HOUR))],
            vec![update(id, 0, RecipientStatus::Deferred, T0.plus(HOUR))],
        ],
    );
    assert!(r.iter().all(|r| r.is_ok()), "{r:?}");
    let (m, _) = store
        .read(|c| query::get_message(c, TenantId(1), id))
        .unwrap()
        .unwrap();
    assert_eq!(m.recipients[0].status, RecipientStatus::Delivered);
    assert_eq!(m.recipients[0].updated_at, T0);
    assert_eq!(m.status(), MessageStatus::Delivered);
    assert!(snapshot(&store).messages.is_empty());
    assert_eq!(store.scan_spool().1.unwrap(), Vec::<MessageId>::new());
}

#[test]
fn group_commit_rolls_back_a_failing_batch_alone() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = msg_id(1, T0);
    let b = msg_id(2, T0);
    let c = msg_id(3, T0);
    let ev = event(1, 1, a, EventKind::Queued);
    // Same seq, another id: a constraint error in the middle batch.
    let mut clash = event(1, 1, b, EventKind::Queued);
    clash.id = EventId(ulid(T0, 999));
    // Submit all three before the writer wakes, so they share a transaction.
    let (w, done) = store.spawn_writer();
    w.submit(
        BatchId(1),
        vec![
            insert(message(a, 1, &["x@d.example"])),
            StoreOp::InsertEvent(ev),
        ],
    );
    w.submit(
        BatchId(2),
        vec![
            insert(message(b, 1, &["y@d.example"])),
            StoreOp::InsertEvent(clash),
        ],
    );
    w.submit(BatchId(3), vec![insert(message(c, 1, &["z@d.example"]))]);
    w.flush_and_stop();
    let mut results = Vec::new();
    while let Ok(r) = done.try_recv() {
        results.push(r);
    }
    assert_eq!(results.len(), 3);
    assert_eq!(results[0], (BatchId(1), Ok(())));
    assert_eq!(results[1].0, BatchId(2));
    assert!(results[1].1.is_err());
    assert_eq!(results[2], (BatchId(3), Ok(())));
    let live: BTreeSet<MessageId> = store.scan_spool().1.unwrap().into_iter().collect();
    assert_eq!(live, [a, c].into_iter().collect());
    // The failed batch's spool file is removed with it.
    assert!(spool_path(dir.path(), a).exists());
    assert!(!spool_path(dir.path(), b).exists());
    assert!(spool_path(dir.path(), c).exists());
}

#[test]
fn commit_group_applies_one_transaction_with_savepoints() {
    // Drive commit_group directly so the grouping is certain.
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = msg_id(1, T0);
    let b = msg_id(2, T0);
    // A failing spool write: the shard directory's name is taken by a file (as a full
    // disk or a broken directory would fail the write).
    let shard = spool_path(dir.path(), b).parent().unwrap().to_path_buf();
    std::fs::write(&shard, b"not a dir").unwrap();
    let results = store
        .read(|conn| {
            Ok(writer::commit_group(
                conn,
                &mut spool::Recycler::open(dir.path()),
                vec![
                    (BatchId(1), vec![insert(message(a, 1, &["x@d.example"]))]),
                    (BatchId(2), vec![insert(message(b, 1, &["y@d.example"]))]),
                ],
            ))
        })
        .unwrap();
    assert_eq!(results[0], (BatchId(1), Ok(())));
    assert!(results[1].1.as_ref().unwrap_err().contains("spool"));
    assert_eq!(store.scan_spool().1.unwrap(), vec![a]);
    let bytes = std::fs::read(spool_path(dir.path(), a)).unwrap();
    assert_eq!(bytes, format!("Subject: {a}\r\n\r\nbody\r\n").as_bytes());
}

#[test]
fn insert_message_is_idempotent_and_spool_written_before_commit() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let id = msg_id(1, T0);
    let rec = message(id, 1, &["a@d.example"]);
    assert_eq!(apply(&store, vec![vec![insert(rec.clone())]]), vec![Ok(())]);
    let path = spool_path(dir.path(), id);
    assert!(path.starts_with(dir.path().join("spool")));
    assert_eq!(path.file_name().unwrap().to_str().unwrap(), id.to_string());
    // Advance the recipient, then replay the insert: nothing changes, no error.
    assert_eq!(
        apply(
            &store,
            vec![
                vec![update(id, 0, RecipientStatus::Sending, T0)],
                vec![insert(rec.clone())]
            ]
        ),
        vec![Ok(()), Ok(())]
    );
    let snap = snapshot(&store);
    assert_eq!(
        (snap.recipients[0].message, snap.recipients[0].status),
        (snap.messages[0].id, RecipientStatus::Sending)
    );
    // The replayed insert did not rewrite the file (its mtime is untouched is hard to
    // observe; its content is the same and no temp file is left).
    let shard = path.parent().unwrap();
    let names: Vec<String> = std::fs::read_dir(shard)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![id.to_string()]);
}

#[test]
fn scan_and_delete_spool() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let a = msg_id(1, T0);
    let b = msg_id(2, T0);
    apply(
        &store,
        vec![vec![
            insert(message(a, 1, &["x@d.example"])),
            insert(message(b, 1, &["y@d.example"])),
            update(b, 0, RecipientStatus::Failed, T0),
        ]],
    );
    // A stray temp file is ignored by the listing.
    std::fs::write(
        spool_path(dir.path(), a)
            .parent()
            .unwrap()
            .join(".tmp-junk"),
        b"x",
    )
    .unwrap();
    let (files, live) = store.scan_spool();
    let files = files.unwrap();
    let mut names: Vec<MessageId> = files.iter().map(|f| f.message).collect();
    names.sort();
    assert_eq!(names, vec![a, b]);
    assert!(files.iter().all(|f| f.modified.0 > 1_600_000_000_000));
    assert_eq!(live.unwrap(), vec![a]);
    store.delete_spool(&[b, msg_id(9, T0)]).unwrap();
    assert!(!spool_path(dir.path(), b).exists());
    assert!(spool_path(dir.path(), a).exists());
    // A listing failure is reported alone; the live set still reads.
    std::fs::remove_dir_all(dir.path().join("spool")).unwrap();
    let (files, live) = store.scan_spool();
    assert!(files.is_err());
    assert_eq!(live.unwrap(), vec![a]);
}

#[test]
fn list_messages_pages_newest_first_with_recipients() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ids: Vec<MessageId> = (0..5)
        .map(|i| msg_id(i, T0.plus(Duration::from_secs(i))))
        .collect();
    let mut ops: Vec<StoreOp> = ids
        .iter()
        .map(|&id| insert(message(id, 1, &["a@d.example", "b@d.example"])))
        .collect();
    ops.push(insert(message(msg_id(99, T0), 2, &["other@d.example"])));
    apply(&store, vec![ops]);
    let page1 = store
        .read(|c| query::list_messages(c, TenantId(1), None, None, 2))
        .unwrap();
    assert_eq!(
        page1.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![ids[4], ids[3]]
    );
    assert!(page1.iter().all(|m| m.recipients.len() == 2));
    let page2 = store
        .read(|c| query::list_messages(c, TenantId(1), None, Some(ids[3]), 10))
        .unwrap();
    assert_eq!(
        page2.iter().map(|m| m.id).collect::<Vec<_>>(),
        vec![ids[2], ids[1], ids[0]]
    );
    // Three ids fill a four-slot (padded, cached) IN list: each recipient once.
    assert!(page2.iter().all(|m| m.recipients.len() == 2));
    // Every page size reuses one of a few statements and sees the same rows.
    for limit in 1..=6 {
        let page = store
            .read(|c| query::list_messages(c, TenantId(1), None, None, limit))
            .unwrap();
        assert_eq!(page.len(), limit.min(5));
        assert!(page.iter().all(|m| m.recipients.len() == 2), "{limit}");
    }
    // Tenant scoping.
    assert!(
        store
            .read(|c| query::get_message(c, TenantId(2), ids[0]))
            .unwrap()
            .is_none()
    );
}

#[test]
fn keys_are_stored_hashed_and_tenants_created_once() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let t1 = store
        .read(|c| query::create_key(c, "example.com", "aa11", "op_abc", T0))
        .unwrap();
    let t2 = store
        .read(|c| query::create_key(c, "example.com", "bb22", "op_def", T0))
        .unwrap();
    assert_eq!(t1, t2);
    assert_eq!(
        store
            .read(|c| query::tenant_by_key_hash(c, "bb22"))
            .unwrap(),
        Some(t1.clone())
    );
    assert_eq!(
        store.read(|c| query::tenant_by_key_hash(c, "cc")).unwrap(),
        None
    );
    assert_eq!(
        store
            .read(|c| query::tenant_by_domain(c, "example.com"))
            .unwrap(),
        Some(t1)
    );
}

#[test]
fn list_queries_use_indexes_without_sorting() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let plan = |sql: &str| -> String {
        let vals = ["1", "msg_~", "10", "queued"];
        let n = sql.matches('?').count();
        store
            .read(|c| {
                let mut st = c.prepare(&format!("EXPLAIN QUERY PLAN {sql}"))?;
                let rows = st
                    .query_map(rusqlite::params_from_iter(vals.iter().take(n)), |r| {
                        r.get::<_, String>(3)
                    })?
                    .collect::<Result<Vec<_>, _>>()?;
                Ok(rows.join(" | "))
            })
            .unwrap()
    };
    for sql in [query::LIST_MESSAGES_SQL, query::LIST_MESSAGES_BY_STATUS_SQL] {
        let p = plan(sql);
        assert!(
            p.contains("USING INDEX") || p.contains("USING PRIMARY KEY"),
            "{p}"
        );
        assert!(!p.contains("TEMP B-TREE"), "{p}");
    }
    let p = plan("SELECT id FROM messages WHERE status IN ('queued','sending','deferred')");
    assert!(
        p.contains("SEARCH messages USING COVERING INDEX messages_status"),
        "{p}"
    );
}

#[test]
fn commit_group_isolates_a_constraint_failure_between_good_batches() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b, c) = (msg_id(1, T0), msg_id(2, T0), msg_id(3, T0));
    let ev = event(1, 1, a, EventKind::Queued);
    let mut clash = event(1, 1, b, EventKind::Queued);
    clash.id = EventId(ulid(T0, 4242));
    let results = store
        .read(|conn| {
            Ok(writer::commit_group(
                conn,
                &mut spool::Recycler::open(dir.path()),
                vec![
                    (
                        BatchId(1),
                        vec![
                            insert(message(a, 1, &["x@d.example"])),
                            StoreOp::InsertEvent(ev),
                        ],
                    ),
                    (
                        BatchId(2),
                        vec![
                            insert(message(b, 1, &["y@d.example"])),
                            StoreOp::InsertEvent(clash),
                        ],
                    ),
                    (
                        BatchId(3),
                        vec![
                            insert(message(c, 1, &["z@d.example"])),
                            update(a, 0, RecipientStatus::Sending, T0),
                        ],
                    ),
                ],
            ))
        })
        .unwrap();
    assert_eq!(results[0], (BatchId(1), Ok(())));
    assert!(results[1].1.is_err());
    assert_eq!(results[2], (BatchId(3), Ok(())));
    let snap = snapshot(&store);
    let ids: Vec<MessageId> = snap.messages.iter().map(|m| m.id).collect();
    assert_eq!(ids, vec![a, c]);
    assert_eq!(
        (snap.recipients[0].message, snap.recipients[0].status),
        (snap.messages[0].id, RecipientStatus::Sending)
    );
    assert_eq!(snap.last_event_seq, 1);
    assert!(!spool_path(dir.path(), b).exists());
}

#[test]
fn concurrent_syncs_answer_each_item_in_order() {
    fn odd_fails(i: usize) -> std::io::Result<()> {
        if i % 2 == 1 {
            Err(std::io::Error::other(format!("item {i}")))
        } else {
            Ok(())
        }
    }
    for n in [0, 1, 2, 15, 16, 17, 100] {
        let results = spool::concurrently((0..n).collect(), odd_fails);
        assert_eq!(results.len(), n);
        for (i, r) in results.iter().enumerate() {
            match r {
                Ok(()) => assert_eq!(i % 2, 0),
                Err(e) => assert_eq!(e.to_string(), format!("item {i}")),
            }
        }
    }
}

#[test]
fn a_spool_file_is_written_under_its_name_and_a_failed_batch_leaves_none() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let (a, b) = (msg_id(1, T0), msg_id(2, T0));
    let ev = event(1, 1, a, EventKind::Queued);
    let mut clash = event(1, 1, b, EventKind::Queued);
    clash.id = EventId(ulid(T0, 4243));
    let results = apply(
        &store,
        vec![
            vec![
                insert(message(a, 1, &["x@d.example"])),
                StoreOp::InsertEvent(ev),
            ],
            vec![
                insert(message(b, 1, &["y@d.example"])),
                StoreOp::InsertEvent(clash),
            ],
        ],
    );
    assert_eq!(results[0], Ok(()));
    assert!(results[1].is_err());
    assert!(spool_path(dir.path(), a).is_file());
    assert!(!spool_path(dir.path(), b).exists());
    // Nothing but spool files under the shards (no temp names left behind).
    let shard = spool_path(dir.path(), a).parent().unwrap().to_path_buf();
    let names: Vec<String> = std::fs::read_dir(&shard)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    assert_eq!(names, vec![a.to_string()]);
}

#[test]
fn cached_statements_are_not_prepared_again_when_their_parameters_change() {
    // SQLite re-prepares a statement whose plan might depend on a bound value, on every
    // new binding, unless the query planner stability guarantee is on: the API's key
    // lookup then cost a full prepare per request (most of the API's CPU in a profile).
    use rusqlite::StatementStatus;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let ids: Vec<MessageId> = (0..3)
        .map(|i| msg_id(i, T0.plus(Duration::from_secs(i))))
        .collect();
    let ops: Vec<StoreOp> = ids
        .iter()
        .map(|&id| insert(message(id, 1, &["a@d.example"])))
        .collect();
    apply(&store, vec![ops]);
    store
        .read(|c| query::create_key(c, "example.com", "abcd", "op_", T0))
        .unwrap();
    store
        .read(|c| {
            for round in 0..4u64 {
                query::tenant_by_key_hash(c, &format!("hash{round}"))?;
                query::list_messages(
                    c,
                    TenantId(round % 2 + 1),
                    None,
                    ids.get(round as usize).copied(),
                    2,
                )?;
            }
            for sql in [query::TENANT_BY_KEY_HASH_SQL, query::LIST_MESSAGES_SQL] {
                let st = c.prepare_cached(sql)?;
                assert_eq!(st.get_status(StatementStatus::Run), 4, "{sql}");
                assert_eq!(st.get_status(StatementStatus::RePrepare), 0, "{sql}");
            }
            Ok(())
        })
        .unwrap();
}

/// Stages and syncs one spool file the way a group write does.
/// (Its shard directory made first, as on a spool in use: every shard exists.)
fn stage_synced(dir: &std::path::Path, id: MessageId, bytes: &[u8], r: &mut spool::Recycler) {
    std::fs::create_dir_all(spool_path(dir, id).parent().unwrap()).unwrap();
    let (_, file) = r.stage(id, bytes).unwrap();
    file.sync_all().unwrap();
}

fn inode(path: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).unwrap().ino()
}

#[test]
fn a_finished_messages_spool_file_holds_the_next_message_with_only_its_bytes() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    let mut r = spool::Recycler::open(dir.path());
    let (a, b) = (msg_id(1, T0), msg_id(2, T0));
    stage_synced(dir.path(), a, &[b'a'; 5000], &mut r);
    let reused = inode(&spool_path(dir.path(), a));
    r.release_all(&[a]);
    assert!(!spool_path(dir.path(), a).exists());
    stage_synced(dir.path(), b, b"short", &mut r);
    // The same inode, renamed into place: no allocation; none of a's bytes left in it.
    assert_eq!(inode(&spool_path(dir.path(), b)), reused);
    assert_eq!(std::fs::read(spool_path(dir.path(), b)).unwrap(), b"short");
    // Into a shard directory that does not exist yet: made, and the file still reused.
    r.release_all(&[b]);
    let c = (3..)
        .map(|n| msg_id(n, T0))
        .find(|c| !spool_path(dir.path(), *c).parent().unwrap().exists())
        .unwrap();
    let (_, file) = r.stage(c, b"c").unwrap();
    file.sync_all().unwrap();
    assert_eq!(inode(&spool_path(dir.path(), c)), reused);
    assert_eq!(std::fs::read(spool_path(dir.path(), c)).unwrap(), b"c");
    // The orphan scan sees messages only, not free files.
    r.release_all(&[c]);
    let store = Store::open(dir.path()).unwrap();
    assert!(store.scan_spool().0.unwrap().is_empty());
}

#[test]
fn a_spool_file_being_sent_is_unlinked_not_reused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    let mut r = spool::Recycler::open(dir.path());
    let (a, b) = (msg_id(1, T0), msg_id(2, T0));
    stage_synced(dir.path(), a, b"message a", &mut r);
    let (mut reading, guard) = open_for_sending(&spool_path(dir.path(), a)).unwrap();
    let old = inode(&spool_path(dir.path(), a));
    r.release_all(&[a]);
    stage_synced(dir.path(), b, b"message b", &mut r);
    assert_ne!(inode(&spool_path(dir.path(), b)), old);
    // The connection still reads a's bytes, whole.
    let mut got = String::new();
    std::io::Read::read_to_string(&mut reading, &mut got).unwrap();
    assert_eq!(got, "message a");
    drop(guard);
    // Once nobody reads b, its file is recycled again.
    let b_inode = inode(&spool_path(dir.path(), b));
    r.release_all(&[b]);
    let c = msg_id(3, T0);
    stage_synced(dir.path(), c, b"c", &mut r);
    assert_eq!(inode(&spool_path(dir.path(), c)), b_inode);
    // Gone before a connection opens it: the open fails as after an unlink.
    r.release_all(&[c]);
    let err = open_for_sending(&spool_path(dir.path(), c)).err().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::NotFound);
}

#[test]
fn the_free_list_starts_empty_after_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("spool")).unwrap();
    let a = msg_id(1, T0);
    {
        let mut r = spool::Recycler::open(dir.path());
        stage_synced(dir.path(), a, b"a", &mut r);
        r.release_all(&[a]);
    }
    let free = dir.path().join("spool/free");
    assert_eq!(std::fs::read_dir(&free).unwrap().count(), 1);
    // A crash can leave a free name that is also a live message's: a restart drops the
    // free names and never writes through them.
    let b = msg_id(2, T0);
    {
        let mut r = spool::Recycler::open(dir.path());
        stage_synced(dir.path(), b, b"live", &mut r);
    }
    std::fs::hard_link(spool_path(dir.path(), b), free.join("7")).unwrap();
    let mut r = spool::Recycler::open(dir.path());
    assert_eq!(std::fs::read_dir(&free).unwrap().count(), 0);
    let c = msg_id(3, T0);
    stage_synced(dir.path(), c, b"new", &mut r);
    assert_eq!(std::fs::read(spool_path(dir.path(), c)).unwrap(), b"new");
    assert_eq!(std::fs::read(spool_path(dir.path(), b)).unwrap(), b"live");
}

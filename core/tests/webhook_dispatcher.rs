//! The webhook dispatcher through its public API: fan-out, in-flight bounds, the retry
//! schedule, signing, rotation, admin commands and restore.

use core::time::Duration;
use std::sync::Arc;

use base64::Engine as _;
use hmac::{Hmac, Mac};
use outpost_core::config::{Config, WebhookConfig};
use outpost_core::ids::{EndpointId, EventId, MessageId, PostId, TenantId, ulid};
use outpost_core::io::{AdminError, AdminReply, Output};
use outpost_core::model::{
    EndpointRecord, EventKind, EventRecord, PendingDelivery, StoreOp, WebhookAttemptRecord,
    WebhookDeliveryRecord, WebhookDeliveryState,
};
use outpost_core::time::Time;
use outpost_core::webhook::{
    DispatcherSettings, PostRequest, WebhookDispatcher, format_secret, parse_secret, sign,
};

const T0: Time = Time(1_795_633_268_000);
const SEC: Duration = Duration::from_secs(1);
const MIN: Duration = Duration::from_secs(60);
const HOUR: Duration = Duration::from_secs(3600);

fn config() -> WebhookConfig {
    Config::default().webhooks
}

fn dispatcher() -> WebhookDispatcher {
    WebhookDispatcher::new(config(), DispatcherSettings::default())
}

fn key(b: u8) -> Vec<u8> {
    vec![b; 32]
}

fn ep(n: u128) -> EndpointId {
    EndpointId(ulid(T0, n))
}

fn event(seq: u64, tenant: u64, kind: EventKind) -> EventRecord {
    let id = EventId(ulid(T0, seq as u128));
    EventRecord {
        seq,
        id,
        tenant: TenantId(tenant),
        kind,
        at: T0,
        message: MessageId(ulid(T0, 7)),
        idx: 0,
        payload: Arc::from(format!(
            r#"{{"id":"{id}","seq":{seq},"type":"{}","timestamp":"{}","data":{{}}}}"#,
            kind.as_str(),
            T0.rfc3339()
        )),
    }
}

struct Ids(u64);
impl Ids {
    fn next(&mut self) -> PostId {
        self.0 += 1;
        PostId(self.0)
    }
}

fn create(d: &mut WebhookDispatcher, id: EndpointId, tenant: u64, events: &[EventKind]) {
    let out = d.create_endpoint(
        id,
        TenantId(tenant),
        "https://hooks.example.com/in",
        events,
        key(id.0 as u8),
        T0,
    );
    assert!(out.is_ok(), "{out:?}");
}

/// Persists (pretend) and enqueues: returns the rows.
fn publish(d: &mut WebhookDispatcher, ev: &EventRecord, now: Time) -> Vec<WebhookDeliveryRecord> {
    let rows = d.deliveries_for(ev, now);
    d.enqueue(ev.clone(), &rows);
    rows
}

fn drain(d: &mut WebhookDispatcher, now: Time, ids: &mut Ids) -> Vec<PostRequest> {
    let mut out = Vec::new();
    while let Some(p) = d.poll_post(now, &mut || ids.next()) {
        out.push(p);
        assert!(out.len() < 100_000, "poll_post never ends");
    }
    out
}

fn header<'a>(p: &'a PostRequest, name: &str) -> &'a str {
    p.headers
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}

fn delivery_op(ops: &[StoreOp]) -> WebhookDeliveryRecord {
    ops.iter()
        .find_map(|o| match o {
            StoreOp::UpsertWebhookDelivery(r) => Some(r.clone()),
            _ => None,
        })
        .expect("an UpsertWebhookDelivery op")
}

fn attempt_op(ops: &[StoreOp]) -> WebhookAttemptRecord {
    ops.iter()
        .find_map(|o| match o {
            StoreOp::InsertWebhookAttempt(r) => Some(r.clone()),
            _ => None,
        })
        .expect("an InsertWebhookAttempt op")
}

#[test]
fn fans_out_to_subscribed_endpoints_of_the_tenant_only() {
    let mut d = dispatcher();
    let (a, b, c) = (ep(1), ep(2), ep(3));
    create(&mut d, a, 1, &[]);
    create(&mut d, b, 1, &[EventKind::Delivered, EventKind::Bounced]);
    create(&mut d, c, 2, &[]);

    let endpoints_of = |rows: Vec<WebhookDeliveryRecord>| -> Vec<EndpointId> {
        rows.iter().map(|r| r.endpoint).collect()
    };
    let queued = event(1, 1, EventKind::Queued);
    let rows = d.deliveries_for(&queued, T0);
    assert_eq!(rows.len(), 1);
    assert_eq!(
        rows[0],
        WebhookDeliveryRecord {
            endpoint: a,
            event: queued.id,
            event_seq: 1,
            tenant: TenantId(1),
            state: WebhookDeliveryState::Pending,
            attempts: 0,
            next_attempt_at: Some(T0),
            updated_at: T0,
        }
    );
    assert_eq!(
        endpoints_of(d.deliveries_for(&event(2, 1, EventKind::Delivered), T0)),
        vec![a, b]
    );
    assert_eq!(
        endpoints_of(d.deliveries_for(&event(3, 2, EventKind::Bounced), T0)),
        vec![c]
    );
    assert!(
        d.deliveries_for(&event(4, 3, EventKind::Queued), T0)
            .is_empty()
    );

    // Listing and admin commands are tenant-scoped.
    let ids = |t| {
        d.endpoints(TenantId(t))
            .iter()
            .map(|r| r.id)
            .collect::<Vec<_>>()
    };
    assert_eq!(ids(1), vec![a, b]);
    assert_eq!(ids(2), vec![c]);
    assert!(ids(3).is_empty());
    assert_eq!(d.delete_endpoint(TenantId(2), a), Err(AdminError::NotFound));
    assert_eq!(
        d.rotate_secret(TenantId(2), a, key(9), T0),
        Err(AdminError::NotFound)
    );
    assert_eq!(
        d.retry_delivery(TenantId(2), a, queued.id, T0),
        Err(AdminError::NotFound)
    );
    assert!(d.endpoint(TenantId(1), a).is_some());
    assert!(d.endpoint(TenantId(2), a).is_none());

    // A row that does not belong to the tenant's endpoint is not enqueued.
    let foreign = event(5, 2, EventKind::Queued);
    let mut rows = d.deliveries_for(&foreign, T0);
    rows[0].endpoint = a;
    d.enqueue(foreign, &rows);
    assert_eq!(d.pending_len(), 0);
}

#[test]
fn nothing_is_posted_before_enqueue() {
    let mut d = dispatcher();
    let mut ids = Ids(0);
    create(&mut d, ep(1), 1, &[]);
    let ev = event(1, 1, EventKind::Queued);
    let rows = d.deliveries_for(&ev, T0);
    assert_eq!(rows.len(), 1);
    assert!(drain(&mut d, T0.plus(HOUR), &mut ids).is_empty());
    assert_eq!(d.next_due(), None);
    d.enqueue(ev.clone(), &rows);
    assert!(d.next_due().is_some_and(|t| t <= T0));
    let posts = drain(&mut d, T0, &mut ids);
    assert_eq!(posts.len(), 1);
    let p = &posts[0];
    assert_eq!(p.post, PostId(1));
    assert_eq!(p.endpoint, ep(1));
    assert_eq!(p.event, ev.id);
    assert_eq!(p.attempt, 1);
    assert_eq!(p.url, "https://hooks.example.com/in");
    assert_eq!(&*p.body, &*ev.payload);
    assert_eq!(p.timeout, config().timeout);
    assert_eq!(header(p, "content-type"), "application/json");
    assert!(header(p, "user-agent").starts_with("outpost/"));
    // Enqueueing again does not duplicate.
    d.enqueue(ev, &rows);
    assert!(drain(&mut d, T0, &mut ids).is_empty());
    assert_eq!(d.pending_len(), 1);
    match p.clone().into_output() {
        Output::PostWebhook { post, url, .. } => {
            assert_eq!(post, PostId(1));
            assert_eq!(url, "https://hooks.example.com/in");
        }
        other => panic!("unexpected {other:?}"),
    }
}

#[test]
fn a_dead_endpoint_never_holds_back_a_live_one() {
    let mut d = dispatcher();
    let mut ids = Ids(0);
    let max = config().max_in_flight_per_endpoint;
    let (dead, live) = (ep(1), ep(2));
    create(&mut d, dead, 1, &[]);
    create(&mut d, live, 2, &[]);
    for seq in 1..=20u64 {
        publish(&mut d, &event(seq, 1 + seq % 2, EventKind::Queued), T0);
    }
    let mut delivered = Vec::new();
    let mut now = T0;
    let first = drain(&mut d, now, &mut ids);
    assert_eq!(first.len(), 2 * max);
    // Lowest seq first within an endpoint.
    let dead_seqs: Vec<u64> = first
        .iter()
        .filter(|p| p.endpoint == dead)
        .map(|p| p.event_seq)
        .collect();
    assert_eq!(dead_seqs, vec![2, 4, 6, 8]);
    let mut live_posts: Vec<PostRequest> =
        first.into_iter().filter(|p| p.endpoint == live).collect();
    while let Some(p) = live_posts.pop() {
        now = now.plus(SEC);
        let ops = d.on_result(now, p.post, Ok(204), 15);
        assert_eq!(delivery_op(&ops).state, WebhookDeliveryState::Delivered);
        delivered.push(p.event_seq);
        for q in drain(&mut d, now, &mut ids) {
            assert_eq!(q.endpoint, live, "the dead endpoint is at its bound");
            live_posts.push(q);
        }
        assert_eq!(d.in_flight_to(dead), max);
        assert!(d.in_flight_to(live) <= max);
    }
    delivered.sort_unstable();
    assert_eq!(
        delivered,
        (1..=20).filter(|s| s % 2 == 1).collect::<Vec<_>>()
    );
    assert_eq!(d.pending_len(), 10);
    assert_eq!(d.in_flight_len(), max);
}

/// Fails every attempt with a 500 and checks the exact time of each retry.
#[test]
fn retry_schedule_then_failed_after_three_days() {
    let mut d = dispatcher();
    let mut ids = Ids(0);
    create(&mut d, ep(1), 1, &[]);
    let ev = event(1, 1, EventKind::Bounced);
    publish(&mut d, &ev, T0);

    let mut expected = vec![Duration::ZERO, 30 * SEC, MIN, 5 * MIN, 15 * MIN, HOUR];
    expected.extend(std::iter::repeat_n(2 * HOUR, 35));
    let mut at = T0;
    let mut last_ops = Vec::new();
    for (i, delay) in expected.iter().enumerate() {
        let due = at.plus(*delay);
        if i > 0 {
            assert_eq!(d.next_due(), Some(due), "attempt {}", i + 1);
            assert!(drain(&mut d, due.minus(Duration::from_millis(1)), &mut ids).is_empty());
        }
        let posts = drain(&mut d, due, &mut ids);
        assert_eq!(posts.len(), 1, "attempt {}", i + 1);
        assert_eq!(posts[0].attempt, i as u32 + 1);
        // The POST itself takes no time here: results arrive at `due`.
        last_ops = d.on_result(due, posts[0].post, Ok(500), 120);
        let att = attempt_op(&last_ops);
        assert_eq!(att.attempt, i as u32 + 1);
        assert_eq!(att.status_code, Some(500));
        assert_eq!(att.error, None);
        assert_eq!(att.at, due);
        assert_eq!(att.duration_ms, 120);
        at = due;
        let row = delivery_op(&last_ops);
        if i + 1 < expected.len() {
            assert_eq!(row.state, WebhookDeliveryState::Pending);
            assert_eq!(row.next_attempt_at, Some(at.plus(expected[i + 1])));
        }
    }
    // Attempt 41 is 71h21m30s after the first; the next would be after 72 h.
    assert_eq!(at, T0.plus(71 * HOUR + 21 * MIN + 30 * SEC));
    let row = delivery_op(&last_ops);
    assert_eq!(row.state, WebhookDeliveryState::Failed);
    assert_eq!(row.attempts, 41);
    assert_eq!(row.next_attempt_at, None);
    assert_eq!(row.updated_at, at);
    assert_eq!(d.pending_len(), 0);
    assert_eq!(d.next_due(), None);
    assert!(drain(&mut d, at.plus(100 * HOUR), &mut ids).is_empty());
}

#[test]
fn transport_errors_are_sanitized_and_retried_and_success_delivers() {
    let mut d = dispatcher();
    let mut ids = Ids(0);
    create(&mut d, ep(1), 1, &[]);
    let ev = event(1, 1, EventKind::Delivered);
    publish(&mut d, &ev, T0);

    let p1 = drain(&mut d, T0, &mut ids).remove(0);
    let long = format!("connection reset\r\n\x1b[31m{}", "é".repeat(2000));
    let ops = d.on_result(T0, p1.post, Err(long), 3);
    let att = attempt_op(&ops);
    assert_eq!(att.status_code, None);
    let err = att.error.unwrap_or_default();
    assert!(
        err.len() <= 1024 && err.starts_with("connection reset [31m"),
        "{err}"
    );
    assert!(!err.contains(['\r', '\n', '\x1b']));

    let t2 = T0.plus(30 * SEC);
    let p2 = drain(&mut d, t2, &mut ids).remove(0);
    // Same webhook-id on every retry, a fresh timestamp each time.
    assert_eq!(header(&p1, "webhook-id"), ev.id.to_string());
    assert_eq!(header(&p2, "webhook-id"), ev.id.to_string());
    assert_eq!(header(&p1, "webhook-timestamp"), T0.as_secs().to_string());
    assert_eq!(header(&p2, "webhook-timestamp"), t2.as_secs().to_string());
    assert_ne!(
        header(&p1, "webhook-signature"),
        header(&p2, "webhook-signature")
    );
    let ops = d.on_result(t2, p2.post, Ok(302), 3);
    assert_eq!(attempt_op(&ops).status_code, Some(302));
    assert_eq!(
        delivery_op(&ops).next_attempt_at,
        Some(t2.plus(MIN)),
        "a redirect is a failure"
    );

    let t3 = t2.plus(MIN);
    let p3 = drain(&mut d, t3, &mut ids).remove(0);
    assert_eq!(p3.attempt, 3);
    let ops = d.on_result(t3, p3.post, Ok(200), 8);
    assert_eq!(
        delivery_op(&ops),
        WebhookDeliveryRecord {
            endpoint: ep(1),
            event: ev.id,
            event_seq: 1,
            tenant: TenantId(1),
            state: WebhookDeliveryState::Delivered,
            attempts: 3,
            next_attempt_at: None,
            updated_at: t3,
        }
    );
    assert_eq!(d.pending_len(), 0);
    assert_eq!(d.next_due(), None);
    // A duplicate or unknown result changes nothing.
    assert!(d.on_result(t3, p3.post, Ok(200), 8).is_empty());
    assert!(d.on_result(t3, PostId(999), Err("x".into()), 8).is_empty());
}

#[test]
fn signature_matches_the_spec_vector_and_an_independent_computation() {
    // The Standard Webhooks specification's published test vector.
    let spec_key = parse_secret("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").expect("valid");
    assert_eq!(
        sign(
            &spec_key,
            "msg_p5jXN8AQM9LWM0D4loKWxJek",
            1_614_265_330,
            r#"{"test": 2432232314}"#
        ),
        "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
    );

    // Through the dispatcher, recomputed here from the headers and body.
    let mut d = dispatcher();
    let mut ids = Ids(0);
    let secret = format_secret(&spec_key);
    let key = parse_secret(&secret).expect("round trip");
    let out = d
        .create_endpoint(
            ep(1),
            TenantId(1),
            "https://hooks.example.com/in",
            &[],
            key.clone(),
            T0,
        )
        .expect("created");
    match out.reply {
        AdminReply::Endpoint(r) => assert_eq!(format_secret(&r.secrets[0].key), secret),
        other => panic!("unexpected {other:?}"),
    }
    let ev = event(1, 1, EventKind::Queued);
    publish(&mut d, &ev, T0);
    let p = drain(&mut d, T0, &mut ids).remove(0);
    let signed = format!(
        "{}.{}.{}",
        header(&p, "webhook-id"),
        header(&p, "webhook-timestamp"),
        p.body
    );
    let mut mac = Hmac::<sha2::Sha256>::new_from_slice(&key).expect("any key length");
    mac.update(signed.as_bytes());
    let expected = format!(
        "v1,{}",
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    );
    assert_eq!(header(&p, "webhook-signature"), expected);
    assert_eq!(header(&p, "webhook-id"), ev.id.to_string());
    assert_eq!(header(&p, "webhook-timestamp"), T0.as_secs().to_string());
}

#[test]
fn rotation_signs_with_both_secrets_for_the_overlap_then_only_the_new_one() {
    let mut d = dispatcher();
    let mut ids = Ids(0);
    let e = ep(1);
    create(&mut d, e, 1, &[]);
    let old_key = key(1);
    let t1 = T0.plus(HOUR);
    let out = d
        .rotate_secret(TenantId(1), e, key(2), t1)
        .expect("rotated");
    assert_eq!(out.ops.len(), 1);
    let record = match &out.reply {
        AdminReply::Endpoint(r) => r.clone(),
        other => panic!("unexpected {other:?}"),
    };
    assert_eq!(out.ops[0], StoreOp::UpsertEndpoint(record.clone()));
    assert_eq!(record.secrets.len(), 2);
    assert_eq!(record.secrets[0].key, key(2));
    assert_eq!(record.secrets[0].expires_at, None);
    assert_eq!(record.secrets[1].key, old_key);
    assert_eq!(record.secrets[1].expires_at, Some(t1.plus(24 * HOUR)));

    let sig_for = |d: &mut WebhookDispatcher, ids: &mut Ids, seq: u64, now: Time| {
        let ev = event(seq, 1, EventKind::Queued);
        publish(d, &ev, now);
        let p = drain(d, now, ids).remove(0);
        let _ = d.on_result(now, p.post, Ok(200), 1);
        let id = ev.id.to_string();
        let (new, old) = (
            sign(&key(2), &id, now.as_secs(), &ev.payload),
            sign(&old_key, &id, now.as_secs(), &ev.payload),
        );
        (header(&p, "webhook-signature").to_string(), new, old)
    };
    let (sig, new, old) = sig_for(&mut d, &mut ids, 1, t1.plus(23 * HOUR));
    assert_eq!(sig, format!("{new} {old}"));
    let (sig, new, _) = sig_for(&mut d, &mut ids, 2, t1.plus(24 * HOUR));
    assert_eq!(sig, new);

    // The next rotation prunes the expired secret.
    let t2 = t1.plus(25 * HOUR);
    let out = d
        .rotate_secret(TenantId(1), e, key(3), t2)
        .expect("rotated");
    match out.reply {
        AdminReply::Endpoint(r) => {
            let keys: Vec<Vec<u8>> = r.secrets.iter().map(|s| s.key.clone()).collect();
            assert_eq!(keys, vec![key(3), key(2)]);
        }
        other => panic!("unexpected {other:?}"),
    }
    assert!(matches!(
        d.rotate_secret(TenantId(1), e, vec![1; 4], t2),
        Err(AdminError::Invalid(_))
    ));
}

#[test]
fn deleting_an_endpoint_drops_its_deliveries() {
    let mut d = dispatcher();
    let mut ids = Ids(0);
    let (a, b) = (ep(1), ep(2));
    create(&mut d, a, 1, &[]);
    create(&mut d, b, 1, &[]);
    for seq in 1..=6 {
        publish(&mut d, &event(seq, 1, EventKind::Queued), T0);
    }
    let posts = drain(&mut d, T0, &mut ids);
    assert_eq!(posts.len(), 8);
    let out = d.delete_endpoint(TenantId(1), a).expect("deleted");
    assert_eq!(
        out.ops,
        vec![StoreOp::DeleteEndpoint {
            tenant: TenantId(1),
            endpoint: a
        }]
    );
    assert_eq!(out.reply, AdminReply::Done);
    assert_eq!(d.pending_len(), 6);
    assert_eq!(d.in_flight_len(), 4);
    // Results of its posts in flight are ignored.
    for p in posts.iter().filter(|p| p.endpoint == a) {
        assert!(d.on_result(T0, p.post, Err("late".into()), 1).is_empty());
    }
    assert!(drain(&mut d, T0.plus(HOUR), &mut ids).is_empty());
    for p in posts.iter().filter(|p| p.endpoint == b) {
        assert_eq!(d.on_result(T0, p.post, Ok(200), 1).len(), 2);
    }
    let rest = drain(&mut d, T0, &mut ids);
    assert_eq!(rest.len(), 2);
    assert!(rest.iter().all(|p| p.endpoint == b));
    assert_eq!(d.endpoints(TenantId(1)).len(), 1);
    assert_eq!(
        d.deliveries_for(&event(7, 1, EventKind::Queued), T0)
            .iter()
            .map(|r| r.endpoint)
            .collect::<Vec<_>>(),
        vec![b]
    );
    assert_eq!(d.delete_endpoint(TenantId(1), a), Err(AdminError::NotFound));
}

/// Fails a delivery for good, then retries it by hand: posted again at once with the
/// next attempt number, and the schedule starts over.
#[test]
fn a_failed_delivery_can_be_retried() {
    let mut cfg = config();
    cfg.give_up_after = 2 * MIN;
    let mut d = WebhookDispatcher::new(cfg, DispatcherSettings::default());
    let mut ids = Ids(0);
    create(&mut d, ep(1), 1, &[]);
    let ev = event(1, 1, EventKind::Bounced);
    publish(&mut d, &ev, T0);
    let mut now = T0;
    let mut state = WebhookDeliveryState::Pending;
    while state == WebhookDeliveryState::Pending {
        let p = drain(&mut d, now, &mut ids).remove(0);
        state = delivery_op(&d.on_result(now, p.post, Ok(503), 1)).state;
        now = d.next_due().unwrap_or(now);
    }
    assert_eq!(state, WebhookDeliveryState::Failed);
    // 0s, 30s, 1m30s: the next (6m30s) is past 2 minutes.
    assert_eq!(now, T0.plus(90 * SEC));
    assert_eq!(d.pending_len(), 0);

    let later = now.plus(10 * 24 * HOUR);
    let out = d
        .retry_delivery(TenantId(1), ep(1), ev.id, later)
        .expect("retried");
    assert_eq!(out.reply, AdminReply::Done);
    let row = delivery_op(&out.ops);
    assert_eq!(row.state, WebhookDeliveryState::Pending);
    assert_eq!(row.attempts, 3);
    assert_eq!(row.next_attempt_at, Some(later));
    let p = drain(&mut d, later, &mut ids).remove(0);
    assert_eq!(p.attempt, 4);
    assert_eq!(header(&p, "webhook-id"), ev.id.to_string());
    let row = delivery_op(&d.on_result(later, p.post, Ok(500), 1));
    assert_eq!(row.state, WebhookDeliveryState::Pending);
    assert_eq!(row.next_attempt_at, Some(later.plus(30 * SEC)));
    // Retrying a pending one makes it due now.
    let out = d
        .retry_delivery(TenantId(1), ep(1), ev.id, later.plus(SEC))
        .expect("retried");
    assert_eq!(delivery_op(&out.ops).next_attempt_at, Some(later.plus(SEC)));
    let p = drain(&mut d, later.plus(SEC), &mut ids).remove(0);
    assert_eq!(p.attempt, 5);
    let row = delivery_op(&d.on_result(later.plus(SEC), p.post, Ok(200), 1));
    assert_eq!(row.state, WebhookDeliveryState::Delivered);
    // Unknown events are NotFound; the engine may supply the event itself.
    let other = event(9, 1, EventKind::Queued);
    assert_eq!(
        d.retry_delivery(TenantId(1), ep(1), other.id, later),
        Err(AdminError::NotFound)
    );
    let out = d
        .retry_delivery_with(TenantId(1), ep(1), Arc::new(other.clone()), 2, later)
        .expect("retried");
    assert_eq!(delivery_op(&out.ops).attempts, 2);
    assert_eq!(drain(&mut d, later, &mut ids)[0].attempt, 3);
    assert_eq!(
        d.retry_delivery_with(
            TenantId(2),
            ep(1),
            Arc::new(event(10, 2, EventKind::Queued)),
            0,
            later
        ),
        Err(AdminError::NotFound)
    );
}

#[test]
fn restore_resumes_pending_deliveries() {
    let cfg = config();
    let record = |id: EndpointId, tenant: u64| EndpointRecord {
        id,
        tenant: TenantId(tenant),
        url: "https://hooks.example.com/in".into(),
        events: Default::default(),
        secrets: vec![outpost_core::model::WebhookSecret {
            key: key(5),
            created_at: T0,
            expires_at: None,
        }],
        created_at: T0,
    };
    let e1 = event(1, 1, EventKind::Queued);
    let e2 = event(2, 1, EventKind::Deferred);
    let due = T0.plus(10 * MIN);
    let pending = |ev: &EventRecord, endpoint, attempts, updated_at: Time, next| PendingDelivery {
        delivery: WebhookDeliveryRecord {
            endpoint,
            event: ev.id,
            event_seq: ev.seq,
            tenant: ev.tenant,
            state: WebhookDeliveryState::Pending,
            attempts,
            next_attempt_at: Some(next),
            updated_at,
        },
        event: ev.clone(),
    };
    // ep(1): e1 after 2 failed attempts; e2 after 40 (its round started 69h21m30s before
    // its last failure). ep(9) does not exist any more.
    let last = T0.plus(69 * HOUR + 21 * MIN + 30 * SEC);
    let rows = vec![
        pending(&e1, ep(1), 2, due.minus(MIN), due),
        pending(&e2, ep(1), 40, last, last.plus(2 * HOUR)),
        pending(&e1, ep(9), 0, T0, T0),
    ];
    let mut d = WebhookDispatcher::new(cfg, DispatcherSettings::default());
    let mut ids = Ids(0);
    d.restore(vec![record(ep(1), 1)], rows, due.minus(5 * MIN));
    assert_eq!(d.pending_len(), 2);
    assert_eq!(d.next_due(), Some(due));
    assert!(drain(&mut d, due.minus(SEC), &mut ids).is_empty());
    let p = drain(&mut d, due, &mut ids);
    assert_eq!(p.len(), 1);
    assert_eq!((p[0].event, p[0].attempt), (e1.id, 3));
    let row = delivery_op(&d.on_result(due, p[0].post, Ok(500), 1));
    assert_eq!(row.attempts, 3);
    assert_eq!(row.next_attempt_at, Some(due.plus(5 * MIN)), "schedule[2]");

    let t = last.plus(2 * HOUR);
    let p = drain(&mut d, t, &mut ids);
    assert_eq!(p.len(), 2, "e1 is due again too");
    let p2 = p.iter().find(|p| p.event == e2.id).expect("e2 posted");
    assert_eq!(p2.attempt, 41);
    let row = delivery_op(&d.on_result(t, p2.post, Err("timeout".into()), 10_000));
    assert_eq!(
        row.state,
        WebhookDeliveryState::Failed,
        "72 h since its first attempt"
    );

    // A failed row handed to restore is not posted, but can be retried by hand.
    let e3 = event(3, 1, EventKind::Failed);
    let mut failed = pending(&e3, ep(1), 41, t, t);
    failed.delivery.state = WebhookDeliveryState::Failed;
    failed.delivery.next_attempt_at = None;
    let mut d = WebhookDispatcher::new(config(), DispatcherSettings::default());
    d.restore(vec![record(ep(1), 1)], vec![failed], t);
    assert_eq!(d.pending_len(), 0);
    assert_eq!(d.next_due(), None);
    let out = d
        .retry_delivery(TenantId(1), ep(1), e3.id, t)
        .expect("retried");
    assert_eq!(delivery_op(&out.ops).attempts, 41);
    let p = drain(&mut d, t, &mut ids);
    assert_eq!((p.len(), p[0].attempt), (1, 42));
}

#[test]
fn create_endpoint_validates_url_and_secret() {
    let mut d = dispatcher();
    let bad = |d: &mut WebhookDispatcher, url: &str, secret: Vec<u8>| {
        matches!(
            d.create_endpoint(ep(1), TenantId(1), url, &[], secret, T0),
            Err(AdminError::Invalid(_))
        )
    };
    assert!(bad(&mut d, "http://127.0.0.1:9000/hook", key(1)));
    assert!(bad(&mut d, "http://localhost:9000/hook", key(1)));
    assert!(bad(&mut d, "http://[::ffff:192.168.0.1]/hook", key(1)));
    assert!(bad(&mut d, "ftp://example.com/", key(1)));
    assert!(bad(&mut d, "https://u:p@example.com/", key(1)));
    assert!(bad(&mut d, "https://example.com/", vec![1; 8]));
    assert!(d.endpoints(TenantId(1)).is_empty());
    let mut open = WebhookDispatcher::new(
        config(),
        DispatcherSettings {
            allow_private: true,
            ..DispatcherSettings::default()
        },
    );
    let out = open
        .create_endpoint(
            ep(1),
            TenantId(1),
            "http://127.0.0.1:9000/hook",
            &[EventKind::Failed],
            key(1),
            T0,
        )
        .expect("allowed");
    assert!(matches!(out.ops[0], StoreOp::UpsertEndpoint(_)));
    assert!(matches!(
        open.create_endpoint(ep(1), TenantId(1), "http://127.0.0.1/", &[], key(1), T0),
        Err(AdminError::Invalid(_))
    ));
}

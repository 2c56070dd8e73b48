//! Random event, result, retry, restart and time sequences against the webhook dispatcher:
//! no delivery is ever lost (each ends delivered or failed, or stays pending with a due
//! time, in the dispatcher and in a model store fed with its ops alike), and no endpoint
//! ever has more posts in flight than allowed.

use core::time::Duration;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use outpost_core::config::Config;
use outpost_core::ids::{EndpointId, EventId, MessageId, PostId, TenantId, ulid};
use outpost_core::model::{
    EndpointRecord, EventKind, EventRecord, PendingDelivery, StoreOp, WebhookDeliveryRecord,
    WebhookDeliveryState,
};
use outpost_core::time::Time;
use outpost_core::webhook::{DispatcherSettings, PostRequest, WebhookDispatcher};
use proptest::prelude::*;

const T0: Time = Time(1_700_000_000_000);
const MAX_IN_FLIGHT: usize = 2;

#[derive(Clone, Debug)]
enum Action {
    /// An event of tenant (0..2) and kind.
    Publish(u64, usize),
    /// Answer the i-th post in flight: 0 => 200, 1 => 500, 2 => transport error.
    Answer(usize, u8),
    /// Time passes (ms).
    Advance(u64),
    /// Retry one (endpoint, event) by hand.
    Retry(usize, usize),
    /// Crash and restart from the model store (with its finished rows too, or not).
    Restart(bool),
}

fn action() -> impl Strategy<Value = Action> {
    prop_oneof![
        3 => (0u64..2, 0usize..6).prop_map(|(t, k)| Action::Publish(t, k)),
        6 => (0usize..8, 0u8..3).prop_map(|(i, o)| Action::Answer(i, o)),
        3 => prop_oneof![0u64..120_000, 0u64..(8 * 3_600_000)].prop_map(Action::Advance),
        1 => (0usize..3, 0usize..64).prop_map(|(e, v)| Action::Retry(e, v)),
        1 => any::<bool>().prop_map(Action::Restart),
    ]
}

struct World {
    d: WebhookDispatcher,
    now: Time,
    next_post: u64,
    next_seq: u64,
    endpoints: Vec<EndpointRecord>,
    events: BTreeMap<u64, EventRecord>,
    /// The model store: the last delivery row persisted for each (endpoint, seq).
    store: BTreeMap<(EndpointId, u64), WebhookDeliveryRecord>,
    /// Attempt numbers persisted for each delivery.
    attempts: BTreeMap<(EndpointId, u64), Vec<u32>>,
    in_flight: Vec<PostRequest>,
    /// Posts from before a restart: their results must be ignored.
    stale: Vec<PostId>,
    /// Deliveries the dispatcher has held since the last restart (it can retry those).
    seen: BTreeSet<(EndpointId, u64)>,
}

fn settings() -> (outpost_core::config::WebhookConfig, DispatcherSettings) {
    let mut cfg = Config::default().webhooks;
    cfg.max_in_flight_per_endpoint = MAX_IN_FLIGHT;
    (cfg, DispatcherSettings::default())
}

impl World {
    fn new() -> World {
        let (cfg, s) = settings();
        let mut d = WebhookDispatcher::new(cfg, s);
        let mut endpoints = Vec::new();
        // Tenant 0: one endpoint for everything, one for bounces and failures only.
        // Tenant 1: one endpoint for everything.
        let specs: [(u64, &[EventKind]); 3] = [
            (0, &[]),
            (0, &[EventKind::Bounced, EventKind::Failed]),
            (1, &[]),
        ];
        for (i, (tenant, kinds)) in specs.into_iter().enumerate() {
            let id = EndpointId(ulid(T0, i as u128 + 1));
            let out = d
                .create_endpoint(
                    id,
                    TenantId(tenant),
                    "https://hooks.example.com/x",
                    kinds,
                    vec![i as u8; 32],
                    T0,
                )
                .expect("valid endpoint");
            match &out.ops[0] {
                StoreOp::UpsertEndpoint(r) => endpoints.push(r.clone()),
                other => panic!("unexpected {other:?}"),
            }
        }
        World {
            d,
            now: T0,
            next_post: 0,
            next_seq: 0,
            endpoints,
            events: BTreeMap::new(),
            store: BTreeMap::new(),
            attempts: BTreeMap::new(),
            in_flight: Vec::new(),
            stale: Vec::new(),
            seen: BTreeSet::new(),
        }
    }

    fn apply(&mut self, ops: &[StoreOp]) {
        for op in ops {
            match op {
                StoreOp::UpsertWebhookDelivery(r) => {
                    self.store.insert((r.endpoint, r.event_seq), r.clone());
                }
                StoreOp::InsertWebhookAttempt(a) => {
                    let seq = self
                        .events
                        .values()
                        .find(|e| e.id == a.event)
                        .map(|e| e.seq)
                        .expect("attempt of a known event");
                    let list = self.attempts.entry((a.endpoint, seq)).or_default();
                    if let Some(&last) = list.last() {
                        assert!(a.attempt > last, "attempt numbers increase");
                    }
                    list.push(a.attempt);
                }
                other => panic!("unexpected op {other:?}"),
            }
        }
    }

    fn drain(&mut self) {
        loop {
            let mut n = self.next_post;
            let p = self.d.poll_post(self.now, &mut || {
                n += 1;
                PostId(n)
            });
            self.next_post = n;
            let Some(p) = p else { break };
            let row = self
                .store
                .get(&(p.endpoint, p.event_seq))
                .expect("persisted");
            assert_eq!(
                row.state,
                WebhookDeliveryState::Pending,
                "posted a finished one"
            );
            assert!(
                row.next_attempt_at.is_some_and(|t| t <= self.now),
                "posted before due"
            );
            self.in_flight.push(p);
        }
    }

    fn step(&mut self, a: &Action) {
        match *a {
            Action::Publish(tenant, kind) => {
                self.next_seq += 1;
                let seq = self.next_seq;
                let id = EventId(ulid(self.now, seq as u128));
                let ev = EventRecord {
                    seq,
                    id,
                    tenant: TenantId(tenant),
                    kind: EventKind::ALL[kind],
                    at: self.now,
                    message: MessageId(ulid(self.now, 1)),
                    idx: 0,
                    payload: Arc::from(format!(r#"{{"id":"{id}","seq":{seq}}}"#)),
                };
                let rows = self.d.deliveries_for(&ev, self.now);
                self.events.insert(seq, ev.clone());
                self.seen.extend(rows.iter().map(|r| (r.endpoint, seq)));
                for r in &rows {
                    self.store.insert((r.endpoint, seq), r.clone());
                }
                self.d.enqueue(ev, &rows);
            }
            Action::Answer(i, outcome) => {
                if self.in_flight.is_empty() {
                    return;
                }
                let p = self.in_flight.remove(i % self.in_flight.len());
                let result = match outcome {
                    0 => Ok(200),
                    1 => Ok(500),
                    _ => Err("connection refused".to_string()),
                };
                let ops = self.d.on_result(self.now, p.post, result, 5);
                assert_eq!(ops.len(), 2);
                self.apply(&ops);
            }
            Action::Advance(ms) => {
                self.now = self.now.plus(Duration::from_millis(ms));
                if let Some(stale) = self.stale.pop() {
                    let ops = self.d.on_result(self.now, stale, Ok(200), 1);
                    assert!(ops.is_empty(), "a post from before the restart");
                }
            }
            Action::Retry(e, v) => {
                let Some(ev) = self.events.values().nth(v % self.events.len().max(1)) else {
                    return;
                };
                let ep = &self.endpoints[e];
                let (tenant, ep_id, ev_id, seq) = (ep.tenant, ep.id, ev.id, ev.seq);
                let ev_tenant = ev.tenant;
                match self.d.retry_delivery(tenant, ep_id, ev_id, self.now) {
                    Ok(out) => {
                        assert_eq!(ev_tenant, tenant);
                        assert!(self.seen.contains(&(ep_id, seq)));
                        self.apply(&out.ops);
                    }
                    Err(e) => assert!(
                        ev_tenant != tenant || !self.seen.contains(&(ep_id, seq)),
                        "a delivery held since start-up can be retried: {e:?} {:?}",
                        self.store.get(&(ep_id, seq))
                    ),
                }
            }
            Action::Restart(with_finished) => {
                let pending: Vec<PendingDelivery> = self
                    .store
                    .values()
                    .filter(|r| with_finished || r.state == WebhookDeliveryState::Pending)
                    .map(|r| PendingDelivery {
                        delivery: r.clone(),
                        event: self.events[&r.event_seq].clone(),
                    })
                    .collect();
                self.seen = pending
                    .iter()
                    .map(|p| (p.delivery.endpoint, p.event.seq))
                    .collect();
                let (cfg, s) = settings();
                self.d = WebhookDispatcher::new(cfg, s);
                self.d.restore(self.endpoints.clone(), pending, self.now);
                self.stale.extend(self.in_flight.drain(..).map(|p| p.post));
            }
        }
        self.drain();
        self.check();
    }

    fn check(&self) {
        for ep in &self.endpoints {
            assert!(
                self.d.in_flight_to(ep.id) <= MAX_IN_FLIGHT,
                "in-flight bound"
            );
        }
        let held: BTreeSet<(EndpointId, u64)> = self
            .d
            .pending()
            .map(|v| (v.endpoint, v.event_seq))
            .collect();
        for (key, row) in &self.store {
            match row.state {
                WebhookDeliveryState::Pending => {
                    assert!(row.next_attempt_at.is_some(), "pending without a due time");
                    let v = self.d.delivery(key.0, key.1);
                    assert!(v.is_some(), "lost a pending delivery {key:?}");
                }
                _ => {
                    assert_eq!(row.next_attempt_at, None);
                    assert!(!held.contains(key), "a finished delivery is still queued");
                }
            }
        }
        for key in &held {
            assert!(self.store.contains_key(key), "queued without a row");
        }
        let in_flight: usize = self.in_flight.len();
        assert_eq!(self.d.in_flight_len(), in_flight);
        match self.d.next_due() {
            Some(_) => assert!(!held.is_empty()),
            // Nothing to wake up for: every queued delivery is in flight or waits for a
            // free slot of its endpoint (a result, an input, frees it).
            None => assert!(held.iter().all(|k| {
                self.d
                    .delivery(k.0, k.1)
                    .is_some_and(|v| v.in_flight.is_some())
                    || self.d.in_flight_to(k.0) == MAX_IN_FLIGHT
            })),
        }
    }

    /// Everything answers 200 from now on: every delivery ends delivered (or had failed).
    fn settle(&mut self) {
        for _ in 0..10_000 {
            while let Some(p) = self.in_flight.pop() {
                let ops = self.d.on_result(self.now, p.post, Ok(200), 1);
                self.apply(&ops);
            }
            if self.d.pending_len() == 0 {
                break;
            }
            if let Some(t) = self.d.next_due() {
                self.now = self.now.max(t);
            }
            self.drain();
            self.check();
        }
        assert_eq!(self.d.pending_len(), 0);
        assert!(
            self.store
                .values()
                .all(|r| r.state != WebhookDeliveryState::Pending),
            "every delivery ends delivered or failed"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]
    #[test]
    fn deliveries_are_never_lost_and_in_flight_stays_bounded(
        actions in proptest::collection::vec(action(), 1..200)
    ) {
        let mut w = World::new();
        for a in &actions {
            w.step(a);
        }
        w.settle();
    }
}

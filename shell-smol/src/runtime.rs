//! The engine loop: one task owns the `Engine`. Everything that happens in the world
//! arrives as a `Msg` on one channel; after each input the loop drains the engine's outputs
//! and carries each out (store writer, DNS, connections, webhooks, spool, answers).

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use async_channel::{Receiver, Sender};
use futures_lite::FutureExt;
use outpost_core::engine::{BreakerView, QueueView};
use outpost_core::io::{AdminCommand, AdminError, AdminReply, Receipt, Submission, SubmitError};
use outpost_core::{BatchId, ConnId, Engine, Input, MessageId, Output, RequestId, Time};

use crate::dns::Dns;
use crate::lazy_timer::LazyTimer;
use crate::smtp_conn::{self, ConnCmd, ConnHandle};
use crate::store::{Store, WriterHandle, spool_path};
use crate::tls::TlsClient;
use crate::webhook;

/// The current time as the core sees it.
pub fn now() -> Time {
    Time(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0),
    )
}

/// Inputs the engine loop takes in a row before it yields to the other tasks.
const MAX_STREAK: u32 = 64;

/// A message to the engine loop.
pub enum Msg {
    /// A fact from the world (connections, DNS, store, webhooks, spool scans).
    Input(Input),
    Submit(Submission, Sender<Result<Receipt, SubmitError>>),
    Admin(AdminCommand, Sender<Result<AdminReply, AdminError>>),
    Breakers(Sender<Vec<BreakerView>>),
    Queue(Sender<Vec<QueueView>>),
    /// What `GET /metrics` shows.
    Metrics(Sender<crate::metrics::Snapshot>),
    /// SIGTERM/SIGINT: stop intake, drain, exit.
    Shutdown,
}

/// What the loop needs from the outside.
pub struct Deps {
    pub store: Store,
    pub data_dir: PathBuf,
    pub dns: Dns,
    pub tls: TlsClient,
    pub allow_private_webhooks: bool,
    pub shutdown_deadline: Duration,
}

pub struct Runtime {
    engine: Engine,
    tx: Sender<Msg>,
    rx: Receiver<Msg>,
    deps: Deps,
    writer: Option<WriterHandle>,
    conns: HashMap<ConnId, ConnHandle>,
    next_request: u64,
    submits: HashMap<RequestId, Sender<Result<Receipt, SubmitError>>>,
    admins: HashMap<RequestId, Sender<Result<AdminReply, AdminError>>>,
    batches: HashSet<BatchId>,
    accepting: Arc<AtomicBool>,
    draining: Option<Instant>,
    counters: crate::metrics::Counters,
    /// Spool files to delete, collected while draining the engine's outputs and handed to
    /// the store writer in one go.
    deletions: Vec<MessageId>,
}

/// Handles for the rest of the daemon.
#[derive(Clone)]
pub struct LoopHandle {
    pub tx: Sender<Msg>,
    /// False once shutting down (intake answers 503).
    pub accepting: Arc<AtomicBool>,
}

impl Runtime {
    /// Loads the snapshot, feeds `Recovered`, starts the store writer. Nothing listens yet.
    pub fn start(mut engine: Engine, deps: Deps) -> Result<(Runtime, LoopHandle), String> {
        let (tx, rx) = async_channel::unbounded();
        let cfg = engine.config().clone();
        let t = now();
        let snapshot = deps
            .store
            .load_snapshot(t, cfg.breaker.warmup_window, cfg.idempotency_window)
            .map_err(|e| format!("loading the store: {e}"))?;
        tracing::info!(
            messages = snapshot.messages.len(),
            endpoints = snapshot.endpoints.len(),
            pending_webhooks = snapshot.pending_deliveries.len(),
            "store loaded"
        );
        // The writer reports straight into the loop's channel (no task in between).
        let fwd = tx.clone();
        let writer = deps.store.spawn_writer_with(move |batch, result| {
            let input = match result {
                Ok(()) => Input::Persisted { batch },
                Err(error) => {
                    tracing::error!(batch = batch.0, %error, "store write failed");
                    Input::PersistFailed { batch, error }
                }
            };
            let _ = fwd.try_send(Msg::Input(input));
        });
        let accepting = Arc::new(AtomicBool::new(true));
        engine.handle(t, Input::Recovered(Box::new(snapshot)));
        let mut rt = Runtime {
            engine,
            tx: tx.clone(),
            rx,
            deps,
            writer: Some(writer),
            conns: HashMap::new(),
            next_request: 1,
            submits: HashMap::new(),
            admins: HashMap::new(),
            batches: HashSet::new(),
            accepting: accepting.clone(),
            draining: None,
            counters: crate::metrics::Counters::default(),
            deletions: Vec::new(),
        };
        rt.drain_outputs();
        Ok((rt, LoopHandle { tx, accepting }))
    }

    /// Runs until shutdown has drained (or its deadline passed); then flushes the store.
    pub async fn run(mut self) {
        enum Wake {
            Msg(Option<Box<Msg>>),
            Timer,
        }
        let mut timer = LazyTimer::default();
        // Inputs handled since the loop last gave the executor thread to other tasks.
        let mut streak = 0u32;
        loop {
            // The loop shares its thread with the connection and session tasks: let them
            // run now and then while inputs keep coming.
            streak += 1;
            if streak >= MAX_STREAK {
                streak = 0;
                futures_lite::future::yield_now().await;
            }
            if let Some(since) = self.draining {
                let idle = self.engine.is_drained()
                    && self.engine.unpersisted_batches() == 0
                    && self.conns.is_empty()
                    && self.batches.is_empty();
                if idle || since.elapsed() >= self.deps.shutdown_deadline {
                    if !idle {
                        tracing::warn!(
                            connections = self.conns.len(),
                            store_batches = self.batches.len(),
                            "shutdown deadline passed; stopping with work in flight"
                        );
                    }
                    break;
                }
            }
            let engine_due = self.engine.poll_timeout();
            if engine_due.is_some_and(|t| t <= now()) {
                self.engine.handle(now(), Input::Tick);
                self.drain_outputs();
                continue;
            }
            // What is queued is taken first, without arming a timer.
            match self.rx.try_recv() {
                Ok(msg) => {
                    self.on_msg(msg);
                    continue;
                }
                Err(async_channel::TryRecvError::Closed) => break,
                Err(async_channel::TryRecvError::Empty) => self.flush_deletions(),
            }
            let mut wake_at: Option<Instant> = engine_due.map(|t| {
                let n = now();
                Instant::now() + Duration::from_millis(t.0.saturating_sub(n.0))
            });
            if let Some(since) = self.draining {
                let d = since + self.deps.shutdown_deadline;
                wake_at = Some(wake_at.map_or(d, |w| w.min(d)));
            }
            let rx = self.rx.clone();
            let recv = async { Wake::Msg(rx.recv().await.ok().map(Box::new)) };
            let wake = match wake_at {
                Some(at) => {
                    recv.or(async {
                        timer.until(at).await;
                        Wake::Timer
                    })
                    .await
                }
                None => recv.await,
            };
            streak = 0;
            match wake {
                Wake::Msg(Some(msg)) => self.on_msg(*msg),
                Wake::Msg(None) => break,
                // The engine's timer is handled at the top of the loop.
                Wake::Timer => {}
            }
        }
        self.finish().await;
    }

    async fn finish(mut self) {
        self.accepting.store(false, Ordering::SeqCst);
        self.flush_deletions();
        for (_, c) in self.conns.drain() {
            c.close();
        }
        // Unanswered requests get `Unavailable` (their senders drop here).
        self.submits.clear();
        self.admins.clear();
        if let Some(w) = self.writer.take() {
            smol::unblock(move || w.flush_and_stop()).await;
        }
        tracing::info!("store flushed; stopped");
    }

    fn on_msg(&mut self, msg: Msg) {
        let t = now();
        match msg {
            Msg::Input(input) => {
                if !self.accept_input(&input) {
                    return;
                }
                self.engine.handle(t, input);
            }
            Msg::Submit(mut s, reply) => {
                if self.draining.is_some() {
                    let _ = reply.try_send(Err(SubmitError::new(
                        outpost_core::io::SubmitErrorKind::Unavailable,
                        "shutting_down",
                        "the server is shutting down",
                    )));
                    return;
                }
                let id = self.request_id();
                s.request = id;
                self.submits.insert(id, reply);
                self.engine.handle(t, Input::Submit(s));
            }
            Msg::Admin(command, reply) => {
                let request = self.request_id();
                self.admins.insert(request, reply);
                self.engine.handle(t, Input::Admin { request, command });
            }
            Msg::Breakers(reply) => {
                let _ = reply.try_send(self.engine.breakers(t));
                return;
            }
            Msg::Queue(reply) => {
                let _ = reply.try_send(self.engine.queue());
                return;
            }
            Msg::Metrics(reply) => {
                let snapshot = self.counters.snapshot(
                    self.engine.stats(),
                    self.engine.queue(),
                    self.engine.breakers(t),
                    self.engine.webhook_backlog(),
                    self.engine.pending_recipients(),
                    self.conns.len(),
                    self.engine.destinations(),
                    self.draining.is_some(),
                );
                let _ = reply.try_send(snapshot);
                return;
            }
            Msg::Shutdown => {
                if self.draining.is_some() {
                    return;
                }
                tracing::info!(
                    connections = self.conns.len(),
                    deadline_s = self.deps.shutdown_deadline.as_secs(),
                    "shutting down: intake stopped, draining"
                );
                self.accepting.store(false, Ordering::SeqCst);
                self.draining = Some(Instant::now());
                self.engine.handle(t, Input::Drain);
            }
        }
        self.drain_outputs();
    }

    fn request_id(&mut self) -> RequestId {
        let id = RequestId(self.next_request);
        self.next_request += 1;
        id
    }

    /// Keeps the connection map in step; drops reports about connections the core closed.
    fn accept_input(&mut self, input: &Input) -> bool {
        match input {
            Input::Connected { conn }
            | Input::Received { conn, .. }
            | Input::TlsEstablished { conn, .. } => self.conns.contains_key(conn),
            Input::ConnectFailed { conn, .. }
            | Input::TlsFailed { conn, .. }
            | Input::Disconnected { conn, .. } => self.conns.remove(conn).is_some(),
            Input::Persisted { batch } => {
                self.batches.remove(batch);
                self.counters.on_batch_done(*batch, true);
                true
            }
            Input::PersistFailed { batch, .. } => {
                self.batches.remove(batch);
                self.counters.on_batch_done(*batch, false);
                true
            }
            Input::WebhookResult { result, .. } => {
                self.counters.on_webhook_result(result);
                true
            }
            _ => true,
        }
    }

    fn drain_outputs(&mut self) {
        while let Some(out) = self.engine.poll_output() {
            self.dispatch(out);
        }
        if self.deletions.len() >= 1024 {
            self.flush_deletions();
        }
    }

    /// Hands the collected spool deletions to the store writer (when the loop is about to
    /// wait: one hand-off for all that a burst of inputs made final).
    fn flush_deletions(&mut self) {
        if !self.deletions.is_empty() {
            let ids = std::mem::take(&mut self.deletions);
            let left = match &self.writer {
                Some(w) => w.delete_spool(ids).err(),
                None => Some(ids),
            };
            // No writer (stopped): delete on a blocking thread.
            if let Some(ids) = left.filter(|ids| !ids.is_empty()) {
                let store = self.deps.store.clone();
                smol::spawn(async move {
                    if let Err(e) = smol::unblock(move || store.delete_spool(&ids)).await {
                        tracing::warn!(error = %e, "deleting spool files failed");
                    }
                })
                .detach();
            }
        }
    }

    fn report(&self) -> impl Fn(Input) + Send + Sync + 'static + use<> {
        let tx = self.tx.clone();
        move |input| {
            let _ = tx.try_send(Msg::Input(input));
        }
    }

    fn dispatch(&mut self, out: Output) {
        match out {
            Output::Persist { batch, ops } => {
                tracing::debug!(batch = batch.0, ops = ops.len(), "persist");
                log_attempts(&ops);
                self.counters.on_persist(batch, &ops);
                self.batches.insert(batch);
                match &self.writer {
                    Some(w) => w.submit(batch, ops),
                    None => {
                        let _ = self.tx.try_send(Msg::Input(Input::PersistFailed {
                            batch,
                            error: "store writer stopped".into(),
                        }));
                    }
                }
            }
            Output::SubmitAccepted { request, receipt } => {
                tracing::info!(message_id = %receipt.id, recipients = receipt.recipients.len(), "message accepted");
                if let Some(r) = self.submits.remove(&request) {
                    let _ = r.try_send(Ok(receipt));
                }
            }
            Output::SubmitRejected { request, error } => {
                tracing::info!(code = %error.code, "submission refused");
                if let Some(r) = self.submits.remove(&request) {
                    let _ = r.try_send(Err(error));
                }
            }
            Output::AdminAnswer { request, result } => {
                if let Some(r) = self.admins.remove(&request) {
                    let _ = r.try_send(result);
                }
            }
            Output::Resolve { query, name, kind } => {
                let dns = self.deps.dns.clone();
                let report = self.report();
                smol::spawn(async move {
                    let result = dns.resolve(&name, kind).await;
                    if let Err(e) = &result {
                        tracing::debug!(query = query.0, %name, ?kind, error = %e, "DNS lookup failed");
                    }
                    report(Input::Resolved { query, result });
                })
                .detach();
            }
            Output::Connect { conn, ip, port, mx } => {
                tracing::debug!(conn = conn.0, %ip, port, %mx, "connecting");
                let h = smtp_conn::spawn(
                    conn,
                    std::net::SocketAddr::new(ip, port),
                    self.deps.tls.clone(),
                    self.report(),
                );
                self.conns.insert(conn, h);
            }
            Output::Send { conn, bytes } => {
                if let Some(c) = self.conns.get(&conn) {
                    c.command(ConnCmd::Send(bytes));
                }
            }
            Output::SendSpool { conn, message } => {
                tracing::debug!(conn = conn.0, message_id = %message, "sending message data");
                if let Some(c) = self.conns.get(&conn) {
                    c.command(ConnCmd::SendSpool(spool_path(&self.deps.data_dir, message)));
                }
            }
            Output::StartTls {
                conn,
                server_name,
                require_verified,
            } => {
                if let Some(c) = self.conns.get(&conn) {
                    c.command(ConnCmd::StartTls {
                        server_name,
                        require_verified,
                    });
                }
            }
            Output::Close { conn } => {
                if let Some(c) = self.conns.remove(&conn) {
                    c.close();
                }
            }
            Output::PostWebhook {
                post,
                endpoint,
                event,
                url,
                headers,
                body,
                timeout,
            } => {
                let report = self.report();
                let allow = self.deps.allow_private_webhooks;
                smol::spawn(async move {
                    let (result, duration_ms) =
                        webhook::post(url, headers, body, timeout, allow).await;
                    match &result {
                        Ok(status) => {
                            tracing::debug!(%endpoint, %event, status, duration_ms, "webhook posted")
                        }
                        Err(error) => {
                            tracing::info!(%endpoint, %event, %error, duration_ms, "webhook failed")
                        }
                    }
                    report(Input::WebhookResult {
                        post,
                        result,
                        duration_ms,
                    });
                })
                .detach();
            }
            // Collected; `drain_outputs` hands them to the store writer together.
            Output::DeleteSpool { message } => self.deletions.push(message),
            Output::ScanSpool => {
                let store = self.deps.store.clone();
                let report = self.report();
                smol::spawn(async move {
                    let (files, live) = smol::unblock(move || store.scan_spool()).await;
                    // The core deletes nothing then (it fails closed); say why here, as
                    // the core has no logger.
                    if let Err(error) = &files {
                        tracing::warn!(%error, "spool clean-up skipped: cannot list the spool");
                    }
                    if let Err(error) = &live {
                        tracing::warn!(%error, "spool clean-up skipped: cannot read the live message set");
                    }
                    report(Input::SpoolScanned { files, live });
                })
                .detach();
            }
            Output::DeleteOrphans { messages } => {
                tracing::info!(count = messages.len(), "deleting orphaned spool files");
                let store = self.deps.store.clone();
                smol::spawn(async move {
                    if let Err(e) = smol::unblock(move || store.delete_spool(&messages)).await {
                        tracing::warn!(error = %e, "deleting orphaned spool files failed");
                    }
                })
                .detach();
            }
        }
    }
}

/// One INFO line per delivery attempt, as it is written to the timeline. Ids, codes and
/// the category only: no addresses, and no reply text (it often quotes the address).
fn log_attempts(ops: &[outpost_core::model::StoreOp]) {
    for op in ops {
        if let outpost_core::model::StoreOp::InsertAttempt(a) = op {
            tracing::info!(
                message_id = %a.message,
                rcpt = a.idx,
                attempt = a.attempt,
                status = ?a.status,
                stage = a.stage.as_str(),
                code = a.smtp_code,
                enhanced = a.enhanced_code.as_deref(),
                category = a.category.as_str(),
                rule = %a.rule,
                mx = a.mx.as_deref(),
                duration_ms = a.duration_ms,
                breaker_failure = a.breaker_failure,
                "delivery attempt"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::EngineGateway;
    use crate::gateway::Gateway;
    use async_io::Async;
    use async_io::Timer;
    use futures_lite::io::BufReader;
    use futures_lite::{AsyncBufReadExt, AsyncWriteExt};
    use outpost_core::TenantId;
    use outpost_core::config::Relay;
    use outpost_core::io::{ComposeRequest, SubmissionContent};
    use outpost_core::model::Source;
    use std::net::TcpListener;

    /// A minimal SMTP sink: accepts everything, sends each message's DATA to `got`.
    fn smtp_sink() -> (u16, Receiver<(Vec<String>, String)>) {
        let listener = Async::<TcpListener>::bind(([127, 0, 0, 1], 0)).expect("bind");
        let port = listener.get_ref().local_addr().expect("addr").port();
        let (got, rx) = async_channel::unbounded();
        smol::spawn(async move {
            loop {
                let Ok((s, _)) = listener.accept().await else {
                    return;
                };
                let got = got.clone();
                smol::spawn(async move {
                    let mut r = BufReader::new(s);
                    let _ = r.get_mut().write_all(b"220 sink ESMTP\r\n").await;
                    let mut rcpts = Vec::new();
                    loop {
                        let mut line = String::new();
                        if r.read_line(&mut line).await.unwrap_or(0) == 0 {
                            return;
                        }
                        let cmd = line.to_ascii_uppercase();
                        let reply: &[u8] = if cmd.starts_with("EHLO") {
                            b"250-sink\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 10000000\r\n"
                        } else if cmd.starts_with("RCPT") {
                            rcpts.push(line.trim().to_string());
                            b"250 ok\r\n"
                        } else if cmd.starts_with("DATA") {
                            let _ = r.get_mut().write_all(b"354 go\r\n").await;
                            let mut data = String::new();
                            loop {
                                let mut l = String::new();
                                if r.read_line(&mut l).await.unwrap_or(0) == 0 {
                                    return;
                                }
                                if l == ".\r\n" {
                                    break;
                                }
                                data.push_str(&l);
                            }
                            let _ = got.send((std::mem::take(&mut rcpts), data)).await;
                            b"250 queued\r\n"
                        } else if cmd.starts_with("QUIT") {
                            let _ = r.get_mut().write_all(b"221 bye\r\n").await;
                            return;
                        } else {
                            b"250 ok\r\n"
                        };
                        let _ = r.get_mut().write_all(reply).await;
                    }
                })
                .detach();
            }
        })
        .detach();
        (port, rx)
    }

    #[test]
    fn a_submission_is_delivered_through_the_relay_and_shutdown_drains() {
        let (port, got) = smtp_sink();
        let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/test-data")
            .join(format!("runtime-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let store = Store::open(&dir).expect("store");
        let config = outpost_core::Config {
            relay: Some(Relay {
                host: "127.0.0.1".into(),
                port,
            }),
            ..Default::default()
        };
        let deps = Deps {
            store,
            data_dir: dir.clone(),
            dns: Dns::new(Some("127.0.0.1:9".parse().expect("addr"))).expect("dns"),
            tls: TlsClient::new(None).expect("tls"),
            allow_private_webhooks: false,
            shutdown_deadline: Duration::from_secs(5),
        };
        let (rt, handle) = Runtime::start(Engine::new(config, 7), deps).expect("start");
        let running = std::thread::spawn(move || smol::block_on(rt.run()));
        let gw = Gateway::new(handle.clone());
        let receipt = gw
            .submit(Submission {
                request: RequestId(0),
                tenant: TenantId(1),
                tenant_domain: "example.com".into(),
                source: Source::Api,
                idempotency_key: None,
                content: SubmissionContent::Compose(ComposeRequest {
                    from: "app@example.com".into(),
                    to: vec!["someone@dest.example".into()],
                    subject: "hello".into(),
                    text: Some("body line\n.dot line".into()),
                    ..Default::default()
                }),
            })
            .expect("accepted");
        assert_eq!(receipt.recipients.len(), 1);
        let (rcpts, data) = smol::block_on(async { got.recv().await.ok() }.or(async {
            Timer::after(Duration::from_secs(20)).await;
            None
        }))
        .expect("delivered to the sink");
        assert_eq!(rcpts, vec!["RCPT TO:<someone@dest.example>".to_string()]);
        assert!(data.contains("Subject: hello"), "{data}");
        assert!(data.contains("..dot line"), "dot-stuffed: {data}");
        assert!(gw.accepting());
        handle.tx.send_blocking(Msg::Shutdown).expect("send");
        running.join().expect("loop ends");
        assert!(!gw.accepting());
        assert!(
            gw.submit(Submission {
                request: RequestId(0),
                tenant: TenantId(1),
                tenant_domain: "example.com".into(),
                source: Source::Api,
                idempotency_key: None,
                content: SubmissionContent::Compose(ComposeRequest::default()),
            })
            .is_err()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

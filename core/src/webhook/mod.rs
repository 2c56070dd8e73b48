//! Webhooks: the dispatcher (a pure state machine deciding what to POST when, and what to
//! persist about it), Standard Webhooks signing, and endpoint URL validation.
//!
//! # How the engine drives the [`WebhookDispatcher`]
//!
//! 1. Start-up: `WebhookDispatcher::new(config.webhooks.clone(), settings)` with
//!    `settings.allow_private` from `--allow-private-webhooks`; on `Input::Recovered`,
//!    `restore(snapshot.endpoints, snapshot.pending_deliveries, now)`.
//! 2. An event is produced: `deliveries_for(&event, now)` gives the pending delivery rows;
//!    put `StoreOp::InsertEvent(event)` and one `StoreOp::UpsertWebhookDelivery` per row in
//!    the SAME `Persist` batch. On `Input::Persisted` of that batch, call
//!    `enqueue(event, &rows)`. Nothing is posted before `enqueue` (events are posted only
//!    after they are persisted). On `PersistFailed`, drop the rows.
//! 3. After every input, drain `poll_post(now, &mut next_post_id)` until `None`, turning
//!    each [`PostRequest`] into `Output::PostWebhook` with [`PostRequest::into_output`].
//! 4. `Input::WebhookResult { post, result, duration_ms }` -> `on_result(now, post,
//!    result, duration_ms)`; persist the returned ops (a batch of their own; nothing waits
//!    on it), then drain `poll_post` again (the endpoint has a free slot now).
//! 5. `poll_timeout` includes `next_due()`; on `Tick`, drain `poll_post`.
//! 6. Admin commands: `create_endpoint`, `delete_endpoint`, `rotate_secret`,
//!    `retry_delivery` return an [`AdminOutcome`] (ops to persist + the reply) or an
//!    `AdminError`; persist the ops and answer with the reply once `Persisted`. The
//!    in-memory change is applied at once.
//!
//! Delivery semantics: at least once. A POST in flight at a crash is sent again after
//! restart (same `webhook-id`, so receivers can deduplicate).
//!
//! Retries: after the k-th failed attempt of a round the next is `retry_schedule[k-1]`
//! later, then every `retry_every`; when the next attempt would fall later than
//! `give_up_after` after the round's first attempt, the delivery is `Failed` (the row is
//! kept for replay; the dispatcher forgets it but for a bounded cache of finished
//! deliveries). With the defaults: 41 attempts, the last 71h21m30s after the first.
//! `retry_delivery` starts a new round (attempt numbers continue). After a restart the
//! round start is rebuilt from `updated_at` minus the schedule up to `attempts`.
//!
//! `retry_delivery` needs the event and the attempts made so far, which the dispatcher
//! knows for pending deliveries, for the last `retained_deliveries` finished since
//! start-up, and for finished rows handed to `restore`; otherwise it answers `NotFound`
//! and the caller may use `retry_delivery_with(.., event, attempts, ..)`.
//!
//! URL checks are syntactic ([`validate_url`]): a host *name* resolving to a private
//! address must be refused by the shell after DNS resolution (unless private targets are
//! allowed); redirects should not be followed (a 3xx counts as a failure here).

mod dispatcher;
mod sign;
mod target;

pub use dispatcher::{
    AdminOutcome, DEFAULT_RETAINED_DELIVERIES, DeliveryView, DispatcherSettings, MAX_ERROR_LEN,
    PostRequest, WebhookDispatcher,
};
pub use sign::{
    MAX_SECRET_LEN, MIN_SECRET_LEN, SECRET_PREFIX, SecretError, check_key, format_secret,
    live_secrets, parse_secret, sign, signature_header,
};
pub use target::{
    Host, MAX_URL_LEN, UrlError, is_private_host, is_private_v4, is_private_v6, validate_url,
};

/// `outpost/<crate version>`, the default `user-agent` of webhook POSTs.
pub const USER_AGENT: &str = concat!("outpost/", env!("CARGO_PKG_VERSION"));

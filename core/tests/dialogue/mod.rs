//! Shared by the scripted SMTP dialogue tests (`smtp_client_dialogues`,
//! `smtp_server_dialogues`): the start time, and what the test sees of a sans-IO session
//! after feeding it: every queued action, every queued event, the bytes it sends.

use outpost_core::smtp::{
    ClientSession, ServerAction, ServerEvent, ServerSession, SessionAction, SessionEvent,
};
use outpost_core::time::Time;

pub const T0: Time = Time(1_000_000);

/// A session whose actions and events are drained one by one.
pub trait Session {
    type Action;
    type Event;
    fn next_action(&mut self) -> Option<Self::Action>;
    fn next_event(&mut self) -> Option<Self::Event>;
}

impl Session for ClientSession {
    type Action = SessionAction;
    type Event = SessionEvent;
    fn next_action(&mut self) -> Option<SessionAction> {
        self.poll_action()
    }
    fn next_event(&mut self) -> Option<SessionEvent> {
        self.poll_event()
    }
}

impl Session for ServerSession {
    type Action = ServerAction;
    type Event = ServerEvent;
    fn next_action(&mut self) -> Option<ServerAction> {
        self.poll_action()
    }
    fn next_event(&mut self) -> Option<ServerEvent> {
        self.poll_event()
    }
}

/// Every action queued so far.
pub fn actions<S: Session>(s: &mut S) -> Vec<S::Action> {
    std::iter::from_fn(|| s.next_action()).collect()
}

/// Every event queued so far.
pub fn events<S: Session>(s: &mut S) -> Vec<S::Event> {
    std::iter::from_fn(|| s.next_event()).collect()
}

/// An action that writes bytes to the peer.
pub trait SendBytes {
    fn send_bytes(bytes: Vec<u8>) -> Self;
}

impl SendBytes for SessionAction {
    fn send_bytes(bytes: Vec<u8>) -> Self {
        SessionAction::Send(bytes)
    }
}

impl SendBytes for ServerAction {
    fn send_bytes(bytes: Vec<u8>) -> Self {
        ServerAction::Send(bytes)
    }
}

/// The action sending `s`.
pub fn send<A: SendBytes>(s: &str) -> A {
    A::send_bytes(s.as_bytes().to_vec())
}

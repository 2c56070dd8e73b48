//! SMTP as bytes: reply parsing with hard limits, the client session state machine, the
//! submission server session state machine, and command writing (commands and
//! dot-stuffing are ours; smtp-proto parses replies and EHLO capabilities).

pub mod capabilities;
pub mod client;
pub mod command;
pub mod reply;
pub mod server;

use serde::{Deserialize, Serialize};

pub use capabilities::Capabilities;
pub use client::{
    ClientSession, Envelope, SessionAction, SessionConfig, SessionError, SessionEvent, TlsMode,
    TransactionReport,
};
pub use reply::{RawReply, Reply, ReplyError, ReplyReader};
pub use server::{AuthedTenant, ServerAction, ServerConfig, ServerEvent, ServerSession};

/// Where in the delivery an outcome happened.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Stage {
    /// Decided before any SMTP: suppression, expiry, cancellation.
    Queue,
    Dns,
    Connect,
    Greeting,
    Ehlo,
    Tls,
    Mail,
    Rcpt,
    Data,
    EndOfData,
}

impl Stage {
    pub const ALL: [Stage; 10] = [
        Stage::Queue,
        Stage::Dns,
        Stage::Connect,
        Stage::Greeting,
        Stage::Ehlo,
        Stage::Tls,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::EndOfData,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Queue => "queue",
            Stage::Dns => "dns",
            Stage::Connect => "connect",
            Stage::Greeting => "greeting",
            Stage::Ehlo => "ehlo",
            Stage::Tls => "tls",
            Stage::Mail => "mail",
            Stage::Rcpt => "rcpt",
            Stage::Data => "data",
            Stage::EndOfData => "end_of_data",
        }
    }

    pub fn parse(s: &str) -> Option<Stage> {
        let s = s.to_ascii_lowercase();
        let alias = match s.as_str() {
            "mail_from" | "mail from" => "mail",
            "rcpt_to" | "rcpt to" => "rcpt",
            "eod" | "end-of-data" | "dot" => "end_of_data",
            "helo" => "ehlo",
            "starttls" => "tls",
            other => other,
        };
        Self::ALL.into_iter().find(|st| st.as_str() == alias)
    }
}

//! A simulated remote SMTP server: parses the engine's raw command bytes (pipelined
//! groups included), answers with real SMTP reply bytes, and watches the client for
//! protocol violations (pipelining without PIPELINING, commands after a group-ending
//! command before its reply, a body before 354, bare LF).
//!
//! The session is mechanical; what a reply *says* (accept, 4xx, 5xx, tarpit, garbage,
//! disconnect) comes from a [`Fates`] provider, so the world can drive it from its seeded
//! RNG and tests can drive it with fixed answers.

/// What the server does in answer to one step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fate {
    Reply {
        code: u16,
        enhanced: Option<&'static str>,
        text: String,
    },
    /// The same reply, but only after a delay longer than any client stage timeout.
    Slow {
        code: u16,
        enhanced: Option<&'static str>,
        text: String,
    },
    /// A line that is not an SMTP reply.
    Garbage,
    /// Close the connection without answering.
    Drop,
}

impl Fate {
    pub fn ok(code: u16, enhanced: &'static str, text: &str) -> Fate {
        Fate::Reply {
            code,
            enhanced: Some(enhanced),
            text: text.to_string(),
        }
    }
}

/// Decisions the world makes for the server.
pub trait Fates {
    fn greeting(&mut self) -> Fate;
    fn mail(&mut self, from: &str) -> Fate;
    fn rcpt(&mut self, to: &str) -> Fate;
    fn data(&mut self) -> Fate;
    fn end_of_data(&mut self) -> Fate;
}

/// Server capabilities advertised in the EHLO reply.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Caps {
    pub pipelining: bool,
    pub starttls: bool,
    pub smtputf8: bool,
    pub eightbitmime: bool,
    pub size: Option<u64>,
    /// EHLO is refused with 502 (an old server): the client must fall back to HELO.
    pub ehlo_refused: bool,
}

impl Default for Caps {
    fn default() -> Self {
        Caps {
            pipelining: true,
            starttls: false,
            smtputf8: true,
            eightbitmime: true,
            size: Some(50 * 1024 * 1024),
            ehlo_refused: false,
        }
    }
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Connected; the greeting is on its way.
    Greeting,
    /// Greeted (or TLS just came up): EHLO/HELO expected.
    NeedHello,
    Ready,
    /// 220 to STARTTLS sent: nothing may come until the handshake.
    AwaitTls,
    /// MAIL accepted; RCPTs being collected.
    Mail,
    /// 354 sent: the body is expected.
    Body,
    Quit,
    Dead,
}

/// What the server does; the world schedules these.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Act {
    /// Bytes to the client. `replies` complete replies are in them; `slow`: tarpitted.
    Send {
        bytes: Vec<u8>,
        replies: u32,
        slow: bool,
    },
    /// The server closes the connection (after anything sent before).
    Close,
    /// End of data accepted (250) for these accepted recipients.
    Accepted(Vec<String>),
    /// A command RCPT TO reached the server (for suppression checks): the address.
    RcptSeen(String),
    /// MAIL FROM reached the server: the sender.
    MailSeen(String),
    /// The client broke the protocol.
    Violation(String),
}

#[derive(Clone, Debug)]
pub struct ServerSession {
    pub name: String,
    pub caps: Caps,
    pub phase: Phase,
    pub tls: bool,
    inbuf: Vec<u8>,
    pub mail_from: Option<String>,
    pub rcpts_ok: Vec<String>,
    /// Replies sent but not yet delivered to the client (the world decrements it).
    pub outstanding: u32,
    /// The last command that must end a pipelined group (EHLO, DATA, STARTTLS, QUIT...),
    /// while its reply is outstanding.
    group_end: Option<&'static str>,
    pub transactions: u32,
}

fn reply_bytes(code: u16, enhanced: Option<&str>, text: &str) -> Vec<u8> {
    match enhanced {
        Some(e) => format!("{code} {e} {text}\r\n").into_bytes(),
        None => format!("{code} {text}\r\n").into_bytes(),
    }
}

/// Extracts the address between `<` and `>` after `MAIL FROM:` / `RCPT TO:`.
pub fn path_arg(rest: &str) -> Option<(String, String)> {
    let rest = rest.trim_start();
    let start = rest.find('<')?;
    let end = rest[start..].find('>')? + start;
    Some((
        rest[start + 1..end].to_string(),
        rest[end + 1..].trim().to_string(),
    ))
}

impl ServerSession {
    pub fn new(name: &str, caps: Caps) -> ServerSession {
        ServerSession {
            name: name.to_string(),
            caps,
            phase: Phase::Greeting,
            tls: false,
            inbuf: Vec::new(),
            mail_from: None,
            rcpts_ok: Vec::new(),
            outstanding: 0,
            group_end: None,
            transactions: 0,
        }
    }

    fn send(&mut self, out: &mut Vec<Act>, fate: Fate, group_end: Option<&'static str>) -> bool {
        self.group_end = group_end;
        match fate {
            Fate::Reply {
                code,
                enhanced,
                text,
            } => {
                self.outstanding += 1;
                out.push(Act::Send {
                    bytes: reply_bytes(code, enhanced, &text),
                    replies: 1,
                    slow: false,
                });
                if code == 421 {
                    self.phase = Phase::Dead;
                    out.push(Act::Close);
                    return false;
                }
                true
            }
            Fate::Slow {
                code,
                enhanced,
                text,
            } => {
                self.outstanding += 1;
                out.push(Act::Send {
                    bytes: reply_bytes(code, enhanced, &text),
                    replies: 1,
                    slow: true,
                });
                true
            }
            Fate::Garbage => {
                self.outstanding += 1;
                out.push(Act::Send {
                    bytes: b"HTTP/1.1 400 Bad Request\r\n\xff\xfe\x00garbage\r\n".to_vec(),
                    replies: 1,
                    slow: false,
                });
                self.phase = Phase::Dead;
                out.push(Act::Close);
                false
            }
            Fate::Drop => {
                self.phase = Phase::Dead;
                out.push(Act::Close);
                false
            }
        }
    }

    fn positive(f: &Fate) -> Option<u16> {
        match f {
            Fate::Reply { code, .. } | Fate::Slow { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// The connection is up: send the greeting.
    pub fn greet(&mut self, fates: &mut dyn Fates) -> Vec<Act> {
        let mut out = Vec::new();
        let f = fates.greeting();
        let code = Self::positive(&f);
        if self.send(&mut out, f, Some("greeting")) {
            if code == Some(220) {
                self.phase = Phase::NeedHello;
            } else {
                // A 554 greeting: the server answers 503 to everything but QUIT.
                self.phase = Phase::Dead;
            }
        }
        out
    }

    /// TLS came up: the SMTP state is reset (RFC 3207 section 4.2).
    pub fn tls_established(&mut self) {
        self.tls = true;
        self.phase = Phase::NeedHello;
        self.reset_txn();
    }

    fn reset_txn(&mut self) {
        self.mail_from = None;
        self.rcpts_ok.clear();
    }

    /// Bytes from the client (outside the body, which comes as `body`).
    pub fn on_bytes(&mut self, bytes: &[u8], fates: &mut dyn Fates) -> Vec<Act> {
        let mut out = Vec::new();
        if self.phase == Phase::AwaitTls {
            out.push(Act::Violation(
                "client wrote after STARTTLS 220 before the TLS handshake".into(),
            ));
            return out;
        }
        self.inbuf.extend_from_slice(bytes);
        while let Some(pos) = self.inbuf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.inbuf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            } else {
                out.push(Act::Violation("command line ended by a bare LF".into()));
            }
            if line.len() > 510 {
                out.push(Act::Violation(format!(
                    "command line of {} bytes exceeds 512 with CRLF",
                    line.len()
                )));
            }
            let text = String::from_utf8_lossy(&line).into_owned();
            if !self.command(&text, fates, &mut out) {
                self.inbuf.clear();
                break;
            }
        }
        out
    }

    /// Checks the pipelining rules for one incoming command.
    fn check_pipelining(&self, verb: &str, out: &mut Vec<Act>) {
        if self.outstanding == 0 {
            return;
        }
        if let Some(g) = self.group_end {
            out.push(Act::Violation(format!(
                "{verb} sent before the reply to {g} was read (a group-ending command)"
            )));
        } else if !self.caps.pipelining || self.phase == Phase::NeedHello {
            out.push(Act::Violation(format!(
                "{verb} pipelined ({} replies outstanding) but PIPELINING was not offered",
                self.outstanding
            )));
        }
    }

    /// One command line. Returns false if the connection is gone.
    fn command(&mut self, line: &str, fates: &mut dyn Fates, out: &mut Vec<Act>) -> bool {
        let upper = line.to_ascii_uppercase();
        let verb = upper.split(' ').next().unwrap_or("").to_string();
        let verb = verb.as_str();
        let verb = if upper.starts_with("MAIL FROM:") {
            "MAIL"
        } else if upper.starts_with("RCPT TO:") {
            "RCPT"
        } else {
            verb
        };
        self.check_pipelining(verb, out);
        if self.phase == Phase::Dead {
            if verb == "QUIT" {
                self.phase = Phase::Quit;
                self.send(out, Fate::ok(221, "2.0.0", "Bye"), Some("QUIT"));
                out.push(Act::Close);
                return false;
            }
            self.send(
                out,
                Fate::ok(503, "5.5.1", "Bad sequence of commands"),
                None,
            );
            return true;
        }
        if self.phase == Phase::Greeting {
            out.push(Act::Violation(format!(
                "{verb} sent before the greeting was read"
            )));
        }
        match verb {
            "EHLO" => {
                if self.caps.ehlo_refused {
                    return self.send(
                        out,
                        Fate::ok(502, "5.5.2", "Command not recognized"),
                        Some("EHLO"),
                    );
                }
                self.reset_txn();
                self.phase = Phase::Ready;
                let mut lines = vec![format!("{} Hello", self.name)];
                if self.caps.pipelining {
                    lines.push("PIPELINING".into());
                }
                if let Some(s) = self.caps.size {
                    lines.push(format!("SIZE {s}"));
                }
                if self.caps.eightbitmime {
                    lines.push("8BITMIME".into());
                }
                if self.caps.starttls && !self.tls {
                    lines.push("STARTTLS".into());
                }
                if self.caps.smtputf8 {
                    lines.push("SMTPUTF8".into());
                }
                lines.push("ENHANCEDSTATUSCODES".into());
                let n = lines.len();
                let mut bytes = Vec::new();
                for (i, l) in lines.iter().enumerate() {
                    let sep = if i + 1 == n { ' ' } else { '-' };
                    bytes.extend_from_slice(format!("250{sep}{l}\r\n").as_bytes());
                }
                self.group_end = Some("EHLO");
                self.outstanding += 1;
                out.push(Act::Send {
                    bytes,
                    replies: 1,
                    slow: false,
                });
                true
            }
            "HELO" => {
                self.reset_txn();
                self.phase = Phase::Ready;
                self.send(
                    out,
                    Fate::Reply {
                        code: 250,
                        enhanced: None,
                        text: self.name.clone(),
                    },
                    Some("HELO"),
                )
            }
            "STARTTLS" => {
                if !self.caps.starttls || self.tls {
                    return self.send(out, Fate::ok(502, "5.5.1", "STARTTLS not available"), None);
                }
                if self.phase != Phase::Ready {
                    return self.send(out, Fate::ok(503, "5.5.1", "EHLO first"), None);
                }
                self.phase = Phase::AwaitTls;
                self.send(
                    out,
                    Fate::ok(220, "2.0.0", "Ready to start TLS"),
                    Some("STARTTLS"),
                )
            }
            "MAIL" => {
                if self.phase != Phase::Ready {
                    return self.send(out, Fate::ok(503, "5.5.1", "Bad sequence: MAIL"), None);
                }
                let Some((from, _params)) = path_arg(&line[10..]) else {
                    return self.send(
                        out,
                        Fate::ok(501, "5.5.4", "Syntax: MAIL FROM:<address>"),
                        None,
                    );
                };
                out.push(Act::MailSeen(from.clone()));
                let f = fates.mail(&from);
                let ok = Self::positive(&f).is_some_and(|c| c / 100 == 2);
                if ok {
                    self.phase = Phase::Mail;
                    self.mail_from = Some(from);
                    self.rcpts_ok.clear();
                    self.transactions += 1;
                }
                self.send(out, f, None)
            }
            "RCPT" => {
                if self.phase != Phase::Mail {
                    return self.send(out, Fate::ok(503, "5.5.1", "Bad sequence: need MAIL"), None);
                }
                let Some((to, _)) = path_arg(&line[8..]) else {
                    return self.send(
                        out,
                        Fate::ok(501, "5.5.4", "Syntax: RCPT TO:<address>"),
                        None,
                    );
                };
                out.push(Act::RcptSeen(to.clone()));
                let f = fates.rcpt(&to);
                if Self::positive(&f).is_some_and(|c| c / 100 == 2) {
                    self.rcpts_ok.push(to);
                }
                self.send(out, f, None)
            }
            "DATA" => {
                if self.phase != Phase::Mail {
                    return self.send(
                        out,
                        Fate::ok(503, "5.5.1", "Bad sequence: need RCPT"),
                        Some("DATA"),
                    );
                }
                if self.rcpts_ok.is_empty() {
                    return self.send(
                        out,
                        Fate::ok(554, "5.5.1", "No valid recipients"),
                        Some("DATA"),
                    );
                }
                let f = fates.data();
                if Self::positive(&f) == Some(354) {
                    self.phase = Phase::Body;
                }
                self.send(out, f, Some("DATA"))
            }
            "RSET" => {
                self.reset_txn();
                if matches!(self.phase, Phase::Mail | Phase::Body) {
                    self.phase = Phase::Ready;
                }
                self.send(out, Fate::ok(250, "2.0.0", "Reset"), None)
            }
            "NOOP" => self.send(out, Fate::ok(250, "2.0.0", "OK"), None),
            "QUIT" => {
                self.phase = Phase::Quit;
                self.send(out, Fate::ok(221, "2.0.0", "Bye"), Some("QUIT"));
                true
            }
            _ => {
                out.push(Act::Violation(format!(
                    "unknown command {:?}",
                    line.chars().take(40).collect::<String>()
                )));
                self.send(out, Fate::ok(500, "5.5.2", "Command unrecognized"), None)
            }
        }
    }

    /// The message body arrived (the spool bytes and the final `.\r\n`).
    pub fn body(&mut self, fates: &mut dyn Fates) -> Vec<Act> {
        let mut out = Vec::new();
        if self.phase != Phase::Body {
            out.push(Act::Violation(format!(
                "message body sent in phase {:?}, without a 354",
                self.phase
            )));
            return out;
        }
        if self.outstanding > 0 {
            out.push(Act::Violation(
                "message body sent before the 354 reply was read".into(),
            ));
        }
        let f = fates.end_of_data();
        let accepted = Self::positive(&f).is_some_and(|c| c / 100 == 2);
        let rcpts = std::mem::take(&mut self.rcpts_ok);
        self.mail_from = None;
        self.phase = Phase::Ready;
        if accepted {
            out.push(Act::Accepted(rcpts));
        }
        self.send(&mut out, f, None);
        out
    }

    /// STARTTLS was started by the client: must be right after our 220.
    pub fn start_tls_ok(&self) -> Result<(), String> {
        if self.phase != Phase::AwaitTls {
            return Err(format!("StartTls in phase {:?}", self.phase));
        }
        if self.outstanding > 0 {
            return Err("StartTls before the 220 reply was read".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct AllOk {
        rcpt_fail: &'static str,
    }
    impl Fates for AllOk {
        fn greeting(&mut self) -> Fate {
            Fate::ok(220, "2.0.0", "mx ESMTP")
        }
        fn mail(&mut self, _: &str) -> Fate {
            Fate::ok(250, "2.1.0", "OK")
        }
        fn rcpt(&mut self, to: &str) -> Fate {
            if to == self.rcpt_fail {
                Fate::ok(550, "5.1.1", "User unknown")
            } else {
                Fate::ok(250, "2.1.5", "OK")
            }
        }
        fn data(&mut self) -> Fate {
            Fate::Reply {
                code: 354,
                enhanced: None,
                text: "go ahead".into(),
            }
        }
        fn end_of_data(&mut self) -> Fate {
            Fate::ok(250, "2.0.0", "queued")
        }
    }

    fn sent(acts: &[Act]) -> String {
        acts.iter()
            .filter_map(|a| match a {
                Act::Send { bytes, .. } => Some(String::from_utf8_lossy(bytes).into_owned()),
                _ => None,
            })
            .collect()
    }
    fn violations(acts: &[Act]) -> Vec<String> {
        acts.iter()
            .filter_map(|a| match a {
                Act::Violation(v) => Some(v.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn pipelined_group_is_answered_in_order() {
        let mut f = AllOk {
            rcpt_fail: "b@x.net",
        };
        let mut s = ServerSession::new("mx.x.net", Caps::default());
        let g = s.greet(&mut f);
        assert!(sent(&g).starts_with("220 "));
        s.outstanding = 0;
        let e = s.on_bytes(b"EHLO me\r\n", &mut f);
        assert!(sent(&e).contains("250-PIPELINING\r\n"));
        s.outstanding = 0;
        let acts = s.on_bytes(
            b"MAIL FROM:<a@t.com> SIZE=10\r\nRCPT TO:<ok@x.net>\r\nRCPT TO:<b@x.net>\r\nDATA\r\n",
            &mut f,
        );
        assert!(violations(&acts).is_empty(), "{acts:?}");
        assert_eq!(
            sent(&acts),
            "250 2.1.0 OK\r\n250 2.1.5 OK\r\n550 5.1.1 User unknown\r\n354 go ahead\r\n"
        );
        assert_eq!(s.outstanding, 4);
        // The body before the 354 was read is a violation.
        let early = s.body(&mut f);
        assert_eq!(violations(&early).len(), 1);
    }

    #[test]
    fn body_after_354_is_accepted_for_good_recipients() {
        let mut f = AllOk {
            rcpt_fail: "b@x.net",
        };
        let mut s = ServerSession::new("mx", Caps::default());
        s.greet(&mut f);
        s.outstanding = 0;
        s.on_bytes(b"EHLO me\r\n", &mut f);
        s.outstanding = 0;
        s.on_bytes(
            b"MAIL FROM:<a@t.com>\r\nRCPT TO:<ok@x.net>\r\nRCPT TO:<b@x.net>\r\nDATA\r\n",
            &mut f,
        );
        s.outstanding = 0;
        let acts = s.body(&mut f);
        assert_eq!(acts[0], Act::Accepted(vec!["ok@x.net".to_string()]));
        assert_eq!(sent(&acts), "250 2.0.0 queued\r\n");
        assert_eq!(s.phase, Phase::Ready);
    }

    #[test]
    fn pipelining_without_the_extension_and_split_lines() {
        let mut f = AllOk { rcpt_fail: "" };
        let caps = Caps {
            pipelining: false,
            ..Caps::default()
        };
        let mut s = ServerSession::new("mx", caps);
        s.greet(&mut f);
        s.outstanding = 0;
        // A command split across two writes is one command.
        assert!(s.on_bytes(b"EH", &mut f).is_empty());
        let e = s.on_bytes(b"LO me\r\n", &mut f);
        assert!(!sent(&e).contains("PIPELINING"));
        s.outstanding = 0;
        let acts = s.on_bytes(b"MAIL FROM:<a@t.com>\r\nRCPT TO:<c@x.net>\r\n", &mut f);
        assert_eq!(violations(&acts).len(), 1, "{acts:?}");
        // Commands after EHLO before its reply are a violation even with PIPELINING.
        let mut s = ServerSession::new("mx", Caps::default());
        s.greet(&mut f);
        s.outstanding = 0;
        let acts = s.on_bytes(b"EHLO me\r\nMAIL FROM:<a@t.com>\r\n", &mut f);
        assert_eq!(violations(&acts).len(), 1, "{acts:?}");
        // Bare LF.
        let acts = s.on_bytes(b"NOOP\n", &mut f);
        assert!(violations(&acts).iter().any(|v| v.contains("bare LF")));
    }

    #[test]
    fn starttls_and_ehlo_fallback() {
        let mut f = AllOk { rcpt_fail: "" };
        let caps = Caps {
            starttls: true,
            ..Caps::default()
        };
        let mut s = ServerSession::new("mx", caps);
        s.greet(&mut f);
        s.outstanding = 0;
        assert!(sent(&s.on_bytes(b"EHLO me\r\n", &mut f)).contains("STARTTLS"));
        s.outstanding = 0;
        assert!(sent(&s.on_bytes(b"STARTTLS\r\n", &mut f)).starts_with("220"));
        assert!(s.start_tls_ok().is_err(), "220 not read yet");
        s.outstanding = 0;
        assert!(s.start_tls_ok().is_ok());
        s.tls_established();
        assert!(!sent(&s.on_bytes(b"EHLO me\r\n", &mut f)).contains("STARTTLS"));

        let caps = Caps {
            ehlo_refused: true,
            ..Caps::default()
        };
        let mut s = ServerSession::new("mx", caps);
        s.greet(&mut f);
        s.outstanding = 0;
        assert!(sent(&s.on_bytes(b"EHLO me\r\n", &mut f)).starts_with("502"));
        s.outstanding = 0;
        assert!(sent(&s.on_bytes(b"HELO me\r\n", &mut f)).starts_with("250 mx"));
        assert_eq!(s.phase, Phase::Ready);
    }

    #[test]
    fn out_of_sequence_commands_get_503() {
        let mut f = AllOk { rcpt_fail: "" };
        let mut s = ServerSession::new("mx", Caps::default());
        s.greet(&mut f);
        s.outstanding = 0;
        s.on_bytes(b"EHLO me\r\n", &mut f);
        s.outstanding = 0;
        assert!(sent(&s.on_bytes(b"RCPT TO:<a@b.c>\r\n", &mut f)).starts_with("503"));
        s.outstanding = 0;
        assert!(sent(&s.on_bytes(b"DATA\r\n", &mut f)).starts_with("503"));
        assert_eq!(
            path_arg(" <a@b.c> SIZE=5 BODY=8BITMIME"),
            Some(("a@b.c".into(), "SIZE=5 BODY=8BITMIME".into()))
        );
        assert_eq!(path_arg("<>"), Some(("".into(), "".into())));
    }
}

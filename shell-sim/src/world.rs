//! The simulated world's fixed shape for one run: recipient domains with their DNS
//! records and the behaviour of their mail servers, chosen from the run's RNG.

use core::net::{IpAddr, Ipv4Addr};
use core::time::Duration;
use std::collections::HashMap;

use rand::RngExt;
use rand_chacha::ChaCha8Rng;

use outpost_core::Time;

use crate::smtp_server::{Caps, Fate, Fates};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DomainKind {
    /// MX records (preference, host).
    Mx(Vec<(u16, String)>),
    /// No MX: the domain's own A record is the implicit MX (RFC 5321 5.1).
    Implicit,
    /// RFC 7505 null MX: accepts no mail.
    NullMx,
    NxDomain,
}

#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum TlsBehaviour {
    Verified,
    Unverified,
    HandshakeFails,
}

/// How a domain's servers behave in this run. Probabilities are per command.
#[derive(Clone, Debug)]
pub struct Behaviour {
    pub personality: &'static str,
    pub caps: Caps,
    pub tls: TlsBehaviour,
    pub refuse: f64,
    pub blackhole: f64,
    pub greet_421: f64,
    pub greet_554: f64,
    pub mail_451: f64,
    pub mail_550: f64,
    pub data_451: f64,
    pub eod_451: f64,
    pub eod_554: f64,
    pub drop_in_data: f64,
    pub tarpit: f64,
    pub garbage: f64,
    /// Every RCPT gets 451 (recipients can only expire).
    pub always_451: bool,
    /// [start, end): connections refused or greeted with 421.
    pub outages: Vec<(Time, Time)>,
    pub latency_ms: (u64, u64),
    pub dns_fail: f64,
}

impl Behaviour {
    pub fn in_outage(&self, now: Time) -> bool {
        self.outages.iter().any(|(a, b)| *a <= now && now < *b)
    }
    pub fn last_outage_end(&self) -> Time {
        self.outages.iter().map(|o| o.1).max().unwrap_or(Time::ZERO)
    }
}

#[derive(Clone, Debug)]
pub struct Host {
    pub name: String,
    /// Empty: the host name does not resolve (a dangling MX).
    pub ips: Vec<IpAddr>,
}

#[derive(Clone, Debug)]
pub struct Domain {
    pub name: String,
    pub kind: DomainKind,
    pub hosts: Vec<Host>,
    pub b: Behaviour,
}

pub struct Topology {
    pub domains: Vec<Domain>,
    pub by_name: HashMap<String, usize>,
    /// Host name -> (domain, host index).
    pub hosts: HashMap<String, (usize, usize)>,
    pub ips: HashMap<IpAddr, (usize, usize)>,
}

fn pick<T: Copy>(rng: &mut ChaCha8Rng, xs: &[T]) -> T {
    xs[rng.random_range(0..xs.len())]
}

fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        198,
        18 + ((n >> 16) & 1) as u8,
        (n >> 8) as u8,
        n as u8,
    ))
}

/// Chooses `n` domains and their behaviour. `faults` 0 gives a perfect world.
pub fn build(
    rng: &mut ChaCha8Rng,
    n: usize,
    faults: u32,
    start: Time,
    active: Duration,
) -> Topology {
    let f = f64::from(faults.min(3)) / 3.0;
    let mut t = Topology {
        domains: Vec::new(),
        by_name: HashMap::new(),
        hosts: HashMap::new(),
        ips: HashMap::new(),
    };
    let mut next_ip = 1u32;
    for d in 0..n {
        let name = format!("d{d}.net");
        let roll = if faults == 0 {
            0
        } else {
            rng.random_range(0..100)
        };
        let personality = match roll {
            0..=54 => "healthy",
            55..=69 => "flaky",
            70..=77 => "outage",
            78..=82 => "slow",
            83..=86 => "hostile",
            87..=89 => "always-4xx",
            90..=93 => "implicit-mx",
            94..=95 => "null-mx",
            96..=97 => "nxdomain",
            _ => "dangling-mx",
        };
        let kind = match personality {
            "implicit-mx" => DomainKind::Implicit,
            "null-mx" => DomainKind::NullMx,
            "nxdomain" => DomainKind::NxDomain,
            _ => DomainKind::Mx(Vec::new()),
        };
        let mut hosts = Vec::new();
        match &kind {
            DomainKind::Mx(_) => {
                let nh = rng.random_range(1..=3usize);
                for h in 0..nh {
                    let nips = rng.random_range(1..=2u32);
                    let mut ips = Vec::new();
                    if !(personality == "dangling-mx" && h == 0) {
                        for _ in 0..nips {
                            ips.push(ip(next_ip));
                            next_ip += 1;
                        }
                    }
                    hosts.push(Host {
                        name: format!("mx{h}.{name}"),
                        ips,
                    });
                }
            }
            DomainKind::Implicit => {
                hosts.push(Host {
                    name: name.clone(),
                    ips: vec![ip(next_ip)],
                });
                next_ip += 1;
            }
            _ => {}
        }
        let kind = match kind {
            DomainKind::Mx(_) => DomainKind::Mx(
                hosts
                    .iter()
                    .enumerate()
                    .map(|(i, h)| {
                        (
                            (i as u16 + 1) * 10 * u16::from(rng.random_bool(0.7)) + 5,
                            h.name.clone(),
                        )
                    })
                    .collect(),
            ),
            k => k,
        };
        let caps = Caps {
            pipelining: rng.random_bool(0.8),
            starttls: rng.random_bool(0.6),
            smtputf8: rng.random_bool(0.8),
            eightbitmime: rng.random_bool(0.9),
            size: if rng.random_bool(0.8) {
                Some(50 << 20)
            } else {
                None
            },
            ehlo_refused: faults > 0 && rng.random_bool(0.05),
        };
        let tls = if faults == 0 {
            TlsBehaviour::Verified
        } else {
            pick(
                rng,
                &[
                    TlsBehaviour::Verified,
                    TlsBehaviour::Verified,
                    TlsBehaviour::Unverified,
                    TlsBehaviour::HandshakeFails,
                ],
            )
        };
        let scale = match personality {
            "healthy" => 0.1 * f,
            "flaky" | "outage" => f,
            "hostile" | "slow" => f,
            _ => 0.3 * f,
        };
        let mut b = Behaviour {
            personality,
            caps,
            tls,
            refuse: 0.03 * scale,
            blackhole: 0.01 * scale,
            greet_421: 0.05 * scale,
            greet_554: 0.005 * scale,
            mail_451: 0.03 * scale,
            mail_550: if personality == "hostile" {
                0.2
            } else {
                0.002 * scale
            },
            data_451: 0.03 * scale,
            eod_451: 0.04 * scale,
            eod_554: if personality == "hostile" {
                0.2
            } else {
                0.005 * scale
            },
            drop_in_data: 0.03 * scale,
            tarpit: if personality == "slow" {
                0.3
            } else {
                0.005 * scale
            },
            garbage: 0.01 * scale,
            always_451: personality == "always-4xx",
            outages: Vec::new(),
            latency_ms: if personality == "slow" {
                (200, 3000)
            } else {
                (1, 80)
            },
            dns_fail: 0.02 * scale,
        };
        if personality == "outage" || (faults > 0 && rng.random_bool(0.1)) {
            let k = rng.random_range(1..=2);
            for _ in 0..k {
                let from = start.plus(Duration::from_millis(
                    rng.random_range(0..active.as_millis().max(1) as u64),
                ));
                let len = Duration::from_secs(rng.random_range(60..6 * 3600));
                b.outages.push((from, from.plus(len)));
            }
        }
        let di = t.domains.len();
        t.by_name.insert(name.clone(), di);
        for (hi, h) in hosts.iter().enumerate() {
            t.hosts.insert(h.name.clone(), (di, hi));
            for a in &h.ips {
                t.ips.insert(*a, (di, hi));
            }
        }
        t.domains.push(Domain {
            name,
            kind,
            hosts,
            b,
        });
    }
    t
}

/// What a mailbox does, from a hash of the address (stable across retries in one run).
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Mailbox {
    Exists,
    /// 550 5.1.1 user unknown: bounce and suppress.
    Unknown,
    /// 550 5.7.1 with a user-unknown text (misleading code).
    UnknownMisleading,
    /// 451 4.7.1 for the first attempts.
    Greylisted,
    /// 452 4.2.2.
    FullTemporary,
    /// 552 5.2.2.
    FullPermanent,
    /// 551 5.1.6.
    Moved,
    /// 550 5.7.1 policy.
    Policy,
}

pub fn fnv(salt: u64, s: &str) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64 ^ salt;
    for b in s.bytes() {
        h ^= u64::from(b.to_ascii_lowercase());
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

pub fn mailbox(salt: u64, address: &str, faults: u32) -> Mailbox {
    if faults == 0 {
        return Mailbox::Exists;
    }
    match fnv(salt, address) % 100 {
        0..=71 => Mailbox::Exists,
        72..=79 => Mailbox::Unknown,
        80..=81 => Mailbox::UnknownMisleading,
        82..=86 => Mailbox::Greylisted,
        87..=89 => Mailbox::FullTemporary,
        90..=91 => Mailbox::FullPermanent,
        92..=93 => Mailbox::Moved,
        94..=95 => Mailbox::Policy,
        _ => Mailbox::Exists,
    }
}

/// The world's decisions for one server step.
pub struct WorldFates<'a> {
    pub rng: &'a mut ChaCha8Rng,
    pub b: &'a Behaviour,
    pub now: Time,
    pub salt: u64,
    pub faults_level: u32,
    pub greylist: &'a mut HashMap<String, u32>,
    /// Faults injected (for the summary).
    pub injected: u64,
}

impl WorldFates<'_> {
    fn roll(&mut self, p: f64) -> bool {
        let hit = p > 0.0 && self.rng.random_bool(p.min(1.0));
        if hit {
            self.injected += 1;
        }
        hit
    }
    fn positive(&mut self, code: u16, enhanced: &'static str, text: &str) -> Fate {
        if self.roll(self.b.tarpit) {
            Fate::Slow {
                code,
                enhanced: Some(enhanced),
                text: text.into(),
            }
        } else {
            Fate::ok(code, enhanced, text)
        }
    }
}

impl Fates for WorldFates<'_> {
    fn greeting(&mut self) -> Fate {
        if self.b.in_outage(self.now) {
            self.injected += 1;
            return Fate::ok(421, "4.3.2", "Service not available, closing channel");
        }
        if self.roll(self.b.greet_421) {
            return Fate::ok(421, "4.7.0", "Too many connections, try later");
        }
        if self.roll(self.b.greet_554) {
            return Fate::Reply {
                code: 554,
                enhanced: None,
                text: "No SMTP service here".into(),
            };
        }
        if self.roll(self.b.garbage) {
            return Fate::Garbage;
        }
        if self.roll(self.b.tarpit) {
            return Fate::Slow {
                code: 220,
                enhanced: None,
                text: "slow ESMTP".into(),
            };
        }
        Fate::Reply {
            code: 220,
            enhanced: None,
            text: "mx ESMTP sim".into(),
        }
    }

    fn mail(&mut self, _from: &str) -> Fate {
        if self.roll(self.b.mail_451) {
            return Fate::ok(451, "4.3.0", "Temporary local problem, try later");
        }
        if self.roll(self.b.mail_550) {
            return Fate::ok(550, "5.7.1", "Sender address rejected: access denied");
        }
        if self.roll(self.b.garbage) {
            return Fate::Garbage;
        }
        self.positive(250, "2.1.0", "Sender OK")
    }

    fn rcpt(&mut self, to: &str) -> Fate {
        if self.b.always_451 {
            return Fate::ok(451, "4.3.0", "Mailbox temporarily unavailable");
        }
        match mailbox(self.salt, to, self.faults_level) {
            Mailbox::Exists => self.positive(250, "2.1.5", "Recipient OK"),
            Mailbox::Unknown => Fate::ok(550, "5.1.1", "Recipient address rejected: User unknown"),
            Mailbox::UnknownMisleading => Fate::ok(550, "5.7.1", "No such user here"),
            Mailbox::Greylisted => {
                let n = self.greylist.entry(to.to_ascii_lowercase()).or_insert(0);
                *n += 1;
                if *n <= 2 {
                    Fate::ok(451, "4.7.1", "Greylisted, please try again later")
                } else {
                    Fate::ok(250, "2.1.5", "Recipient OK")
                }
            }
            Mailbox::FullTemporary => Fate::ok(452, "4.2.2", "Mailbox full"),
            Mailbox::FullPermanent => Fate::ok(552, "5.2.2", "Mailbox full, quota exceeded"),
            Mailbox::Moved => Fate::ok(551, "5.1.6", "User has moved; please try elsewhere"),
            Mailbox::Policy => Fate::ok(550, "5.7.1", "Message refused by local policy"),
        }
    }

    fn data(&mut self) -> Fate {
        if self.roll(self.b.data_451) {
            return Fate::ok(451, "4.3.0", "Requested action aborted: local error");
        }
        Fate::Reply {
            code: 354,
            enhanced: None,
            text: "End data with <CR><LF>.<CR><LF>".into(),
        }
    }

    fn end_of_data(&mut self) -> Fate {
        if self.roll(self.b.drop_in_data) {
            return Fate::Drop;
        }
        if self.roll(self.b.eod_451) {
            return Fate::ok(451, "4.3.0", "Temporary failure, try again");
        }
        if self.roll(self.b.eod_554) {
            return Fate::ok(554, "5.7.1", "Message rejected as spam");
        }
        self.positive(250, "2.0.0", "Ok: queued")
    }
}

/// How a webhook endpoint answers.
#[derive(Clone, Debug)]
pub struct HookBehaviour {
    pub ok: f64,
    pub timeout: f64,
    /// Always fails (5xx): deliveries must end `failed` after their retries.
    pub dead: bool,
    pub outages: Vec<(Time, Time)>,
}

pub fn hook_behaviour(rng: &mut ChaCha8Rng, faults: u32, start: Time) -> HookBehaviour {
    if faults == 0 {
        return HookBehaviour {
            ok: 1.0,
            timeout: 0.0,
            dead: false,
            outages: vec![],
        };
    }
    let dead = rng.random_bool(0.1);
    let mut outages = Vec::new();
    if rng.random_bool(0.3) {
        let from = start.plus(Duration::from_secs(rng.random_range(0..4 * 3600)));
        outages.push((
            from,
            from.plus(Duration::from_secs(rng.random_range(60..12 * 3600))),
        ));
    }
    HookBehaviour {
        ok: pick(rng, &[0.99, 0.9, 0.6]),
        timeout: pick(rng, &[0.0, 0.02, 0.1]),
        dead,
        outages,
    }
}

//! A fast SMTP sink: accepts every message, records when each Message-ID arrived and how
//! many recipients came with it. Pipelining-aware (replies are flushed only when the
//! client has nothing more buffered), one thread per connection.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One message as the sink got it.
#[derive(Debug, Clone)]
pub struct Arrival {
    pub message_id: String,
    pub rcpts: u32,
    pub at: Instant,
}

#[derive(Default)]
pub struct Counters {
    pub messages: AtomicU64,
    pub recipients: AtomicU64,
    pub connections: AtomicU64,
}

pub struct Sink {
    pub port: u16,
    pub counters: Arc<Counters>,
    arrivals: Arc<Mutex<Vec<Arrival>>>,
    stop: Arc<AtomicBool>,
}

impl Sink {
    pub fn start() -> std::io::Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let port = listener.local_addr()?.port();
        let counters = Arc::new(Counters::default());
        let arrivals = Arc::new(Mutex::new(Vec::with_capacity(1 << 16)));
        let stop = Arc::new(AtomicBool::new(false));
        let (c, a, s) = (counters.clone(), arrivals.clone(), stop.clone());
        std::thread::Builder::new()
            .name("sink-accept".into())
            .spawn(move || {
                for stream in listener.incoming() {
                    if s.load(Ordering::Relaxed) {
                        return;
                    }
                    let Ok(stream) = stream else { continue };
                    let (c, a) = (c.clone(), a.clone());
                    c.connections.fetch_add(1, Ordering::Relaxed);
                    let _ = std::thread::Builder::new()
                        .name("sink-conn".into())
                        .spawn(move || {
                            let _ = session(stream, &c, &a);
                        });
                }
            })?;
        Ok(Sink {
            port,
            counters,
            arrivals,
            stop,
        })
    }

    pub fn messages(&self) -> u64 {
        self.counters.messages.load(Ordering::Relaxed)
    }

    /// Takes the arrivals recorded so far.
    pub fn take_arrivals(&self) -> Vec<Arrival> {
        std::mem::take(&mut *self.arrivals.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Waits until `messages` have arrived, or `timeout` passes; returns whether they did.
    pub fn wait_for(&self, messages: u64, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while self.messages() < messages {
            if Instant::now() >= end {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the accept loop so it sees the flag.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
    }
}

fn session(
    stream: TcpStream,
    counters: &Counters,
    arrivals: &Mutex<Vec<Arrival>>,
) -> std::io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(300)))?;
    let _ = stream.set_nodelay(true);
    let mut w = BufWriter::with_capacity(4096, stream.try_clone()?);
    let mut r = BufReader::with_capacity(64 * 1024, stream);
    w.write_all(b"220 sink.bench ESMTP\r\n")?;
    w.flush()?;
    let mut rcpts = 0u32;
    let mut line = Vec::with_capacity(1024);
    loop {
        line.clear();
        if r.read_until(b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let verb: Vec<u8> = line
            .iter()
            .take(4)
            .map(|b| b.to_ascii_uppercase())
            .collect();
        match &verb[..] {
            b"EHLO" => w.write_all(
                b"250-sink.bench\r\n250-PIPELINING\r\n250-8BITMIME\r\n250 SIZE 100000000\r\n",
            )?,
            b"HELO" => w.write_all(b"250 sink.bench\r\n")?,
            b"MAIL" => {
                rcpts = 0;
                w.write_all(b"250 2.1.0 ok\r\n")?;
            }
            b"RCPT" => {
                rcpts += 1;
                w.write_all(b"250 2.1.5 ok\r\n")?;
            }
            b"DATA" => {
                w.write_all(b"354 go ahead\r\n")?;
                w.flush()?;
                let message_id = read_data(&mut r, &mut line)?;
                let at = Instant::now();
                counters.messages.fetch_add(1, Ordering::Relaxed);
                counters
                    .recipients
                    .fetch_add(u64::from(rcpts), Ordering::Relaxed);
                arrivals
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(Arrival {
                        message_id,
                        rcpts,
                        at,
                    });
                rcpts = 0;
                w.write_all(b"250 2.0.0 queued\r\n")?;
            }
            b"QUIT" => {
                w.write_all(b"221 2.0.0 bye\r\n")?;
                w.flush()?;
                return Ok(());
            }
            _ => w.write_all(b"250 ok\r\n")?,
        }
        // Pipelining: answer a whole group of commands at once.
        if r.buffer().is_empty() {
            w.flush()?;
        }
    }
}

/// Reads DATA up to the lone dot; returns the Message-ID header's value (`<...>`), or "".
fn read_data(r: &mut BufReader<TcpStream>, line: &mut Vec<u8>) -> std::io::Result<String> {
    let mut in_headers = true;
    let mut message_id = String::new();
    loop {
        line.clear();
        if r.read_until(b'\n', line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        if line == b".\r\n" || line == b".\n" {
            return Ok(message_id);
        }
        if in_headers {
            if line == b"\r\n" || line == b"\n" {
                in_headers = false;
            } else if line.len() > 11 && line[..11].eq_ignore_ascii_case(b"message-id:") {
                message_id = String::from_utf8_lossy(&line[11..]).trim().to_string();
            }
        }
    }
}

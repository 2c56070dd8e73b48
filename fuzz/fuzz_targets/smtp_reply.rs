//! `parse_reply` / `ReplyReader` over arbitrary bytes fed in arbitrary chunks.
//!
//! Checks: no panic; the reader's buffer stays within `MAX_REPLY_BYTES + MAX_LINE_BYTES`
//! (in fact within `MAX_REPLY_BYTES`); every framed reply respects the documented limits
//! (bytes, lines, line length, code 2xx..5xx, same code on every line); the sanitized text
//! is at most 1024 bytes without control characters; the enhanced code is
//! `class.subject.detail`; chunking does not change what is framed (differential against
//! one-shot feeding, up to the first error); `parse_reply` agrees with the reader.
#![no_main]

use libfuzzer_sys::fuzz_target;
use outpost_core::smtp::reply::{
    MAX_LINE_BYTES, MAX_REPLY_BYTES, MAX_REPLY_LINES, RawReply, ReplyReader, parse_reply,
};

/// Framed replies (code, raw bytes) until the first error or the end of the input.
fn frame(chunks: &[&[u8]]) -> (Vec<(u16, Vec<u8>)>, bool) {
    let mut reader = ReplyReader::new();
    let mut out = Vec::new();
    for chunk in chunks {
        let mut input: &[u8] = chunk;
        loop {
            let before = input.len();
            match reader.read(&mut input) {
                Ok(Some(raw)) => {
                    check_raw(&raw);
                    out.push((raw.code, raw.bytes().to_vec()));
                    assert!(input.len() < before, "a reply consumed nothing");
                }
                Ok(None) => {
                    assert!(input.is_empty(), "Ok(None) must consume all input");
                    break;
                }
                Err(e) => {
                    assert!(input.is_empty(), "an error must consume the input");
                    assert_eq!(reader.buffered(), 0, "an error must empty the reader");
                    assert!(
                        !e.0.chars().any(char::is_control),
                        "control char in error {e:?}"
                    );
                    return (out, true);
                }
            }
            assert!(
                reader.buffered() <= MAX_REPLY_BYTES,
                "buffered {} > {MAX_REPLY_BYTES}",
                reader.buffered()
            );
            if input.is_empty() {
                break;
            }
        }
        assert!(reader.buffered() <= MAX_REPLY_BYTES + MAX_LINE_BYTES);
    }
    (out, false)
}

fn check_raw(raw: &RawReply) {
    assert!((200..600).contains(&raw.code), "code {}", raw.code);
    assert!(raw.bytes().len() <= MAX_REPLY_BYTES);
    assert!(raw.bytes().ends_with(b"\n"));
    let mut n = 0;
    for line in raw.lines() {
        n += 1;
        assert!(
            line.len() + 2 <= MAX_LINE_BYTES + 1,
            "line of {}",
            line.len()
        );
        assert_eq!(
            &line[..3],
            raw.code.to_string().as_bytes(),
            "every line carries the reply's code"
        );
        assert!(!line.contains(&b'\r') && !line.contains(&b'\n') && !line.contains(&0));
    }
    assert!(n >= 1 && n <= MAX_REPLY_LINES, "{n} lines");
    check_reply(&raw.reply(), raw.code);
}

fn check_reply(r: &outpost_core::smtp::Reply, code: u16) {
    assert_eq!(r.code, code);
    assert!(r.text.len() <= 1024, "text of {} bytes", r.text.len());
    assert!(
        !r.text.chars().any(char::is_control),
        "control char in {:?}",
        r.text
    );
    assert_eq!(r.text.trim(), r.text, "text is trimmed");
    if let Some(e) = &r.enhanced {
        let parts: Vec<&str> = e.split('.').collect();
        assert_eq!(parts.len(), 3, "enhanced {e:?}");
        assert!(matches!(parts[0], "2" | "4" | "5"), "enhanced {e:?}");
        for p in &parts[1..] {
            assert!(!p.is_empty() && p.len() <= 3 && p.bytes().all(|b| b.is_ascii_digit()));
        }
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks a chunk size pattern; the rest is the server's byte stream.
    let Some((&pattern, stream)) = data.split_first() else {
        return;
    };
    let mut chunks: Vec<&[u8]> = Vec::new();
    let mut rest = stream;
    let mut i = 0usize;
    while !rest.is_empty() {
        let size = match pattern % 4 {
            0 => rest.len(),
            1 => 1,
            2 => 1 + (usize::from(pattern) * 7 + i * 13) % 17,
            _ => 1 + (usize::from(rest[0]) % 64),
        };
        let size = size.min(rest.len());
        let (head, tail) = rest.split_at(size);
        chunks.push(head);
        rest = tail;
        i += 1;
    }
    let (chunked, chunked_err) = frame(&chunks);
    let (whole, whole_err) = frame(&[stream]);
    // Chunking never changes what is framed (before the first error).
    let n = chunked.len().min(whole.len());
    assert_eq!(chunked[..n], whole[..n], "chunking changed the framing");
    if !chunked_err && !whole_err {
        assert_eq!(chunked, whole);
    }
    assert_eq!(
        chunked_err, whole_err,
        "chunking changed whether the stream is valid"
    );

    match parse_reply(stream) {
        Ok(r) => {
            assert_eq!(
                whole.len(),
                1,
                "parse_reply accepted what the reader did not frame as one reply"
            );
            check_reply(&r, whole[0].0);
        }
        Err(e) => assert!(!e.0.chars().any(char::is_control)),
    }
});

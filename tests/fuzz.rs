//! Property tests for every parser that reads bytes a client or a gateway
//! chose: the request head, the absolute-form request, the first
//! generation's chunks, protocol v2 messages and chunked HTTP bodies. Any
//! input must give a value or an error, never a panic; what parses must
//! round-trip (a CONNECT rebuilt from its authority parses to the same
//! authority, an absolute-form request to the same authority and path).
//!
//! Inputs come from a seeded generator (SplitMix64): half grammar-shaped
//! (fragments of real heads and frames, with hostile bytes mixed in), half
//! raw bytes. `make test` runs a few thousand cases per target; `make fuzz`
//! sets `PROPTEST_CASES` (or `FUZZ_CASES`) much higher, and `FUZZ_SEED`
//! replays another sequence. A failure names the case's seed and input.

use std::io::BufReader;
use std::panic::{AssertUnwindSafe, catch_unwind};

use ccr_relay::gateway::chunk;
use ccr_relay::gateway::message_v2;
use ccr_relay::http::body::{self, BodyCopier};
use ccr_relay::http::http1::BodyFraming;
use ccr_relay::http::request_head::{
    Authority, ProxyRequest, head_end, parse_head, read_head_bytes,
};

/// Cases per target when no variable says otherwise: a few seconds in debug.
const DEFAULT_CASES: u64 = 5000;

/// SplitMix64: small, seedable, good enough to spread inputs.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }

    fn chance(&mut self, percent: u64) -> bool {
        self.next() % 100 < percent
    }

    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }

    fn bytes(&mut self, max: usize) -> Vec<u8> {
        let len = self.below(max + 1);
        (0..len).map(|_| self.next() as u8).collect()
    }
}

fn cases() -> u64 {
    ["FUZZ_CASES", "PROPTEST_CASES"]
        .iter()
        .find_map(|name| std::env::var(name).ok()?.trim().parse().ok())
        .unwrap_or(DEFAULT_CASES)
}

fn base_seed() -> u64 {
    std::env::var("FUZZ_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0x00C0_FFEE)
}

/// Runs `check` on `cases()` inputs from `generate`; a panic (in the
/// parser or in a failed property) is reported with the seed and input.
/// `check` says whether the input was accepted; at least `min_accepted`
/// percent must be, so the round-trip properties are really exercised.
fn run(
    target: &str,
    min_accepted: u64,
    generate: impl Fn(&mut Rng) -> Vec<u8>,
    check: impl Fn(&[u8]) -> bool,
) {
    let mut accepted = 0u64;
    let base = base_seed()
        ^ target
            .bytes()
            .fold(0u64, |h, b| h.rotate_left(5) ^ u64::from(b));
    for case in 0..cases() {
        let seed = base.wrapping_add(case);
        let input = generate(&mut Rng(seed));
        match catch_unwind(AssertUnwindSafe(|| check(&input))) {
            Ok(true) => accepted += 1,
            Ok(false) => {}
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                panic!(
                    "{target}: case {case} (seed {seed}) failed: {why}\ninput: \"{}\"",
                    input.escape_ascii()
                );
            }
        }
    }
    let total = cases();
    assert!(
        accepted * 100 >= min_accepted * total,
        "{target}: only {accepted} of {total} inputs were accepted (want {min_accepted}%)"
    );
}

/// Pieces of request heads, the hostile ones included.
const HEAD_PIECES: &[&[u8]] = &[
    b"CONNECT ",
    b"GET ",
    b"POST ",
    b"connect ",
    b"BREW ",
    b" HTTP/1.1",
    b" HTTP/1.0",
    b" HTTP/2.0",
    b"\r\n",
    b"\n",
    b"\r",
    b"\0",
    b" ",
    b"\t",
    b":",
    b"::",
    b"@",
    b"%0d%0a",
    b"%00",
    b"%",
    b"[",
    b"]",
    b"[::1]",
    b"[::ffff:127.0.0.1]",
    b"[fe80::1%25eth0]",
    b"127.0.0.1",
    b"0x7f.1",
    b"2130706433",
    b"example.com",
    b"EXAMPLE.COM.",
    b"a-b_c",
    b"-bad",
    b"..",
    b".",
    b"443",
    b"0",
    b"65535",
    b"65536",
    b"99999999999",
    b"http://",
    b"HTTP://",
    b"https://",
    b"user:pass@",
    b"/",
    b"/path?q=1",
    b"?",
    b"#frag",
    b"Host: ",
    b"Proxy-Authorization: ",
    b"X-Agent-Proxy-Client-Process: ",
    b"Content-Length: ",
    b"Transfer-Encoding: chunked",
    b"\r\n\r\n",
    b"\xff",
    b"\xc3\xa9",
    b"\x7f",
];

fn head_like(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(15) {
        return rng.bytes(200);
    }
    let mut out = Vec::new();
    let pieces = 1 + rng.below(24);
    for _ in 0..pieces {
        if rng.chance(10) {
            out.push(rng.next() as u8);
        } else {
            out.extend_from_slice(rng.pick(HEAD_PIECES));
        }
    }
    if rng.chance(70) {
        out.extend_from_slice(b"\r\n\r\n");
    }
    out
}

/// A CONNECT head whose target is built from authority-shaped pieces,
/// so that many of them parse.
fn connect_like(rng: &mut Rng) -> Vec<u8> {
    const HOSTS: &[&str] = &[
        "origin.test",
        "A.B.C",
        "x",
        "127.0.0.1",
        "[::1]",
        "[2001:db8::1]",
        "[::ffff:10.0.0.1]",
        "a_b-c.d.",
        "0177.0.0.1",
        "1.2.3",
        "h%41st",
        "u@h",
        "[::1",
        "",
    ];
    const PORTS: &[&str] = &[
        ":443", ":1", ":65535", ":0", ":65536", ":", "", ":080", ":4x3",
    ];
    let mut target = format!("{}{}", rng.pick(HOSTS), rng.pick(PORTS));
    if rng.chance(10) {
        let at = rng.below(target.len() + 1);
        target.insert(at, rng.pick(&['\r', '\n', '\0', ' ', '%', '@', '/']));
    }
    let mut head = format!("CONNECT {target} HTTP/1.1\r\n").into_bytes();
    if rng.chance(50) {
        head.extend_from_slice(format!("Host: {target}\r\n").as_bytes());
    }
    head.extend_from_slice(b"\r\n");
    head
}

fn absolute_like(rng: &mut Rng) -> Vec<u8> {
    const METHODS: &[&str] = &["GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"];
    const AUTHS: &[&str] = &[
        "origin.test",
        "origin.test:8080",
        "ORIGIN.test:80",
        "[::1]:81",
        "10.0.0.1",
        "u:p@origin.test",
        "origin.test:",
        "",
    ];
    const PATHS: &[&str] = &["", "/", "/a/b", "?q", "/x?y#z", "#f", "/%2e%2e/", "/a b"];
    let scheme = if rng.chance(80) { "http://" } else { "HtTp://" };
    let head = format!(
        "{} {scheme}{}{} HTTP/1.1\r\n\r\n",
        rng.pick(METHODS),
        rng.pick(AUTHS),
        rng.pick(PATHS)
    );
    let mut head = head.into_bytes();
    if rng.chance(10) {
        let at = rng.below(head.len());
        head[at] = rng.next() as u8;
    }
    head
}

/// A target as the relay would send it on: nothing that could end a line
/// or a field.
fn assert_clean(text: &str) {
    assert!(
        text.bytes().all(|b| b.is_ascii_graphic()),
        "unsafe byte in {text:?}"
    );
}

/// Every property of one request head: no panic anywhere, and what
/// parses, rebuilt, parses to the same request.
fn check_head(input: &[u8]) -> bool {
    let _ = head_end(input);
    let _ = read_head_bytes(&mut BufReader::with_capacity(7, input), 1024);
    let Ok(head) = parse_head(input) else {
        return false;
    };
    assert_clean(&head.target);
    for (name, value) in &head.headers {
        assert!(
            !name.contains(['\r', '\n', '\0']) && !value.contains(['\r', '\n', '\0']),
            "a header field holds a line break or NUL: {name:?}: {value:?}"
        );
    }
    match ProxyRequest::from_head(&head) {
        Ok(ProxyRequest::Connect(authority)) => {
            let text = authority.to_string();
            assert_clean(&text);
            let rebuilt = format!("CONNECT {text} HTTP/1.1\r\n\r\n");
            let again = parse_head(rebuilt.as_bytes()).expect("a rebuilt CONNECT parses");
            assert_eq!(
                ProxyRequest::from_head(&again).expect("a rebuilt CONNECT is accepted"),
                ProxyRequest::Connect(authority.clone())
            );
            assert_eq!(Authority::parse(&text, None).ok(), Some(authority));
            true
        }
        Ok(ProxyRequest::Forward { authority, path }) => {
            assert!(path.starts_with('/'), "origin form starts with /: {path:?}");
            assert!(!path.contains('#'), "the fragment is dropped: {path:?}");
            assert_clean(&path);
            let rebuilt = format!("{} http://{authority}{path} HTTP/1.1\r\n\r\n", head.method);
            let again = parse_head(rebuilt.as_bytes()).expect("a rebuilt request parses");
            assert_eq!(
                ProxyRequest::from_head(&again).expect("a rebuilt request is accepted"),
                ProxyRequest::Forward { authority, path }
            );
            true
        }
        Err(_) => false,
    }
}

#[test]
fn request_heads_never_panic_and_round_trip() {
    run("head", 0, head_like, check_head);
}

#[test]
fn connect_lines_round_trip() {
    run("connect", 20, connect_like, check_head);
}

#[test]
fn absolute_form_requests_round_trip() {
    run("absolute", 20, absolute_like, check_head);
}

/// A varint as protobuf writes it.
fn varint(mut v: u64, out: &mut Vec<u8>) {
    loop {
        let byte = (v & 0x7F) as u8;
        v >>= 7;
        if v == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn varint_value(rng: &mut Rng, len_hint: usize) -> u64 {
    match rng.below(7) {
        0 | 5 | 6 => len_hint as u64,
        1 => (len_hint as u64)
            .wrapping_add(rng.below(3) as u64)
            .wrapping_sub(1),
        2 => rng.next(),
        3 => u64::MAX,
        _ => rng.below(300) as u64,
    }
}

/// Protobuf-shaped messages: fields with plausible and implausible tags,
/// lengths that fit, overshoot or overflow, overlong varints.
fn message_like(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(20) {
        return rng.bytes(64);
    }
    let mut out = Vec::new();
    for _ in 0..rng.below(2) + rng.below(2) + 1 {
        let field = rng.pick(&[1u64, 1, 1, 2, 3, 0, 15, 1 << 29, 1 << 40]);
        let wire_type = rng.pick(&[0u64, 2, 2, 2, 2, 1, 5, 3, 4, 6, 7]);
        varint((field << 3) | wire_type, &mut out);
        match wire_type {
            0 => varint(varint_value(rng, 4), &mut out),
            1 => out.extend((0..8).map(|_| rng.next() as u8)),
            5 => out.extend((0..4).map(|_| rng.next() as u8)),
            _ => {
                let data = rng.bytes(40);
                varint(varint_value(rng, data.len()), &mut out);
                out.extend_from_slice(&data);
            }
        }
        if rng.chance(5) {
            out.extend_from_slice(&[0xFF; 11]);
        }
    }
    if rng.chance(10) && !out.is_empty() {
        out.truncate(rng.below(out.len()));
    }
    out
}

#[test]
fn v1_chunks_decode_or_fail_and_round_trip() {
    run("chunk", 1, message_like, |input| {
        let Ok(data) = chunk::decode(input) else {
            return false;
        };
        assert!(data.len() <= input.len());
        let encoded = chunk::encode(data);
        assert_eq!(chunk::decode(&encoded), Ok(data), "re-encoded chunk");
        true
    });
}

#[test]
fn v2_messages_decode_or_fail_and_round_trip() {
    run("message_v2", 1, message_like, |input| {
        let Ok(message) = message_v2::decode(input) else {
            return false;
        };
        if let message_v2::ServerMessage::Data(data) = message {
            assert!(data.len() <= input.len());
            let encoded = message_v2::encode_data(data);
            assert_eq!(
                message_v2::decode(&encoded),
                Ok(message_v2::ServerMessage::Data(data)),
                "re-encoded data message"
            );
        }
        true
    });
}

/// Chunked bodies: size lines in hex (huge, signed, with extensions and
/// junk), data that matches its size or not, trailers, bare LFs.
fn chunked_like(rng: &mut Rng) -> Vec<u8> {
    if rng.chance(15) {
        return rng.bytes(120);
    }
    let mut out = Vec::new();
    for _ in 0..rng.below(5) {
        let data = rng.bytes(20);
        let size = match rng.below(8) {
            0 => format!("{:X}", data.len()),
            1 => format!("{:x}", data.len() + 1),
            2 => "ffffffffffffffffff".to_string(),
            3 => format!("-{:x}", data.len()),
            4 => format!("{:x};ext=\"v\"", data.len()),
            5 => format!(" {:x} ", data.len()),
            6 => format!("0x{:x}", data.len()),
            _ => format!("{:x}", data.len()),
        };
        out.extend_from_slice(size.as_bytes());
        out.extend_from_slice(if rng.chance(85) { b"\r\n" } else { b"\n" });
        out.extend_from_slice(&data);
        const ENDS: &[&[u8]] = &[b"\r\n", b"\n", b"", b"xx"];
        out.extend_from_slice(rng.pick(ENDS));
    }
    if rng.chance(80) {
        out.extend_from_slice(b"0\r\n");
        for _ in 0..rng.below(3) {
            const TRAILERS: &[&[u8]] = &[
                b"Trailer-A: x\r\n",
                b"Content-Length: 5\r\n",
                b"bad trailer\r\n",
                b"X: \x00\r\n",
            ];
            out.extend_from_slice(rng.pick(TRAILERS));
        }
        out.extend_from_slice(b"\r\n");
    }
    if rng.chance(10) && !out.is_empty() {
        let at = rng.below(out.len());
        out[at] = rng.next() as u8;
    }
    out
}

#[test]
fn chunked_bodies_decode_or_fail_and_round_trip() {
    run("chunked", 5, chunked_like, |input| {
        let data = body::read_chunked_body(&mut BufReader::with_capacity(5, input), 1 << 16);
        let mut canonical = Vec::new();
        let copied = BodyCopier::new(BodyFraming::Chunked)
            .copy(&mut BufReader::with_capacity(3, input), &mut canonical);
        if let (Ok(data), Ok(_)) = (data, copied) {
            // The canonical re-encoding carries the same data.
            let again = body::read_chunked_body(&mut &canonical[..], 1 << 16)
                .expect("the relay's own chunked encoding parses");
            assert_eq!(again, data);
            return true;
        }
        false
    });
}

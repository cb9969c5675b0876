//! Tests of the reader: requests in every split, and what hyper is handed.

use super::*;
use crate::framing::{MAX_TARGET, PLACEHOLDER};

/// The longest head the tests' readers take.
const LIMIT: usize = 100_000;

/// What a connection's reader made of `wire`, fed in pieces of `step`
/// bytes: the verdicts on the first `requests` requests, the final
/// state, and the bytes hyper was handed.
type Outcome = (Vec<Option<Suspect>>, State, Vec<u8>);

fn read(wire: &[u8], step: usize, requests: usize) -> Outcome {
    let verdicts = Arc::new(Verdicts::default());
    let mut reader = Reader::new(Arc::clone(&verdicts), LIMIT);
    let mut handed = Vec::new();
    for piece in wire.chunks(step) {
        match reader.feed(piece) {
            Fed::Passed => handed.extend_from_slice(piece),
            Fed::Edited {
                released,
                from,
                to,
                refused,
            } => {
                handed.extend_from_slice(&released);
                handed.extend_from_slice(&piece[from..to]);
                if refused {
                    handed.extend_from_slice(PLACEHOLDER);
                }
            }
        }
    }
    let found = (0..requests)
        .map(|_| verdicts.next_request().map(|refused| refused.why))
        .collect();
    (found, reader.state, handed)
}

fn every_step(wire: &[u8], requests: usize) -> Outcome {
    let whole = read(wire, wire.len().max(1), requests);
    for step in 1..wire.len().min(64) {
        assert_eq!(read(wire, step, requests), whole, "in pieces of {step}");
    }
    whole
}

#[test]
fn good_requests_stay_in_step_and_reach_hyper_unchanged() {
    let wire = b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n\
        POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhello\
        POST /b HTTP/1.1\r\nhost: a\r\ntransfer-encoding: Chunked\r\n\r\n\
        5;x=y\r\nhello\r\nA \r\n0123456789\r\n0\r\nX-T: 1\r\n\r\n\
        GET /c HTTP/1.0\r\n\r\n";
    let (verdicts, state, handed) = every_step(wire, 4);
    assert_eq!(verdicts, [None, None, None, None]);
    assert_eq!(state, State::Head);
    assert_eq!(handed, wire);
}

#[test]
fn a_head_in_parts_reaches_hyper_only_whole() {
    let verdicts = Arc::new(Verdicts::default());
    let mut reader = Reader::new(verdicts, LIMIT);
    let first = b"GET / HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHo";
    assert_eq!(
        reader.feed(first),
        edited(Vec::new(), 0, 27, false),
        "the second head is held"
    );
    assert_eq!(reader.feed(b"st: a\r\n"), edited(Vec::new(), 0, 0, false));
    assert_eq!(
        reader.feed(b"\r\nGET"),
        edited(b"GET /b HTTP/1.1\r\nHost: a\r\n\r\n".to_vec(), 2, 2, false),
        "released whole; the third head's start is held"
    );
}

#[test]
fn both_lengths_are_suspect_in_either_order() {
    for wire in [
        &b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 6\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nG"[..],
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 6\r\n\r\n0\r\n\r\nG",
    ] {
        let (verdicts, state, handed) = every_step(wire, 1);
        assert_eq!(
            verdicts,
            [Some(Suspect::Malformed(
                "a request with both Content-Length and Transfer-Encoding"
            ))]
        );
        assert_eq!(state, State::Refused);
        assert_eq!(handed, PLACEHOLDER);
    }
}

#[test]
fn the_suspect_is_found_after_good_requests() {
    let wire = b"POST /a HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc\
        GET /b HTTP/1.1\r\nHost: a\nX: y\r\n\r\n";
    let (verdicts, _, _) = every_step(wire, 3);
    assert_eq!(verdicts[0], None);
    assert!(verdicts[1].is_some());
    assert!(verdicts[2].is_some(), "anything after a suspect is refused");
}

#[test]
fn other_rules() {
    let suspect: [&[u8]; 7] = [
        b"GET / HTTP/1.1\nHost: a\n\n",
        b"GET / HTTP/1.1\r\nHost: a\r\n\n",
        b"GET / HTTP/1.1\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\nTransfer-Encoding: chunked\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
    ];
    for wire in suspect {
        let (verdicts, _, _) = every_step(wire, 1);
        assert!(verdicts[0].is_some(), "{}", String::from_utf8_lossy(wire));
    }
    // HTTP/1.0 may leave Host out.
    assert_eq!(every_step(b"GET / HTTP/1.0\r\n\r\n", 1).0, [None]);
}

#[test]
fn what_hyper_would_refuse_never_reaches_it() {
    let malformed: [&[u8]; 12] = [
        // A TLS handshake on the cleartext port: refused from its first bytes.
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
        b"GARBAGE\r\n\r\n",
        b"GET / HTTP/9.9\r\nHost: a\r\n\r\n",
        b"GET /a{b}|^` HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET a/b HTTP/1.1\r\nHost: a\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nA B: c\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nA: b\r\n c\r\n\r\n",
        b"GET / HTTP/1.1\r\nHost: a\r\nA: b\x01c\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: +5\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: -1\r\n\r\n",
        b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n",
    ];
    for wire in malformed {
        let (verdicts, state, handed) = every_step(wire, 2);
        let text = String::from_utf8_lossy(wire);
        assert!(
            matches!(verdicts[..], [Some(Suspect::Malformed(_)), Some(_)]),
            "{text}: {verdicts:?}"
        );
        assert_eq!(state, State::Refused, "{text}");
        assert_eq!(handed, PLACEHOLDER, "{text}");
    }
    // After good requests, hyper gets them, then the placeholder.
    let good = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n";
    let wire = [
        &good[..],
        b"GET / HTTP/1.1\r\nHost: a\r\nA B: c\r\n\r\nmore",
    ]
    .concat();
    let (verdicts, _, handed) = every_step(&wire, 2);
    assert!(matches!(verdicts[..], [None, Some(Suspect::Malformed(_))]));
    assert_eq!(handed, [&good[..], PLACEHOLDER].concat());
}

#[test]
fn heads_too_large_or_too_long_are_refused_with_their_status() {
    let fields: String = (0..MAX_HEADERS).map(|i| format!("x-{i}: y\r\n")).collect();
    let many = format!("GET / HTTP/1.1\r\nHost: a\r\n{fields}\r\n");
    let (verdicts, state, handed) = read(many.as_bytes(), 7, 1);
    assert_eq!(
        (verdicts[0], state),
        (Some(Suspect::TooManyFields), State::Refused)
    );
    assert_eq!(handed, PLACEHOLDER);

    let endless = [&b"GET / HTTP/1.1\r\nHost: a\r\nX: "[..], &[b'y'; 2 * LIMIT]].concat();
    for step in [1000, 4096, endless.len()] {
        let (verdicts, state, handed) = read(&endless, step, 1);
        assert_eq!(
            (verdicts[0], state),
            (Some(Suspect::TooLarge), State::Refused)
        );
        assert_eq!(handed, PLACEHOLDER);
    }

    // The target limit is hyper's, above the tests' head limit.
    let verdicts = Arc::new(Verdicts::default());
    let mut reader = Reader::new(Arc::clone(&verdicts), 1 << 20);
    let target = "/a".repeat(MAX_TARGET / 2 + 1);
    let long = format!("GET {target} HTTP/1.1\r\nHost: a\r\n\r\n");
    assert_eq!(reader.feed(long.as_bytes()), edited(Vec::new(), 0, 0, true));
    assert_eq!(
        verdicts.next_request().map(|refused| refused.why),
        Some(Suspect::TargetTooLong)
    );
}

#[test]
fn what_hyper_reads_itself_is_left_to_it() {
    let left: [&[u8]; 3] = [
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\n",
    ];
    for wire in left {
        let (verdicts, state, handed) = every_step(wire, 1);
        assert_eq!(verdicts, [None], "{}", String::from_utf8_lossy(wire));
        assert_eq!(state, State::Off, "{}", String::from_utf8_lossy(wire));
        assert_eq!(handed, wire);
    }
}

#[test]
fn large_bodies_are_skipped_not_read() {
    const HEAD: &[u8] = b"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 100000\r\n\r\n";
    let mut wire = HEAD.to_vec();
    // Body bytes that look like a head with both lengths.
    let fake =
        b"GET / HTTP/1.1\r\nHost: a\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n";
    while wire.len() < 100_000 {
        wire.extend_from_slice(fake);
    }
    wire.truncate(HEAD.len() + 100_000);
    wire.extend_from_slice(b"GET / HTTP/1.1\r\nHost: a\r\n\r\n");
    let (verdicts, state, handed) = read(&wire, 4096, 2);
    assert_eq!(verdicts, [None, None]);
    assert_eq!(state, State::Head);
    assert_eq!(handed, wire);
}

#[test]
fn head_ends() {
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n\r\nrest", 0), Some(18));
    assert_eq!(head_end(b"GET / HTTP/1.1\n\nrest", 0), Some(16));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n", 0), None);
}

#[test]
fn a_bare_lf_among_trailer_lines_cuts() {
    let endings: [&[u8]; 4] = [
        b"0\r\nX: a\n\r\n",
        b"0\r\nX: a\n\n",
        b"0\r\n\n",
        b"0\r\nX: a\r\n\n",
    ];
    for ending in endings {
        let mut wire =
            b"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n"
                .to_vec();
        wire.extend_from_slice(ending);
        wire.extend_from_slice(b"GET /next HTTP/1.1\r\nHost: a\r\n\r\n");
        let (_, state, _) = every_step(&wire, 1);
        assert_eq!(state, State::Cut, "{}", String::from_utf8_lossy(ending));
    }
}

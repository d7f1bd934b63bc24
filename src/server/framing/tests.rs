use super::*;

/// Feeds `stream` in pieces of `step` bytes; the flagged request indexes.
fn flagged(stream: &[u8], step: usize) -> Vec<u64> {
    let mut t = Tracker::new(16_384);
    stream.chunks(step).filter_map(|c| t.feed(c)).collect()
}

/// The same answer however the bytes are split across reads.
fn assert_flags(stream: &str, want: &[u64]) {
    for step in [1, 2, 3, 7, 64, stream.len().max(1)] {
        assert_eq!(
            flagged(stream.as_bytes(), step),
            want,
            "step {step}: {stream:?}"
        );
    }
}

const SMUGGLE_CL_FIRST: &str = "POST /x HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n";
const SMUGGLE_TE_FIRST: &str = "POST /x HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\ncontent-LENGTH: 5\r\n\r\n0\r\n\r\n";

#[test]
fn both_headers_are_flagged_in_either_order() {
    assert_flags(SMUGGLE_CL_FIRST, &[0]);
    assert_flags(SMUGGLE_TE_FIRST, &[0]);
    // Bare LF line endings, which hyper also accepts.
    assert_flags(
        "POST /x HTTP/1.1\nContent-Length: 5\nTransfer-Encoding: chunked\n\n0\n\n",
        &[0],
    );
    // Not chunked, or HTTP/1.0: still both headers.
    assert_flags(
        "POST /x HTTP/1.0\r\nContent-Length: 5\r\nTransfer-Encoding: gzip\r\n\r\n",
        &[0],
    );
}

#[test]
fn ordinary_requests_are_not_flagged() {
    assert_flags("GET / HTTP/1.1\r\nHost: a\r\n\r\n", &[]);
    assert_flags(
        "POST / HTTP/1.1\r\nContent-Length: 3\r\n\r\nabcGET / HTTP/1.1\r\n\r\n",
        &[],
    );
    assert_flags(
        "POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n",
        &[],
    );
}

#[test]
fn later_requests_on_a_connection_are_counted() {
    let stream = format!(
        "\r\nGET /a HTTP/1.1\r\n\r\n\
         POST /b HTTP/1.1\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nbody\
         POST /c HTTP/1.1\r\nTransfer-Encoding: gzip, chunked\r\n\r\n\
         4;ext=1\r\nwxyz\r\n0\r\nX-Trailer: t\r\n\r\n\
         {SMUGGLE_CL_FIRST}"
    );
    assert_flags(&stream, &[3]);
}

#[test]
fn heads_inside_bodies_are_not_heads() {
    // A Content-Length body and a chunked body that look like smuggled requests.
    let inner = SMUGGLE_CL_FIRST;
    let stream = format!(
        "POST / HTTP/1.1\r\nContent-Length: {}\r\n\r\n{inner}\
         POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n{:x}\r\n{inner}\r\n0\r\n\r\n\
         GET /last HTTP/1.1\r\n\r\n",
        inner.len(),
        inner.len(),
    );
    assert_flags(&stream, &[]);
    // ...and a real one after them is still found, as the fourth request.
    assert_flags(&format!("{stream}{SMUGGLE_TE_FIRST}"), &[3]);
}

#[test]
fn what_hyper_refuses_or_is_not_http1_stops_the_tracker() {
    // h2c prior knowledge.
    assert_flags(
        &format!("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n{SMUGGLE_CL_FIRST}"),
        &[],
    );
    // Conflicting lengths, a bad chunk size: hyper closes these connections.
    assert_flags(
        &format!(
            "POST / HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n{SMUGGLE_CL_FIRST}"
        ),
        &[],
    );
    assert_flags(
        &format!("POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{SMUGGLE_CL_FIRST}"),
        &[],
    );
    // A head longer than the limit (hyper answers 431).
    let long = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(40_000));
    assert_flags(&format!("{long}{SMUGGLE_CL_FIRST}"), &[]);
}

#[test]
fn content_length_follows_hyper_digits_only() {
    assert_eq!(digits(b"0"), Some(0));
    assert_eq!(digits(b"0012"), Some(12));
    for bad in [
        &b""[..],
        b"+5",
        b"-5",
        b"5,5",
        b"0x10",
        b"99999999999999999999999",
    ] {
        assert_eq!(digits(bad), None, "{:?}", String::from_utf8_lossy(bad));
    }
}

#[test]
fn framing_flags_the_request_by_its_position() {
    let (_io, framing) = sniff((), 16_384);
    framing.ambiguous.store(1, Ordering::Release);
    assert!(!framing.next_request_is_ambiguous());
    assert!(framing.next_request_is_ambiguous());
    assert!(!framing.next_request_is_ambiguous());
}

//! Both flows must give the same bytes and the same accounting however the
//! stream is cut into reads: property tests over random cut points.

use bytes::{Buf, BytesMut};
use pgmux_wire::frame::write_message;
use proptest::prelude::*;

use super::client_flow::{ClientFlow, Statements};
use super::expect::{Expect, Pending};
use super::server_flow::{Observers, ServerFlow};
use crate::params::ParamMap;
use crate::prepared::{ClientStatements, ServerStatements, StatementCache};

fn msg(out: &mut Vec<u8>, tag: u8, body: &[u8]) {
    let mut b = BytesMut::new();
    write_message(&mut b, tag, |m| m.extend_from_slice(body));
    out.extend_from_slice(&b);
}

/// A client batch: Parse s1, Bind s1, Execute, Sync, twice, then a simple
/// query with a large body.
fn client_stream() -> Vec<u8> {
    let mut v = Vec::new();
    for _ in 0..2 {
        msg(&mut v, b'P', b"s1\0select $1::int\0\0\x01\0\0\0\x17");
        msg(&mut v, b'B', b"\0s1\0\0\0\0\x01\0\0\0\x011\0\0");
        msg(&mut v, b'E', b"\0\0\0\0\0");
        msg(&mut v, b'S', b"");
    }
    msg(
        &mut v,
        b'Q',
        &[b"select '".as_slice(), &[b'x'; 3000], b"'\0"].concat(),
    );
    v
}

fn run_client(data: &[u8], cuts: &[usize]) -> (Vec<u8>, u32) {
    let cache = StatementCache::default();
    let mut client = ClientStatements::default();
    let mut server = ServerStatements::default();
    let mut flow = ClientFlow::new(1 << 20);
    let mut expect = Expect::default();
    let mut buf = BytesMut::new();
    let mut sent = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.clamp(at, data.len());
        buf.extend_from_slice(&data[at..c]);
        at = c;
        let st = Statements {
            cache: &cache,
            client: &mut client,
            server: &mut server,
        };
        let batch = flow.process(&buf, &mut expect, Some(st)).unwrap();
        match batch.edited {
            Some(e) => sent.extend_from_slice(&e),
            None => sent.extend_from_slice(&buf[..batch.consumed]),
        }
        buf.advance(batch.consumed);
    }
    assert!(buf.is_empty() && flow.at_boundary());
    (sent, expect.ready_owed())
}

/// Replies to a batch where the first Parse was swallowed-injected:
/// ParseComplete (dropped), BindComplete, DataRow, CommandComplete, Ready.
fn server_stream() -> Vec<u8> {
    let mut v = Vec::new();
    msg(&mut v, b'1', b"");
    msg(&mut v, b'2', b"");
    msg(
        &mut v,
        b'D',
        &[&[0, 1, 0, 0, 0x0b, 0xb8][..], &[b'y'; 3000]].concat(),
    );
    msg(&mut v, b'S', b"TimeZone\0Asia/Tokyo\0");
    msg(&mut v, b'C', b"SELECT 1\0");
    msg(&mut v, b'Z', b"I");
    v
}

fn run_server(data: &[u8], cuts: &[usize]) -> (Vec<u8>, u8, Option<String>) {
    let mut expect = Expect::default();
    expect.push(Pending::Parse {
        swallow: true,
        id: Some(1),
    });
    expect.push(Pending::Bind);
    expect.push(Pending::Execute);
    expect.push(Pending::Synth(b'3'));
    expect.push(Pending::Sync);
    let mut flow = ServerFlow::new(1 << 20);
    let (mut sp, mut cp, mut st) = (
        ParamMap::default(),
        ParamMap::default(),
        ServerStatements::default(),
    );
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.clamp(at, data.len());
        buf.extend_from_slice(&data[at..c]);
        at = c;
        let mut obs = Observers {
            server_params: &mut sp,
            client_params: Some(&mut cp),
            statements: &mut st,
        };
        let batch = flow.process(&buf, &mut expect, &mut obs).unwrap();
        match batch.edited {
            Some(e) => out.extend_from_slice(&e),
            None => out.extend_from_slice(&buf[..batch.consumed]),
        }
        buf.advance(batch.consumed);
    }
    assert!(expect.is_empty() && flow.at_ready && flow.at_boundary());
    (out, flow.status, cp.get("TimeZone").map(String::from))
}

#[test]
fn a_repeated_parse_is_answered_by_pgmux_and_names_are_rewritten() {
    let (sent, owed) = run_client(&client_stream(), &[]);
    assert_eq!(owed, 3);
    let text = String::from_utf8_lossy(&sent);
    assert_eq!(
        text.matches("pgmux_0").count(),
        3,
        "one Parse and two Binds renamed: {text:?}"
    );
    assert!(
        !text.contains("s1\0"),
        "the client's name never reaches the server"
    );
    assert_eq!(
        text.matches("select $1::int").count(),
        1,
        "the second Parse is not sent"
    );
}

#[test]
fn injected_replies_are_dropped_and_owed_ones_added() {
    let (out, status, tz) = run_server(&server_stream(), &[]);
    assert_eq!(status, b'I');
    assert_eq!(tz.as_deref(), Some("Asia/Tokyo"));
    let tags: Vec<u8> = {
        let mut b = BytesMut::from(&out[..]);
        let mut tags = Vec::new();
        while let Some(f) = pgmux_wire::frame::take_frame(&mut b, 1 << 20).unwrap() {
            tags.push(f.tag);
        }
        tags
    };
    assert_eq!(tags, b"2DSC3Z");
}

proptest! {
    #[test]
    fn client_flow_ignores_read_boundaries(mut cuts in proptest::collection::vec(0usize..3400, 0..16)) {
        cuts.sort();
        let data = client_stream();
        prop_assert_eq!(run_client(&data, &cuts), run_client(&data, &[]));
    }

    #[test]
    fn server_flow_ignores_read_boundaries(mut cuts in proptest::collection::vec(0usize..3100, 0..16)) {
        cuts.sort();
        let data = server_stream();
        prop_assert_eq!(run_server(&data, &cuts), run_server(&data, &[]));
    }
}

#[test]
fn big_messages_stream_or_are_refused_without_being_held_whole() {
    let cache = StatementCache::default();
    let (mut client, mut server) = (ClientStatements::default(), ServerStatements::default());
    let big_query = [b"select '".as_slice(), &vec![b'q'; 2 << 20], b"'\0\0\0"].concat();
    // Unnamed: passes through as it arrives.
    let mut unnamed = Vec::new();
    msg(&mut unnamed, b'P', &[b"\0".as_slice(), &big_query].concat());
    let mut flow = ClientFlow::new(8 << 20);
    let mut expect = Expect::default();
    let st = Statements {
        cache: &cache,
        client: &mut client,
        server: &mut server,
    };
    let first = flow
        .process(&unnamed[..100_000], &mut expect, Some(st))
        .unwrap();
    assert_eq!(first.consumed, 100_000, "streamed, not held");
    assert!(!flow.at_boundary());
    // Named: refused with a clear error instead of buffering it.
    let mut named = Vec::new();
    msg(
        &mut named,
        b'P',
        &[b"big\0".as_slice(), &big_query].concat(),
    );
    let mut flow = ClientFlow::new(8 << 20);
    let st = Statements {
        cache: &cache,
        client: &mut client,
        server: &mut server,
    };
    let err = flow
        .process(&named[..100_000], &mut Expect::default(), Some(st))
        .err()
        .unwrap();
    assert_eq!(err.sqlstate(), "54000");
}

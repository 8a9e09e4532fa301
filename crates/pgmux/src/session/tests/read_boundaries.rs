//! Both flows must give the same bytes and the same accounting however the
//! stream is cut into reads: property tests over random cut points.

use bytes::{Buf, BytesMut};
use proptest::prelude::*;

use super::{msg, Rig};
use crate::params::ParamMap;
use crate::prepared::ServerStatements;
use crate::session::flow::client_flow::ClientFlow;
use crate::session::flow::expect::{Expect, Pending};
use crate::session::flow::server_flow::{Observers, ServerFlow};

/// A client batch: Parse s1, Bind s1, Execute, Sync, the same again under
/// the name s2, then a simple query with a large body.
fn client_stream() -> Vec<u8> {
    let mut v = Vec::new();
    for name in [b"s1", b"s2"] {
        msg(
            &mut v,
            b'P',
            &[&name[..], b"\0select $1::int\0\0\x01\0\0\0\x17"].concat(),
        );
        msg(
            &mut v,
            b'B',
            &[b"\0", &name[..], b"\0\0\0\0\x01\0\0\0\x011\0\0"].concat(),
        );
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
    let mut rig = Rig::new();
    let mut flow = ClientFlow::new(1 << 20, true);
    let mut buf = BytesMut::new();
    let mut sent = Vec::new();
    let mut owed = 0;
    let mut at = 0;
    for &c in cuts.iter().chain(std::iter::once(&data.len())) {
        let c = c.clamp(at, data.len());
        buf.extend_from_slice(&data[at..c]);
        at = c;
        loop {
            let (st, expect) = rig.statements();
            let batch = flow.process(&buf, expect, Some(st)).unwrap();
            match batch.edited {
                Some(e) => sent.extend_from_slice(&e),
                None => sent.extend_from_slice(&buf[..batch.consumed]),
            }
            buf.advance(batch.consumed);
            if buf.is_empty() || !rig.expect.statements_unsettled() {
                break;
            }
            // A later request waits for the earlier one's replies: take
            // them as arrived, all successful.
            owed += rig.expect.ready_owed();
            rig.expect = Expect::default();
        }
    }
    assert!(buf.is_empty() && flow.at_boundary());
    (sent, owed + rig.expect.ready_owed())
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
    expect.push(Pending::Bind { id: None });
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
            client_statements: None,
            cache: None,
            own_pid: None,
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
fn a_repeated_parse_is_prepared_again_and_names_are_rewritten() {
    let (sent, owed) = run_client(&client_stream(), &[]);
    assert_eq!(owed, 3);
    let text = String::from_utf8_lossy(&sent);
    assert_eq!(
        text.matches("pgmux_0").count(),
        5,
        "two Parses, a Close between them and two Binds, renamed: {text:?}"
    );
    assert!(
        !text.contains("s1\0") && !text.contains("s2\0"),
        "the client's names never reach the server"
    );
    assert_eq!(
        text.matches("select $1::int").count(),
        2,
        "the second Parse reaches the server too, so that the statement \
         exists there whatever SQL did to it"
    );
    assert!(
        text.contains("C\0\0\0\x0dSpgmux_0\0"),
        "closed before it is parsed again"
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

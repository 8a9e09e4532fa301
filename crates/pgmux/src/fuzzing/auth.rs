//! Passwords both ways: pgmux checking a client (SCRAM-SHA-256, MD5,
//! cleartext, with pgmux-wire's [`ScramExchange`] and [`Secret`]) and pgmux
//! logging in to PostgreSQL (answering whatever authentication requests a
//! server sends, with postgres-protocol, as `server/auth.rs` does).

use std::sync::OnceLock;

use bytes::BytesMut;
use pgmux_wire::auth::{
    md5_secret, AuthError, ScramExchange, ScramVerifier, Secret, SCRAM_SHA_256, SCRAM_SHA_256_PLUS,
};
use pgmux_wire::frame::take_frame;
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};

use super::Input;
use crate::server::auth::answer_request;
use crate::server::Login;

/// The user and password every SCRAM target logs in with.
const USER: &str = "alice";
const PASSWORD: &str = "pencil";

/// Placeholder a fuzzed client-final message may use for the nonce the
/// server chose (random per exchange, so no input could name it), letting
/// the fuzzer reach the proof check itself.
const NONCE_PLACEHOLDER: &[u8] = b"{r}";

/// Iterations a fuzzed server may ask of pgmux per input. postgres-protocol
/// refuses more than 100,000 itself; the cost is linear, so cases past this
/// only slow the search down.
const MAX_FUZZ_ITERATIONS: u32 = 4096;

/// The verifier of [`PASSWORD`], derived once (4,096 PBKDF2 rounds).
fn verifier() -> &'static ScramVerifier {
    static VERIFIER: OnceLock<ScramVerifier> = OnceLock::new();
    VERIFIER.get_or_init(|| {
        Secret::Plain(PASSWORD.into())
            .scram_verifier()
            .expect("a plaintext secret always yields a verifier")
    })
}

/// pgmux as the SCRAM server: a client-first then a client-final message,
/// both fuzzed, against the verifier of a known password or one parsed from
/// fuzzed userlist text.
///
/// Asserts: the server-first message carries the client's nonce, the salt
/// and the count; and no client-final message the fuzzer can write is
/// accepted (a proof needs the password's ClientKey, which the input
/// cannot contain), whatever the verifier text.
pub fn scram_server(data: &[u8]) {
    let mut input = Input::new(data);
    let stored_text = input.piece();
    let client_first = input.piece();
    let client_final = input.rest();
    let verifier = match std::str::from_utf8(stored_text).map(Secret::parse) {
        Ok(Secret::Scram(v)) => v,
        // Deriving a verifier from a plaintext costs 4,096 rounds: use the
        // one derived once.
        _ => verifier().clone(),
    };
    // A client-first message that binds to the channel is taken as sent
    // under SCRAM-SHA-256-PLUS over a TLS session with this binding data.
    let (mechanism, binding) = if client_first.starts_with(b"p=") {
        (SCRAM_SHA_256_PLUS, Some(&b"fuzz-binding"[..]))
    } else {
        (SCRAM_SHA_256, None)
    };
    let Ok((exchange, server_first)) =
        ScramExchange::start(verifier, mechanism, client_first, binding)
    else {
        return;
    };
    let client_nonce = std::str::from_utf8(client_first)
        .ok()
        .and_then(|t| t.splitn(3, ',').nth(2))
        .and_then(|bare| bare.split(',').find_map(|a| a.strip_prefix("r=")))
        .unwrap_or_default();
    let nonce = server_first
        .strip_prefix("r=")
        .and_then(|r| r.split(',').next())
        .unwrap_or_default();
    assert!(
        !client_nonce.is_empty()
            && nonce.starts_with(client_nonce)
            && nonce.len() > client_nonce.len()
    );
    assert!(server_first.contains(",s=") && server_first.contains(",i="));
    let client_final = replace(client_final, NONCE_PLACEHOLDER, nonce.as_bytes());
    match exchange.finish(&client_final) {
        Ok(server_final) => panic!("a guessed proof was accepted: {server_final}"),
        // A c= that is not this exchange's GS2 header and binding data.
        Err(AuthError::Malformed | AuthError::WrongPassword | AuthError::BindingMismatch(_)) => {}
        Err(e) => panic!("client-final gave {e:?}"),
    }
}

/// pgmux checking MD5 and cleartext answers, against a plaintext secret,
/// the MD5 secret of the same password, or fuzzed userlist text.
///
/// Asserts: an answer is accepted exactly when it is the one libpq would
/// compute for the stored password (MD5), or the password itself
/// (cleartext); a SCRAM secret never takes an MD5 answer; and userlist
/// text is classified consistently (an `md5…` secret is kept as such).
pub fn md5_server(data: &[u8]) {
    let mut input = Input::new(data);
    let kind = input.byte();
    let user = String::from_utf8_lossy(input.piece()).into_owned();
    let password = String::from_utf8_lossy(input.piece()).into_owned();
    let salt = [input.byte(), input.byte(), input.byte(), input.byte()];
    let response = String::from_utf8_lossy(input.piece()).into_owned();
    let guess = String::from_utf8_lossy(input.rest()).into_owned();
    match kind % 3 {
        0 => {
            let secret = Secret::Plain(password.clone());
            check_both(&secret, &user, &password, salt, &response);
            assert_eq!(secret.check_plain(&user, &guess), guess == password);
        }
        1 => {
            let stored = md5_secret(&user, &password);
            let secret = Secret::parse(&stored);
            assert_eq!(secret, Secret::Md5(stored), "an md5 secret is kept as one");
            check_both(&secret, &user, &password, salt, &response);
            if guess == password {
                assert!(secret.check_plain(&user, &guess));
            }
        }
        _ => {
            // Userlist text: anything goes in a file.
            let secret = Secret::parse(&password);
            match &secret {
                Secret::Plain(p) => assert_eq!(p, &password),
                Secret::Md5(m) => assert_eq!(m, &password.to_ascii_lowercase()),
                Secret::Scram(_) => {
                    assert!(!secret.check_md5(&user, salt, &response));
                    let right = md5_hash(user.as_bytes(), password.as_bytes(), salt);
                    assert!(!secret.check_md5(&user, salt, &right));
                    return; // check_plain would run the text's iteration count
                }
            }
            let _ = secret.check_md5(&user, salt, &response);
            let _ = secret.check_plain(&user, &guess);
        }
    }
}

/// A plaintext or MD5 secret of `password` takes libpq's MD5 answer and
/// the cleartext password, and an MD5 answer only when it is that one.
fn check_both(secret: &Secret, user: &str, password: &str, salt: [u8; 4], response: &str) {
    let right = md5_hash(user.as_bytes(), password.as_bytes(), salt);
    assert!(secret.check_md5(user, salt, &right));
    assert_eq!(secret.check_md5(user, salt, response), response == right);
    assert!(secret.check_plain(user, password));
}

/// pgmux logging in to a server that sends fuzzed messages: each `R`
/// request goes to [`answer_request`], the function a login runs. In one
/// mode the server is pgmux-wire's own SCRAM server for the same password,
/// and the fuzzer may corrupt one byte of one message in flight.
///
/// Asserts: the MD5 answer has libpq's form; the client-first and
/// client-final messages are well formed; a server-final the fuzzer wrote
/// never verifies (it needs the password's ServerKey); and in the round
/// trip both sides succeed exactly when nothing was corrupted.
pub fn auth_client(data: &[u8]) {
    let mut input = Input::new(data);
    // A quarter of the inputs run the round trip.
    if input.byte() & 3 == 0 {
        return round_trip(&mut input);
    }
    let max = usize::from(input.u16()).max(4);
    let mut buf = BytesMut::from(input.rest());
    let login = Login {
        user: USER.into(),
        credential: crate::server::Credential::Password(PASSWORD.into()),
    };
    let mut scram: Option<crate::server::auth::ScramClient> = None;
    while let Ok(Some(frame)) = take_frame(&mut buf, max) {
        if frame.tag != b'R' {
            continue; // ParameterStatus and the like: not this target's
        }
        let Some((code, rest)) = frame.body.split_first_chunk::<4>() else {
            assert!(
                answer_request(&frame.body, &login, None, &mut scram, &mut BytesMut::new())
                    .is_err()
            );
            return;
        };
        let code = i32::from_be_bytes(*code);
        if code == 11 && iterations(rest).is_some_and(|i| i > MAX_FUZZ_ITERATIONS) {
            return;
        }
        let mut out = BytesMut::new();
        let answered = answer_request(&frame.body, &login, None, &mut scram, &mut out);
        match (code, answered) {
            (_, Err(_)) => return, // the login ends with that error
            (0, Ok(())) => return,
            (12, Ok(())) => panic!("a server signature the fuzzer wrote verified"),
            (3 | 5 | 10 | 11, Ok(())) => {
                let Ok(Some(answer)) = take_frame(&mut out, usize::MAX) else {
                    panic!("request {code} drew no whole answer")
                };
                assert_eq!(answer.tag, b'p');
                assert!(out.is_empty(), "one message per request");
                let body = &answer.body[..];
                match code {
                    5 => {
                        let hashed = md5_hash(
                            USER.as_bytes(),
                            PASSWORD.as_bytes(),
                            rest.try_into().unwrap_or_default(),
                        );
                        assert_eq!(body, [hashed.as_bytes(), b"\0"].concat());
                        assert!(hashed.len() == 35 && hashed.starts_with("md5"));
                    }
                    10 => {
                        let first = body
                            .strip_prefix(b"SCRAM-SHA-256\0")
                            .expect("mechanism named");
                        assert!(first[4..].starts_with(b"n,,n=,r="));
                    }
                    11 => assert!(body.starts_with(b"c=biws,r=")),
                    _ => {}
                }
            }
            (other, Ok(())) => panic!("request {other} was answered"),
        }
    }
}

/// pgmux's login client against pgmux-wire's SCRAM server, both for
/// [`PASSWORD`], with one byte of one message corrupted if the input says.
fn round_trip(input: &mut Input<'_>) {
    let which = input.byte() % 4; // 0..=2: the message, 3: none
    let at = usize::from(input.byte());
    let flip = input.byte();
    let corrupt = |msg: &[u8], n: u8| -> (Vec<u8>, bool) {
        let mut msg = msg.to_vec();
        let changed = which == n && flip != 0 && !msg.is_empty();
        if changed {
            let i = at % msg.len();
            msg[i] ^= flip;
        }
        (msg, changed)
    };
    let mut client = ScramSha256::new(PASSWORD.as_bytes(), ChannelBinding::unsupported());
    let (client_first, c0) = corrupt(client.message(), 0);
    let Ok((exchange, server_first)) =
        ScramExchange::start(verifier().clone(), SCRAM_SHA_256, &client_first, None)
    else {
        assert!(c0, "the client-first message was refused");
        return;
    };
    let (server_first, c1) = corrupt(server_first.as_bytes(), 1);
    if iterations(&server_first).is_some_and(|i| i > MAX_FUZZ_ITERATIONS) {
        return;
    }
    if client.update(&server_first).is_err() {
        // A corrupted client nonce comes back in it, and is refused too.
        assert!(c0 || c1, "the server-first message was refused");
        return;
    }
    let (client_final, c2) = corrupt(client.message(), 2);
    match exchange.finish(&client_final) {
        Ok(server_final) => {
            assert!(!c2, "a corrupted client-final was accepted");
            // A corrupted nonce the client accepted, or a corrupted salt or
            // count, makes the proof wrong: success means untouched.
            assert!(!c0 && !c1, "a login through a corrupted message passed");
            let outcome = client.finish(server_final.as_bytes());
            assert!(outcome.is_ok(), "the client refused the server's signature");
        }
        Err(e) => assert!(c0 || c1 || c2, "an untouched exchange failed: {e:?}"),
    }
}

/// The `i=` attribute of a server-first message, when readable.
fn iterations(server_first: &[u8]) -> Option<u32> {
    std::str::from_utf8(server_first)
        .ok()?
        .split(',')
        .find_map(|a| a.strip_prefix("i="))?
        .parse()
        .ok()
}

/// `haystack` with every `from` replaced by `to`.
fn replace(haystack: &[u8], from: &[u8], to: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while !rest.is_empty() {
        if rest.starts_with(from) {
            out.extend_from_slice(to);
            rest = &rest[from.len()..];
        } else {
            out.push(rest[0]);
            rest = &rest[1..];
        }
    }
    out
}

//! Server to client: pass bytes on, account each reply against what is
//! owed ([`Expect`]), follow transaction status and ParameterStatus, drop
//! replies to injected messages and add the ones pgmux owes. Without edits
//! the input is forwarded as it is.

use bytes::BytesMut;
use pgmux_wire::backend;
use pgmux_wire::frame::{peek_header, write_message, FrameError, HEADER_LEN};

use super::expect::{Desync, Expect, Verdict};
use super::splice::Splice;
use crate::params::ParamMap;
use crate::prepared::{forgets_statements, ServerStatements};

#[derive(Debug, thiserror::Error)]
pub enum ServerFlowError {
    #[error(transparent)]
    Frame(#[from] FrameError),
    #[error(transparent)]
    Desync(#[from] Desync),
}

/// What the flow updates as replies go by.
pub struct Observers<'a> {
    pub server_params: &'a mut ParamMap,
    /// The client's view, when a client is listening.
    pub client_params: Option<&'a mut ParamMap>,
    pub statements: &'a mut ServerStatements,
}

pub struct ServerBatch {
    pub consumed: usize,
    pub edited: Option<BytesMut>,
    /// ReadyForQuery messages seen, and how many said idle.
    pub ready: u32,
    pub ready_idle: u32,
    /// SQLSTATE classes of the ErrorResponses passed on to the client.
    pub errors: Vec<[u8; 2]>,
}

#[derive(Debug)]
pub struct ServerFlow {
    max: usize,
    remaining: usize,
    dropping: bool,
    /// The last transaction status reported.
    pub status: u8,
    /// The last complete message was ReadyForQuery.
    pub at_ready: bool,
    /// The server waits for COPY data from the client.
    pub copy_in: bool,
    unprepared: Vec<u64>,
}

impl ServerFlow {
    pub fn new(max_message: usize) -> ServerFlow {
        ServerFlow {
            max: max_message,
            remaining: 0,
            dropping: false,
            status: b'I',
            at_ready: true,
            copy_in: false,
            unprepared: Vec::new(),
        }
    }

    pub fn at_boundary(&self) -> bool {
        self.remaining == 0
    }

    pub fn process(
        &mut self,
        input: &[u8],
        expect: &mut Expect,
        obs: &mut Observers<'_>,
    ) -> Result<ServerBatch, ServerFlowError> {
        let mut splice = Splice::new();
        let mut batch = ServerBatch {
            consumed: 0,
            edited: None,
            ready: 0,
            ready_idle: 0,
            errors: Vec::new(),
        };
        let mut pos = 0;
        while pos < input.len() {
            if self.remaining > 0 {
                let take = self.remaining.min(input.len() - pos);
                if self.dropping {
                    splice.replace(input, pos, pos + take, b"");
                }
                self.remaining -= take;
                pos += take;
                continue;
            }
            let Some((tag, len)) = peek_header(&input[pos..], self.max)? else {
                break;
            };
            let body_start = pos + HEADER_LEN;
            let whole_end = body_start + len;
            // ReadyForQuery, ParameterStatus and ErrorResponse are read whole
            // (they are small, and bounded by the message size cap).
            let read_whole = matches!(tag, b'Z' | b'S' | b'E');
            if read_whole && whole_end > input.len() {
                break;
            }
            while let Some(synth) = expect.take_synth() {
                let mut msg = BytesMut::with_capacity(HEADER_LEN);
                write_message(&mut msg, synth, |_| {});
                splice.replace(input, pos, pos, &msg);
            }
            let verdict = expect.on_reply(tag, &mut self.unprepared)?;
            for id in self.unprepared.drain(..) {
                obs.statements.forget(id);
            }
            if !matches!(tag, b'N' | b'A' | b'S') {
                self.at_ready = false;
            }
            match tag {
                b'Z' => {
                    let status =
                        backend::ready_status(&input[body_start..whole_end]).unwrap_or(b'E');
                    self.status = status;
                    self.at_ready = true;
                    self.copy_in = false;
                    // Replies to what pgmux itself sent are not the client's.
                    if verdict != Verdict::Drop {
                        batch.ready += 1;
                        batch.ready_idle += u32::from(status == b'I');
                    }
                }
                b'S' => {
                    if let Some((name, value)) =
                        backend::parameter_status(&input[body_start..whole_end])
                    {
                        obs.server_params.set(&name, &value);
                        if let Some(client) = obs.client_params.as_deref_mut() {
                            client.set(&name, &value);
                        }
                    }
                }
                b'G' => self.copy_in = true,
                b'E' if verdict != Verdict::Drop => {
                    if let Some(class) = backend::sqlstate_class(&input[body_start..whole_end]) {
                        batch.errors.push(class);
                    }
                }
                b'C' if whole_end <= input.len()
                    && forgets_statements(&input[body_start..whole_end]) =>
                {
                    obs.statements.clear()
                }
                _ => {}
            }
            self.dropping = verdict == Verdict::Drop;
            if self.dropping {
                splice.replace(input, pos, body_start, b"");
            }
            let available = (input.len() - body_start).min(len);
            if self.dropping {
                splice.replace(input, body_start, body_start + available, b"");
            }
            self.remaining = len - available;
            pos = body_start + available;
        }
        batch.consumed = pos;
        batch.edited = splice.finish(input, pos);
        Ok(batch)
    }

    /// Replies pgmux owes that are due with no server message to wait for.
    pub fn due_synths(expect: &mut Expect, out: &mut BytesMut) {
        while let Some(tag) = expect.take_synth() {
            write_message(out, tag, |_| {});
        }
    }
}

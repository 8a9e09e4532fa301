//! The io_uring backend of the workers (see [`crate::io`]): a small
//! runtime per worker thread, whose reactor batches every send and receive
//! of a turn with the wait into one `io_uring_enter`.

mod exec;
mod net;
mod reactor;
mod ring;

pub use exec::{active as executor_active, sleep_until, spawn, Sleep};
pub use net::{connect, Listener, Stream};
pub use reactor::{active, block_on};
pub use ring::Ring;

/// Whether io_uring can be used here (see [`Ring::available`]).
pub fn available() -> bool {
    Ring::<()>::available()
}

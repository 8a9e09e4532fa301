//! The io_uring backend of the workers (see [`crate::io`]): a small
//! runtime per worker thread, whose reactor batches every send and receive
//! of a turn with the wait into one `io_uring_enter`.

mod exec;
mod listen;
mod net;
mod oneshot;
mod reactor;
mod ring;
mod spare;

pub use exec::{active as executor_active, sleep_until, spawn, Sleep};
pub use listen::Listener;
pub use net::Stream;
pub use oneshot::connect;
pub use reactor::{active, block_on};
pub use ring::Ring;

/// Whether io_uring can be used here (see [`Ring::available`]).
pub fn available() -> bool {
    Ring::<()>::available()
}

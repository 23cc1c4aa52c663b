//! The wire between the warren master and its workers.
//!
//! - [`message`]: the types that travel (`Frame`, `Body`, `Op`, `Reply`, ...).
//! - [`codec`]: bytes <-> frames. The only module that calls bincode.
//! - [`io`]: the batching frame writer and the version handshake.
//! - [`sandbox`]: the spec a worker hands its `sandbox-exec` stage.
//! - [`stream`]: credit-based flow control for byte streams multiplexed on a
//!   connection (file transfers, task output, terminals).
//!
//! This crate knows nothing about HTTP, users' files or policy: it is the
//! contract both processes agree on, and `Hello` carries its version.
#![forbid(unsafe_code)]

pub mod codec;
pub mod io;
pub mod message;
pub mod path;
pub mod sandbox;
pub mod stream;

pub use codec::{FrameCodec, FrameError, MAX_FRAME_LEN};
pub use message::*;

//! Poll tokens and connection identity.
//!
//! Connection tokens are slab keys; the fixed tokens sit at the top of the range where no
//! slab key reaches. A [`ConnId`] adds the connection's generation to its key: work that
//! comes back from a worker names its connection by `ConnId`, and is dropped if the slot
//! has since been reused by another client.

use mio::Token;

pub const LISTENER: Token = Token(usize::MAX - 1);
pub const WAKER: Token = Token(usize::MAX - 2);
pub const SIGNALS: Token = Token(usize::MAX - 3);

/// A connection's slab key plus the generation it was accepted in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId {
    pub key: usize,
    pub generation: u64,
}

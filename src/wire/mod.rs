//! Transports: how frames are cut out of (and put into) a connection's byte stream.
//! Pure byte-level code; no sockets here.

pub mod http;
pub mod line;
pub mod websocket;

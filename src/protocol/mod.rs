//! The protocol: frames (the JSON envelope), error codes, and the action table.
//!
//! Everything here is pure: bytes in, values out, and back. Transports (`crate::wire`) cut
//! frames out of byte streams; the chat domain (`crate::chat`) gives actions their meaning.

pub mod action;
pub mod error;
pub mod frame;
pub mod routes;

pub use action::Action;
pub use error::{ApiError, ErrorCode};
pub use frame::{decode, encode_error, encode_push, encode_success, encode_success_with, DecodeError, Request};

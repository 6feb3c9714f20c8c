//! Sans-I/O codec for the PostgreSQL v3 frontend/backend protocol.
//!
//! Owns: framing, size limits, message codes and the typed messages of both sides. Must
//! not: do I/O, keep session state, or know what a statement is.
//!
//! This crate owns the bytes of the protocol and nothing else: it never touches a socket.
//! A proxy reads into its own buffer, asks [`framing::peek_frame`] whether a complete,
//! acceptable frame is there, and decodes only the messages it needs to understand into
//! [`FrontendMessage`] or [`BackendMessage`]. Everything else is forwarded as raw bytes.
//!
//! Invariants:
//! - Every length read from the peer is checked against [`Limits`] before anything is
//!   allocated for it, and element counts are bounded by the bytes actually present.
//! - An incomplete frame is `Ok(None)`, never an error.
//! - Frontend and backend messages are separate types because their tags overlap
//!   (`D` is Describe from the client and DataRow from the server); [`FrontendCode`] and
//!   [`BackendCode`] say what each tag is (its size class, whether a recording proxy
//!   reads its body, whether it completes a statement), so no other crate decides that
//!   from raw bytes.

mod backend;
mod buf;
mod codes;
mod error;
mod framing;
mod frontend;
mod startup;

pub use backend::{Authentication, BackendMessage, ErrorFields, FieldDescription};
pub use codes::{BackendCode, FrontendCode, TransactionStatus};
pub use error::WireError;
pub use framing::{FrameHeader, Limits, Side, decode_backend, decode_frontend, peek_frame};
pub use frontend::{FrontendMessage, SaslInitialResponse, TargetKind};
pub use startup::{
    CANCEL_REQUEST_CODE, ENCRYPTION_ACCEPTED, ENCRYPTION_REFUSED, GSSENC_REQUEST_CODE, PROTOCOL_V3, SSL_REQUEST_CODE,
    StartupMessage, decode_startup,
};

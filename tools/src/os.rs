//! What the load tools need to know about the operating system's limits: file descriptors
//! and ephemeral ports running out, and warnings about it that do not flood the terminal.
//! The helpers are the gateway's own (one copy, in `example_gateway::os`); the ports are a
//! client's concern alone.

pub use example_gateway::os::{
    EMFILE, ENFILE, Warning, fd_limit, fd_limit_text, io_source, is_fd_exhaustion,
};

/// No local address (in practice: no free ephemeral port) to connect from.
pub const EADDRNOTAVAIL: i32 = 99;

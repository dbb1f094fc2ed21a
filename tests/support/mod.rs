//! Shared test helpers.
#![allow(dead_code, unreachable_pub)]

pub mod sse;

pub mod body;
pub mod forward;
pub mod inputs;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod redis;
pub mod strategies;

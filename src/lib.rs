//! Tower middleware for Server-Sent Events and other streaming HTTP responses.
//!
//! The wire-format core lives in [`sse`]: an incremental, spec-exact, zero-copy and bounded
//! [`Decoder`](sse::Decoder), and an [`Event`](sse::Event) encoder.
#![cfg_attr(docsrs, feature(doc_cfg))]
#![doc(test(
    no_crate_inject,
    attr(deny(warnings, rust_2018_idioms), allow(dead_code))
))]

pub mod sse;

#[doc = include_str!("../README.md")]
#[cfg(doctest)]
struct ReadmeDoctests;

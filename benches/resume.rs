//! Placeholder, replaced by the resume bench.
fn main() {}

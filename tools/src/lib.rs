//! Load tools for tower-sse's example gateway (not published).
//!
//! - `loadgen` (`src/bin/loadgen.rs`): concurrent streaming clients with ramp-up, hold,
//!   faults and per-stream records; `cargo build --release -p tower-sse-tools` puts it at
//!   `target/release/loadgen`.
//! - [`os`]: what a load tool needs to know about the operating system's limits.
//! - `scripts/`: `scale.sh`, `soak.sh` and `variance.sh` (sharing `load-common.sh`), which
//!   build and run the mock upstream, the gateway and loadgen; `compare.sh`, the same load
//!   against the bypass, nginx, the bare hyper pass-through (`gateway --stack bare`), the
//!   gateway in both runtimes and LiteLLM, in one run; `scale-procs.sh`, streams through
//!   several gateway processes on one `SO_REUSEPORT` port, past the per-process fd ceiling;
//!   `criterion_table.py`, which prints criterion's results as a Markdown table.

pub mod os;

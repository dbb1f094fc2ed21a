//! Metrics recorded by a test, with a debugging recorder as the thread's local recorder.

#![allow(dead_code, unreachable_pub)]

use std::future::Future;

use metrics::{SharedString, Unit};
use metrics_util::CompositeKey;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};

/// What a debugging recorder holds: each key with its unit, description and value.
pub type Snapshot = Vec<(CompositeKey, Option<Unit>, Option<SharedString>, DebugValue)>;

/// Run `test` to its end on a fresh current-thread runtime (time paused when `paused`),
/// recording into a debugging recorder; what it recorded.
pub fn recorded<F: Future<Output = ()>>(paused: bool, test: impl FnOnce() -> F) -> Snapshot {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    metrics::with_local_recorder(&recorder, || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .start_paused(paused)
            .build()
            .unwrap();
        runtime.block_on(test());
    });
    snapshotter.snapshot().into_vec()
}

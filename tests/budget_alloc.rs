//! Heap allocations of one in-process admission and settlement ([`MemoryBudgets`]), counted
//! exactly (the figures in BENCHMARKS.md, "Budgets"). One test, so that no other thread
//! allocates while a region counts.

use std::alloc::System;
use std::sync::Arc;
use std::time::Duration;

use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use tower_sse::budget::{Admit, Amounts, Decision, Limit, Measure, MemoryBudgets, Settlement};

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

#[test]
fn admission_and_settlement_allocations_in_process() {
    let store = MemoryBudgets::new();
    let limits: Arc<[Limit]> = Arc::from([
        Limit::rate(Measure::Requests, 1_000_000, Duration::from_secs(60)),
        Limit::rate(Measure::TotalTokens, 1_000_000_000, Duration::from_secs(60)),
        Limit::per_day(Measure::OutputTokens, 1_000_000_000),
    ]);
    let amounts = Amounts {
        requests: 1,
        input_tokens: 500,
        output_tokens: 1000,
        cost_micros: 0,
    };
    let admit = Admit {
        key: "0123456789abcdef0123456789abcdef",
        limits: &limits,
        amounts,
        now: 1_796_623_200_000_000_000,
    };
    // The key's first admission makes its entry; count a steady-state one.
    assert_eq!(store.admit_now(admit), Decision::Admitted);
    let region = Region::new(GLOBAL);
    assert_eq!(store.admit_now(admit), Decision::Admitted);
    let admitted = region.change();

    let settlement = Settlement {
        id: "0123456789abcdef-1".into(),
        key: admit.key.into(),
        limits: limits.clone(),
        reserved: amounts,
        actual: Amounts {
            output_tokens: 120,
            ..amounts
        },
        admitted_at: admit.now,
        now: admit.now,
    };
    // The first settlement makes the tables of settled ids; count a steady-state one.
    let first = Settlement {
        id: "0123456789abcdef-0".into(),
        ..settlement.clone()
    };
    assert!(store.settle_now(&first));
    let region = Region::new(GLOBAL);
    assert!(store.settle_now(&settlement));
    let settled = region.change();
    println!(
        "admission: {} allocations; settlement: {} allocations ({} bytes)",
        admitted.allocations, settled.allocations, settled.bytes_allocated
    );
    assert_eq!(
        admitted.allocations, 0,
        "a steady-state admission allocates nothing"
    );
    // The settled id, remembered twice (set and order) for idempotency.
    assert_eq!(settled.allocations, 2, "{settled:?}");
}

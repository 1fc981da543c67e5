//! The calling thread joins the global thread pool (its own test binary: the global pool is built once per
//! process).

use rayon::prelude::*;
use snn_core::cpu::{join_global_pool, on_worker};

#[test]
fn the_calling_thread_becomes_worker_zero_and_runs_passes_in_place() {
    join_global_pool().expect("no global pool exists yet in this process");
    assert_eq!(rayon::current_thread_index(), Some(0));
    let here = std::thread::current().id();
    assert_eq!(on_worker(|| std::thread::current().id()), here);
    // Parallel sections opened here still reach the other workers' results.
    let total: u64 = (0..1000u64).into_par_iter().sum();
    assert_eq!(total, 499_500);
    assert!(join_global_pool().is_err(), "the pool is built once");
}

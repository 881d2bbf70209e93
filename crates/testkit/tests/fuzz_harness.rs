//! The fuzz harness itself: it must catch each kind of failure it promises to, or a green
//! fuzz run would mean nothing.

use std::time::Duration;

use tessera_testkit::fuzz::{CountingAlloc, Fuzz};

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

fn seeds() -> Vec<Vec<u8>> {
    vec![b"{\"a\": [1, 2, 3]}".to_vec()]
}

#[test]
fn a_quiet_target_passes_and_every_input_is_counted() {
    let fuzz = Fuzz::new("harness_quiet", seeds());
    let mutations = fuzz.inputs;
    let report = fuzz.run(|input| std::str::from_utf8(input).is_ok());
    assert_eq!(report.inputs, report.corpus + 1 + mutations);
    assert!(report.failures.is_empty());
    assert!(report.accepted > 0 && report.accepted < report.inputs);
}

#[test]
#[should_panic(expected = "a seed was refused")]
fn a_refused_seed_fails_the_run() {
    Fuzz::new("harness_seed", seeds()).run(|_| false);
}

#[test]
#[should_panic(expected = "fuzz_harness.rs:36: boom")]
fn a_panic_fails_the_run() {
    Fuzz::new("harness_panic", seeds()).run(|input| {
        if input.len() != seeds()[0].len() {
            panic!("boom");
        }
        true
    });
}

#[test]
#[should_panic(expected = "limit 10 ms")]
fn a_slow_input_fails_the_run() {
    Fuzz::new("harness_slow", seeds())
        .max_time(Duration::from_millis(10))
        .inputs_scaled(0.01)
        .run(|input| {
            if input.first() != Some(&b'{') {
                std::thread::sleep(Duration::from_millis(30));
            }
            true
        });
}

#[test]
#[should_panic(expected = "MiB at once (limit 1 MiB)")]
fn memory_over_the_limit_fails_the_run() {
    Fuzz::new("harness_memory", seeds())
        .max_memory(1 << 20)
        .inputs_scaled(0.01)
        .run(|_| {
            // Many allocations, none above the cap alone, 4 MiB together.
            let chunks: Vec<Vec<u8>> = (0..64).map(|_| vec![1u8; 64 << 10]).collect();
            std::hint::black_box(chunks);
            true
        });
}

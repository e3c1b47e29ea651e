//! Every committed fuzz corpus entry (`fuzz/corpus/<target>/`) through the
//! same entry point its fuzz target calls (`switchyard::fuzzing`), so CI
//! checks the corpora without a fuzzer: none may panic.

use std::path::Path;

#[test]
fn every_fuzz_corpus_entry_runs_without_a_panic() {
    // Unoptimised builds use far larger stack frames than the release
    // build the fuzzers and the daemon run; give this thread room for the
    // deepest input the parsers accept (see `expr::MAX_NESTING`).
    std::thread::Builder::new()
        .stack_size(64 << 20)
        .spawn(run_corpora)
        .unwrap()
        .join()
        .unwrap();
}

fn run_corpora() {
    let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus");
    for (target, run) in switchyard::fuzzing::TARGETS {
        let dir = corpora.join(target);
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        assert!(!entries.is_empty(), "the {target} corpus is empty");
        for entry in entries {
            let data = std::fs::read(&entry).unwrap();
            let outcome = std::panic::catch_unwind(|| run(&data));
            assert!(outcome.is_ok(), "{target}: {} panicked", entry.display());
        }
    }
}

//! Replays the fuzz seed corpus (tests/fuzz/corpus/receive_path) through the receive path on
//! stable Rust, so CI checks every seed and every crash the fuzzer ever found and we kept.

use std::path::Path;

#[test]
fn every_seed_in_the_fuzz_corpus_passes_the_receive_path_invariants() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/receive_path");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the seed corpus exists") {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| labelwall::fuzzing::receive_path(&data));
        assert!(result.is_ok(), "seed {} fails", path.display());
        count += 1;
    }
    assert!(count >= 20, "only {count} seeds in {}", dir.display());
}

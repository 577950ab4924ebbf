//! Replays the fuzz seed corpus (tests/fuzz/corpus/receive_path) through the receive path on
//! stable Rust, so CI checks every seed, and every crash the fuzzer found that we kept. Seeds
//! named `gen_` are scripts of the generator mode (fragments, ICMP errors of known flows;
//! written by tests/fuzz/make_seeds.py).

use std::path::Path;

use labelwall::pipeline::decode;

#[test]
fn every_seed_in_the_fuzz_corpus_passes_the_receive_path_invariants() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/receive_path");
    let (mut count, mut scripts) = (0, 0);
    for entry in std::fs::read_dir(&dir).expect("the seed corpus exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| labelwall::fuzzing::receive_path(&data));
        assert!(result.is_ok(), "seed {name} breaks an invariant");
        // Seeds named for what they are must decode (or fail) accordingly.
        if ["v4_", "v6_", "jumbo"].iter().any(|p| name.starts_with(p)) {
            assert!(decode(&data).is_ok(), "valid seed {name} fails: {:?}", decode(&data));
        } else if name.starts_with("bad_") || name == "oversize" {
            assert!(decode(&data).is_err(), "malformed seed {name} decodes");
        } else if name.starts_with("gen_") {
            assert!((0x60..=0x7f).contains(&data[0]), "{name} is no generator script");
            scripts += 1;
        }
        count += 1;
    }
    assert!(count >= 30, "only {count} seeds in {}", dir.display());
    assert!(scripts >= 4, "only {scripts} generator scripts in {}", dir.display());
}

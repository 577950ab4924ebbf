//! Replays the server_names fuzz seed corpus (tests/fuzz/corpus/server_names, written by
//! tests/fuzz/make_name_seeds.py from the real clients' captures, plus what the fuzzer found
//! and we kept) through the readers' invariants on stable Rust, so CI checks every seed.

use std::path::Path;

use labelwall::names::{Reading, ServerName, read_stream};

/// Seeds of TCP streams from real clients and the name each shows.
const TCP_NAMES: [(&str, Option<&str>); 7] = [
    ("tcp_openssl_tls13_sni", Some("www.example.com")),
    ("tcp_openssl_tls12_sni", Some("mixed.example.org")),
    ("tcp_openssl_records", Some("records.example.net")),
    ("tcp_openssl_no_sni", None),
    ("tcp_chromium_tls", Some("www.example.org")),
    ("tcp_curl_host", Some("www.example.com")),
    ("tcp_curl_proxy", Some("api.example.net")),
];

#[test]
fn every_seed_in_the_server_names_corpus_keeps_the_reader_invariants() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fuzz/corpus/server_names");
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).expect("the seed corpus exists") {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| labelwall::names::fuzzing::server_names(&data));
        assert!(result.is_ok(), "seed {name} breaks an invariant");
        count += 1;
    }
    assert!(count >= 20, "only {count} seeds in {}", dir.display());
    // The real clients' seeds are what they say they are (the header is 11 bytes).
    for (seed, expected) in TCP_NAMES {
        let data = std::fs::read(dir.join(seed)).unwrap();
        let expected = match expected {
            Some(name) => Reading::Found(ServerName::parse(name.as_bytes()).unwrap()),
            None => Reading::NoName,
        };
        assert_eq!(read_stream(&data[11..], 16_384), expected, "{seed}");
        let small = std::fs::read(dir.join(format!("{seed}_small_budget"))).unwrap();
        assert_eq!(&small[11..], &data[11..], "{seed}_small_budget");
    }
}

//! Fuzzes the snapshot state file's parser: any bytes, as a state file
//! rvmm is asked to load. Nothing may panic; a state that parses must also
//! survive the checks a load makes before it builds anything.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let path = std::path::Path::new("fuzz.state");
    // Both raw bytes and bytes under a valid header reach the JSON parser.
    let _ = rvmm::snapshot::parse_state(data, path);
    let framed = rvmm::snapshot::format::encode(data);
    if let Ok(state) = rvmm::snapshot::parse_state(&framed, path) {
        let _ = serde_json::to_vec(&state);
    }
});

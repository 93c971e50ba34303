//! Fuzzes the --disk PATH[,ro][,id=STR] parser with any string.
#![no_main]

use libfuzzer_sys::fuzz_target;
use rvmm::config::DiskConfig;

fuzz_target!(|data: &[u8]| {
    if let Ok(spec) = std::str::from_utf8(data) {
        if let Ok(disk) = spec.parse::<DiskConfig>() {
            // A parsed spec names a path and nothing unknown.
            assert!(!disk.path.as_os_str().is_empty());
        }
    }
});

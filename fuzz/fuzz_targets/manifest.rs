//! Manifest parsing and validation: any bytes, never a panic; whatever parses
//! re-encodes to exactly the same bytes.
#![no_main]

use artifact::Manifest;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Manifest::from_canonical_bytes(data, 1000, 1 << 30) {
        assert_eq!(m.to_canonical_bytes(), data);
    }
});

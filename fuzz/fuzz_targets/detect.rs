//! Protocol detection on any first bytes: it never panics, it decides by
//! the buffer limit at the latest, and a decision stands: more bytes from
//! the client never change it.

#![no_main]

use libfuzzer_sys::fuzz_target;
use strait_proxy::decide;

const MAX: usize = 512;

fuzz_target!(|data: &[u8]| {
    let whole = decide(data, MAX);
    if data.len() >= MAX {
        assert!(whole.is_some(), "undecided after {} bytes", data.len());
    }
    for cut in [1, data.len() / 3, data.len() / 2, data.len().saturating_sub(1)] {
        if cut <= data.len()
            && let Some(early) = decide(&data[..cut], MAX)
        {
            assert_eq!(
                Some(early),
                whole,
                "decided {early:?} after {cut} bytes, then {whole:?}"
            );
        }
    }
});

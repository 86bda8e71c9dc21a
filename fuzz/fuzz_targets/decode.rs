//! Any bytes from the ring buffer: decoded or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = leakbpf::event::decode(data);
});

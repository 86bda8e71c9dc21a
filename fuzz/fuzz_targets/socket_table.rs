//! Any sequence of decodable records applied to a small table: no panic,
//! and the table never grows past its cap.
#![no_main]

use leakbpf::socket_table::{Limits, SocketTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut table = SocketTable::new(Limits {
        max_sockets: 16,
        closed_retention_ns: 1_000,
    });
    // The first byte picks a record length; the rest is cut into records.
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let len = usize::from(len).max(24);
    for (index, chunk) in rest.chunks(len).enumerate() {
        if let Ok(event) = leakbpf::event::decode(chunk) {
            table.apply(&event);
            assert!(table.len() <= 16);
        }
        if index % 8 == 0 {
            table.sweep(index as u64 * 100);
        }
    }
    let _ = table.open_sockets().count();
});

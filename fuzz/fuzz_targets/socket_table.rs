//! Any sequence of decodable records applied to a small table: no panic,
//! and the table never grows past its cap.
#![no_main]

use leakbpf::socket_table::{Limits, SocketTable};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // The first byte picks a record length (and, by its low bit, whether
    // the table forgets sockets at their close, as `trace` and the agent's
    // do); the rest is cut into records.
    let Some((&len, rest)) = data.split_first() else {
        return;
    };
    let mut table = SocketTable::new(Limits {
        max_sockets: 16,
        closed_retention_ns: 1_000,
        forget_closed: len & 1 == 1,
    });
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

//! Any bytes as an ELF file or a bare .gopclntab: parsed or refused, and
//! every lookup answers without a panic.
#![no_main]

use leakbpf::gopclntab::GoSymbols;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(Some(symbols)) = GoSymbols::from_bytes(data) {
        let range = symbols.text_range();
        let _ = symbols.lookup(range.start);
    }
    if let Ok(symbols) = GoSymbols::from_pclntab(data, Some(0x40_1000)) {
        let range = symbols.text_range();
        for vaddr in [range.start, range.start.wrapping_add(1), range.end] {
            let _ = symbols.lookup(vaddr);
        }
    }
});

//! Recovers the caller that frame-pointer unwinding skips.
//!
//! The kernel walks user stacks through saved frame pointers. A leaf
//! function that keeps no frame of its own (glibc's `connect`/`accept`
//! wrappers are built without frame pointers) is the innermost frame at the
//! syscall, but its return address sits on the stack, not in a frame record:
//! the walk goes from the wrapper straight to its caller's caller, and the
//! function that actually called `accept()` vanishes. The open event carries
//! the user stack pointer and the words above it; the wrapper's `.eh_frame`
//! rule at the syscall's IP says where among them its return address is.
use std::{collections::HashMap, fs, ops::Range, sync::Arc};

use gimli::{
    BaseAddresses, CfaRule, EhFrame, EhFrameHdr, LittleEndian, RegisterRule, UnwindContext,
    UnwindSection as _, X86_64,
};
use object::{Object as _, ObjectSection as _};

use crate::procmaps::{self, Mapping, Segments};

/// Unwind tables of one ELF file, kept for every process that maps it.
struct ElfTables {
    data: Vec<u8>,
    eh_frame: (Range<usize>, u64),
    eh_frame_hdr: Option<(Range<usize>, u64)>,
    text_address: u64,
    segments: Segments,
}

impl ElfTables {
    fn parse(data: Vec<u8>) -> Option<ElfTables> {
        let file = object::File::parse(&*data).ok()?;
        let section = |name: &str| {
            let section = file.section_by_name(name)?;
            let (offset, size) = section.file_range()?;
            Some((offset as usize..(offset + size) as usize, section.address()))
        };
        let eh_frame = section(".eh_frame")?;
        let eh_frame_hdr = section(".eh_frame_hdr");
        let text_address = file.section_by_name(".text").map_or(0, |s| s.address());
        let segments = Segments::of(&file);
        Some(ElfTables {
            data,
            eh_frame,
            eh_frame_hdr,
            text_address,
            segments,
        })
    }

    /// Where the return address is, relative to the stack pointer, at
    /// `address`; `None` when the function keeps a frame pointer (the
    /// kernel's walk is right then) or has no unwind rule.
    fn return_address_slot(&self, address: u64) -> Option<u64> {
        let eh_frame = EhFrame::new(self.data.get(self.eh_frame.0.clone())?, LittleEndian);
        let mut bases = BaseAddresses::default()
            .set_eh_frame(self.eh_frame.1)
            .set_text(self.text_address);
        let mut context = UnwindContext::new();
        let row = match &self.eh_frame_hdr {
            Some((range, hdr_address)) => {
                bases = bases.set_eh_frame_hdr(*hdr_address);
                let hdr = EhFrameHdr::new(self.data.get(range.clone())?, LittleEndian)
                    .parse(&bases, 8)
                    .ok()?;
                hdr.table()?
                    .unwind_info_for_address(
                        &eh_frame,
                        &bases,
                        &mut context,
                        address,
                        EhFrame::cie_from_offset,
                    )
                    .ok()?
                    .clone()
            }
            None => eh_frame
                .unwind_info_for_address(&bases, &mut context, address, EhFrame::cie_from_offset)
                .ok()?
                .clone(),
        };
        let CfaRule::RegisterAndOffset { register, offset } = row.cfa() else {
            return None;
        };
        if *register != X86_64::RSP {
            return None;
        }
        let Some(RegisterRule::Offset(ra_offset)) = row.register(X86_64::RA) else {
            return None;
        };
        u64::try_from(offset + ra_offset).ok()
    }
}

/// Caches what it reads: maps per process, unwind tables per file.
pub struct LeafUnwinder {
    maps: HashMap<u32, Vec<Mapping>>,
    /// Unwind tables by file (device, inode), least recently used evicted.
    files: lru::LruCache<(String, u64), Option<Arc<ElfTables>>>,
}

/// Binaries whose unwind tables are kept at once.
const MAX_FILES: usize = 32;

impl Default for LeafUnwinder {
    fn default() -> Self {
        LeafUnwinder {
            maps: HashMap::new(),
            files: lru::LruCache::new(std::num::NonZeroUsize::new(MAX_FILES).expect("non-zero")),
        }
    }
}

impl LeafUnwinder {
    /// Which word above the user `sp` holds the return address of the
    /// caller of the innermost frame at `ip`, when that frame keeps no
    /// frame pointer (read it with [`caller_at`]). Process `pid` must still
    /// be running. The word depends on `ip` alone, so it can be found once
    /// per call path; the address in it is each call's own: one function
    /// may reach the same frameless leaf from two call sites.
    pub fn return_word(&mut self, pid: u32, ip: u64) -> Option<usize> {
        let mapping = self.mapping(pid, ip)?;
        let tables = self.tables(pid, &mapping)?;
        let address = tables.segments.address_of(mapping.file_offset_of(ip))?;
        let slot = tables.return_address_slot(address)?;
        if slot % 8 != 0 {
            return None;
        }
        usize::try_from(slot / 8).ok()
    }

    /// Forgets a process (it exited).
    pub fn forget(&mut self, pid: u32) {
        self.maps.remove(&pid);
    }

    fn mapping(&mut self, pid: u32, ip: u64) -> Option<Mapping> {
        let find = |maps: &Vec<Mapping>| maps.iter().find(|m| m.range.contains(&ip)).cloned();
        if let Some(found) = self.maps.get(&pid).and_then(find) {
            return Some(found);
        }
        // Not cached, or mapped since (dlopen): read again.
        let maps = procmaps::read(pid);
        let found = find(&maps);
        self.maps.insert(pid, maps);
        found
    }

    fn tables(&mut self, pid: u32, mapping: &Mapping) -> Option<Arc<ElfTables>> {
        self.files
            .get_or_insert(mapping.file.clone(), || {
                fs::read(mapping.map_file(pid))
                    .ok()
                    .and_then(ElfTables::parse)
                    .map(Arc::new)
            })
            .clone()
    }
}

/// The return address in word `word` of `stack_top` (the words at the
/// user `sp`); None when the stack was not read (`sp` 0) or the word is 0.
pub fn caller_at(word: usize, sp: u64, stack_top: &[u64]) -> Option<u64> {
    if sp == 0 {
        return None;
    }
    stack_top.get(word).copied().filter(|&ra| ra != 0)
}

/// Puts the recovered caller where the kernel's walk skipped it.
pub fn insert_caller(ips: &mut Vec<u64>, caller: Option<u64>) {
    if let Some(caller) = caller
        && !ips.is_empty()
        && ips.get(1) != Some(&caller)
    {
        ips.insert(1, caller);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inserts_a_caller_only_when_missing() {
        let mut ips = vec![1, 3];
        insert_caller(&mut ips, Some(2));
        assert_eq!(ips, [1, 2, 3]);
        insert_caller(&mut ips, Some(2));
        assert_eq!(ips, [1, 2, 3], "already the next frame");
        insert_caller(&mut ips, None);
        assert_eq!(ips, [1, 2, 3]);
    }

    /// The real thing, in this process: a leaf without a frame (glibc's
    /// `getpid` wrapper is one instruction sequence, no frame) has its return
    /// address at [sp]; libc's own tables must say so for the `ret` site.
    #[test]
    #[ignore = "host: needs root (/proc/PID/map_files); `./x test` runs it"]
    fn finds_the_return_address_slot_of_a_libc_leaf() {
        let pid = std::process::id();
        let mut unwinder = LeafUnwinder::default();
        let getpid = libc::getpid as *const () as usize as u64;
        let mapping = unwinder.mapping(pid, getpid).expect("getpid is mapped");
        let tables = unwinder.tables(pid, &mapping).expect("libc has .eh_frame");
        let address = tables
            .segments
            .address_of(mapping.file_offset_of(getpid))
            .expect("getpid's file offset is in a PT_LOAD segment");
        // At a function's first instruction the return address is at [sp].
        assert_eq!(tables.return_address_slot(address), Some(0));
        // So the caller is the first stack word.
        let word = unwinder.return_word(pid, getpid);
        assert_eq!(word, Some(0));
        assert_eq!(caller_at(0, 0x7000, &[0xabc, 0xdef]), Some(0xabc));
        assert_eq!(caller_at(1, 0x7000, &[0xabc, 0xdef]), Some(0xdef));
        assert_eq!(caller_at(0, 0, &[0xabc]), None, "no sp, no answer");
        assert_eq!(caller_at(0, 0x7000, &[0]), None, "no address");
        assert_eq!(caller_at(16, 0x7000, &[0xabc]), None, "beyond the words");
    }
}

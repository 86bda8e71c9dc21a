//! A process's executable mappings (/proc/PID/maps) and the translation of
//! runtime addresses to ELF virtual addresses: what the leaf unwinder and
//! the symbolizer's fallbacks need to find the file behind an address.
use std::{fs, ops::Range};

use object::{Object as _, ObjectSegment as _};

/// One executable, file-backed mapping.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    pub range: Range<u64>,
    /// File offset of `range.start`.
    pub file_offset: u64,
    /// (device, inode): the file's identity across processes.
    pub file: (String, u64),
    /// Path as the process sees it (may be inside a container).
    pub path: String,
}

impl Mapping {
    /// File offset of a runtime address inside this mapping.
    pub fn file_offset_of(&self, address: u64) -> u64 {
        address - self.range.start + self.file_offset
    }

    /// A path that opens the very file mapped, also inside a container's
    /// mount namespace or after the file was replaced on disk.
    pub fn map_file(&self, pid: u32) -> String {
        format!(
            "/proc/{pid}/map_files/{:x}-{:x}",
            self.range.start, self.range.end
        )
    }
}

/// Executable file-backed mappings in /proc/PID/maps text.
pub fn parse(text: &str) -> Vec<Mapping> {
    text.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let (start, end) = fields.next()?.split_once('-')?;
            let perms = fields.next()?;
            let offset = fields.next()?;
            let device = fields.next()?;
            let inode: u64 = fields.next()?.parse().ok()?;
            if !perms.contains('x') || inode == 0 {
                return None;
            }
            Some(Mapping {
                range: u64::from_str_radix(start, 16).ok()?..u64::from_str_radix(end, 16).ok()?,
                file_offset: u64::from_str_radix(offset, 16).ok()?,
                file: (device.to_owned(), inode),
                path: fields.collect::<Vec<_>>().join(" "),
            })
        })
        .collect()
}

/// The executable mappings of a running process.
pub fn read(pid: u32) -> Vec<Mapping> {
    fs::read_to_string(format!("/proc/{pid}/maps"))
        .map(|text| parse(&text))
        .unwrap_or_default()
}

/// PT_LOAD segments of an ELF file: (file offset, file size, virtual address).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Segments(Vec<(u64, u64, u64)>);

impl Segments {
    pub fn of(file: &object::File<'_>) -> Segments {
        Segments(
            file.segments()
                .map(|segment| {
                    let (offset, size) = segment.file_range();
                    (offset, size, segment.address())
                })
                .collect(),
        )
    }

    /// ELF virtual address of a file offset.
    pub fn address_of(&self, file_offset: u64) -> Option<u64> {
        self.0
            .iter()
            .find(|(offset, size, _)| (*offset..offset + size).contains(&file_offset))
            .map(|(offset, _, vaddr)| file_offset - offset + vaddr)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_executable_file_mappings_only() {
        let maps = "\
55d0c0a00000-55d0c0a01000 r--p 00000000 fe:01 1234 /usr/bin/server
55d0c0a01000-55d0c0a02000 r-xp 00001000 fe:01 1234 /usr/bin/my server
7f0000000000-7f0000021000 rw-p 00000000 00:00 0
7ffd1c9f0000-7ffd1c9f2000 r-xp 00000000 00:00 0 [vdso]
";
        let mappings = parse(maps);
        assert_eq!(
            mappings,
            [Mapping {
                range: 0x55d0_c0a0_1000..0x55d0_c0a0_2000,
                file_offset: 0x1000,
                file: ("fe:01".to_owned(), 1234),
                path: "/usr/bin/my server".to_owned(),
            }]
        );
        assert_eq!(mappings[0].file_offset_of(0x55d0_c0a0_1010), 0x1010);
    }

    #[test]
    fn translates_file_offsets_through_load_segments() {
        let segments = Segments(vec![(0, 0x1000, 0x40_0000), (0x1000, 0x2000, 0x40_1000)]);
        assert_eq!(segments.address_of(0x1234), Some(0x40_1234));
        assert_eq!(segments.address_of(0x5000), None);
    }
}

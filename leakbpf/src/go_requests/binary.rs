//! What leakbpf must know of a Go binary to probe its request sites: the Go
//! version (`.go.buildinfo`), where `runtime.g` keeps the goroutine id
//! (DWARF when present, else a table by version), and the file offsets of
//! the probed functions (`.symtab`, else `.gopclntab` for stripped builds).
use std::{io::Read as _, path::Path};

use anyhow::{Context as _, Result, anyhow};
use object::{
    CompressionFormat, Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadCache, ReadRef,
};

use crate::gopclntab::GoSymbols;

/// The probed functions, in the order of [`GoBinary::functions`] and of the
/// eBPF programs that probe them. The last two (the Happy Eyeballs bridge)
/// are probed only where `runtime.g` has no `parentGoid` (before Go 1.21).
pub const PROBED: [(&str, &str); 4] = [
    ("net/http.(*Transport).queueForDial", "go_queue_for_dial"),
    ("net/http.(*Transport).dialConnFor", "go_dial_conn_for"),
    ("net.(*sysDialer).dialParallel", "go_dial_parallel"),
    ("net.(*sysDialer).dialSerial", "go_dial_serial"),
];

/// Where the goroutine id sits in `runtime.g`, by Go release, for stripped
/// binaries (no DWARF). Measured from the DWARF of Debian's Go 1.19 and
/// 1.23 builds (a unit test on the fixtures keeps it honest) and from the
/// runtime's sources for the releases between.
const GOID_OFFSETS: [(u32, u32, u32); 2] = [
    // (first minor, last minor, offset), Go 1.x
    (19, 22, 152),
    (23, 23, 160),
];

/// The same for `parentGoid`, which Go 1.21 added.
const PARENT_GOID_OFFSETS: [(u32, u32, u32); 2] = [(21, 22, 272), (23, 23, 280)];

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoBinary {
    /// `go1.19.8`, from `.go.buildinfo` (`None` if it could not be read).
    pub version: Option<String>,
    /// Byte offset of `goid` in `runtime.g`, and where it came from.
    pub goid: Result<(u32, GoidSource), String>,
    /// Byte offset of `parentGoid` (Go 1.21+), from the same source.
    pub parent_goid: Option<u32>,
    /// File offsets of [`PROBED`] (`None`: not in this binary).
    pub functions: [Option<u64>; 4],
    /// The binary had a symbol table (else `.gopclntab` named the functions).
    pub symtab: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GoidSource {
    Dwarf,
    VersionTable,
}

impl GoBinary {
    /// True if it uses net/http's Transport: there is something to probe.
    pub fn dials_http(&self) -> bool {
        self.functions[0].is_some() && self.functions[1].is_some()
    }
}

/// Inspects the ELF file at `path`: `Ok(None)` if it is not a Go binary.
pub fn inspect(path: &Path) -> Result<Option<GoBinary>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let cache = ReadCache::new(file);
    inspect_elf(&cache).with_context(|| format!("reading {}", path.display()))
}

fn inspect_elf<'data, R: ReadRef<'data>>(data: R) -> Result<Option<GoBinary>> {
    match data.read_bytes_at(0, 4) {
        Ok(magic) if magic == object::elf::ELFMAG => {}
        _ => return Ok(None),
    }
    let file = object::File::parse(data).map_err(|e| anyhow!("parsing ELF: {e}"))?;
    let is_go = [".go.buildinfo", ".gopclntab", ".note.go.buildid"]
        .iter()
        .any(|name| file.section_by_name(name).is_some());
    if !is_go {
        return Ok(None);
    }
    let version = file
        .section_by_name(".go.buildinfo")
        .and_then(|section| section.data().ok())
        .and_then(buildinfo_version);
    let symtab = file.symbols().next().is_some();
    let mut functions = [None; 4];
    let mut pclntab: Option<Option<GoSymbols>> = None;
    for (slot, (name, _)) in functions.iter_mut().zip(PROBED) {
        let vaddr = if symtab {
            file.symbols()
                .find(|symbol| symbol.name() == Ok(name))
                .map(|symbol| symbol.address())
        } else {
            let symbols =
                pclntab.get_or_insert_with(|| GoSymbols::from_object(&file).ok().flatten());
            symbols.as_ref().and_then(|symbols| symbols.entry_of(name))
        };
        *slot = vaddr.and_then(|vaddr| file_offset(&file, vaddr));
    }
    let (goid, parent_goid) = match dwarf_g_offsets(&file) {
        Ok((Some(offset), parent)) => (Ok((offset, GoidSource::Dwarf)), parent),
        _ => match version.as_deref().and_then(table_goid_offset) {
            Some(offset) => (
                Ok((offset, GoidSource::VersionTable)),
                version.as_deref().and_then(table_parent_goid_offset),
            ),
            None => (
                Err(format!(
                    "no DWARF and a Go version leakbpf has no runtime.g layout for ({})",
                    version.as_deref().unwrap_or("unreadable .go.buildinfo")
                )),
                None,
            ),
        },
    };
    Ok(Some(GoBinary {
        version,
        goid,
        parent_goid,
        functions,
        symtab,
    }))
}

/// The file offset of virtual address `vaddr`: what a uprobe takes.
fn file_offset<'data, R: ReadRef<'data>>(file: &object::File<'data, R>, vaddr: u64) -> Option<u64> {
    file.segments().find_map(|segment| {
        let (offset, size) = segment.file_range();
        let start = segment.address();
        (start..start + size)
            .contains(&vaddr)
            .then(|| vaddr - start + offset)
    })
}

/// The Go version in a `.go.buildinfo` section (Go 1.18+ writes it inline:
/// a 32-byte header with flag bit 2, then length-prefixed strings).
pub fn buildinfo_version(section: &[u8]) -> Option<String> {
    const MAGIC: &[u8] = b"\xff Go buildinf:";
    if !section.starts_with(MAGIC) || section.len() < 32 || section[15] & 2 == 0 {
        return None;
    }
    let mut len = 0usize;
    let mut pos = 32;
    for shift in (0..35).step_by(7) {
        let byte = *section.get(pos)?;
        pos += 1;
        len |= usize::from(byte & 0x7f) << shift;
        if byte & 0x80 == 0 {
            let version = section.get(pos..pos.checked_add(len)?)?;
            return std::str::from_utf8(version).ok().map(str::to_owned);
        }
    }
    None
}

/// The goroutine id offset for a Go version string (`go1.23.5`), from
/// [`GOID_OFFSETS`].
pub fn table_goid_offset(version: &str) -> Option<u32> {
    by_minor(&GOID_OFFSETS, version)
}

/// The `parentGoid` offset for a Go version, from [`PARENT_GOID_OFFSETS`].
pub fn table_parent_goid_offset(version: &str) -> Option<u32> {
    by_minor(&PARENT_GOID_OFFSETS, version)
}

fn by_minor(table: &[(u32, u32, u32)], version: &str) -> Option<u32> {
    let minor: u32 = version
        .strip_prefix("go1.")?
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    table
        .iter()
        .find(|(first, last, _)| (*first..=*last).contains(&minor))
        .map(|(.., offset)| *offset)
}

/// `runtime.g`'s `goid` and `parentGoid` member offsets from the binary's
/// DWARF; `None`s when there is no DWARF (stripped) or no such member.
fn dwarf_g_offsets<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
) -> Result<(Option<u32>, Option<u32>)> {
    if file.section_by_name(".debug_info").is_none() {
        return Ok((None, None));
    }
    let load = |id: gimli::SectionId| -> Result<std::borrow::Cow<'data, [u8]>> {
        let Some(section) = file.section_by_name(id.name()) else {
            return Ok(std::borrow::Cow::Borrowed(&[]));
        };
        let compressed = section
            .compressed_data()
            .map_err(|e| anyhow!("reading {}: {e}", id.name()))?;
        match compressed.format {
            CompressionFormat::None => Ok(std::borrow::Cow::Borrowed(compressed.data)),
            CompressionFormat::Zlib => {
                let mut out =
                    Vec::with_capacity(usize::try_from(compressed.uncompressed_size).unwrap_or(0));
                flate2::read::ZlibDecoder::new(compressed.data)
                    .read_to_end(&mut out)
                    .with_context(|| format!("decompressing {}", id.name()))?;
                Ok(std::borrow::Cow::Owned(out))
            }
            other => Err(anyhow!("{}: unsupported compression {other:?}", id.name())),
        }
    };
    let sections = gimli::DwarfSections::load(load)?;
    let dwarf = sections.borrow(|section| gimli::EndianSlice::new(section, gimli::LittleEndian));
    let mut units = dwarf.units();
    while let Some(header) = units.next()? {
        let unit = dwarf.unit(header)?;
        let mut entries = unit.entries();
        let mut g_depth: Option<isize> = None;
        let mut found = (None, None);
        while let Some(entry) = entries.next_dfs()? {
            let depth = entry.depth();
            if let Some(g) = g_depth {
                if depth <= g {
                    // The end of runtime.g's members.
                    return Ok(found);
                } else if depth == g + 1 && entry.tag() == gimli::DW_TAG_member {
                    let offset = entry
                        .attr_value(gimli::DW_AT_data_member_location)
                        .and_then(|value| value.udata_value())
                        .and_then(|offset| u32::try_from(offset).ok());
                    if name_is(&dwarf, &unit, entry, "goid") {
                        found.0 = offset;
                    } else if name_is(&dwarf, &unit, entry, "parentGoid") {
                        found.1 = offset;
                    }
                }
            }
            if g_depth.is_none()
                && entry.tag() == gimli::DW_TAG_structure_type
                && name_is(&dwarf, &unit, entry, "runtime.g")
            {
                g_depth = Some(depth);
            }
        }
        if g_depth.is_some() {
            return Ok(found);
        }
    }
    Ok((None, None))
}

fn name_is<R: gimli::Reader>(
    dwarf: &gimli::Dwarf<R>,
    unit: &gimli::Unit<R>,
    entry: &gimli::DebuggingInformationEntry<R>,
    wanted: &str,
) -> bool {
    entry
        .attr_value(gimli::DW_AT_name)
        .and_then(|value| dwarf.attr_string(unit, value).ok())
        .is_some_and(|name| name.to_slice().is_ok_and(|name| name == wanted.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_inline_go_version() {
        let mut section = b"\xff Go buildinf:\x08\x02".to_vec();
        section.resize(32, 0);
        section.push(8);
        section.extend_from_slice(b"go1.19.8");
        section.push(3);
        section.extend_from_slice(b"mod");
        assert_eq!(buildinfo_version(&section).as_deref(), Some("go1.19.8"));
        // Pre-1.18 (pointers, flag bit clear) and garbage: unknown.
        section[15] = 0;
        assert_eq!(buildinfo_version(&section), None);
        assert_eq!(buildinfo_version(b"\xff Go buildinf:"), None);
    }

    #[test]
    fn the_goid_table_covers_measured_releases_only() {
        assert_eq!(table_goid_offset("go1.19.8"), Some(152));
        assert_eq!(table_goid_offset("go1.22.12"), Some(152));
        assert_eq!(table_goid_offset("go1.23.5"), Some(160));
        assert_eq!(table_goid_offset("go1.24.0"), None);
        assert_eq!(table_goid_offset("go1.18"), None);
        assert_eq!(table_goid_offset("devel +abc"), None);
        assert_eq!(table_parent_goid_offset("go1.19.8"), None);
        assert_eq!(table_parent_goid_offset("go1.21.13"), Some(272));
        assert_eq!(table_parent_goid_offset("go1.23.5"), Some(280));
    }

    #[test]
    fn a_c_program_is_not_go() {
        // This test binary is Rust, with neither Go section.
        let exe = std::env::current_exe().unwrap();
        assert_eq!(inspect(&exe).unwrap(), None);
    }

    /// The request-site fixture built by Debian's Go 1.19 and by Go 1.23,
    /// with and without `-s -w`: every probed function is found (symtab or
    /// pclntab), the version is read, and the version table gives the
    /// offset DWARF gives.
    #[test]
    #[ignore = "host: builds Go binaries (golang-go, golang-1.23-go); `./x test` runs it"]
    fn probes_what_each_toolchain_builds() {
        let source = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/fixtures/gorequests.go"
        );
        let dir = tempfile::tempdir().unwrap();
        for (go, version) in [("go", "go1.19"), ("/usr/lib/go-1.23/bin/go", "go1.23")] {
            let mut found = Vec::new();
            for stripped in [false, true] {
                let out = dir.path().join(format!("{version}-{stripped}"));
                let mut build = std::process::Command::new(go);
                build.arg("build");
                if stripped {
                    build.arg("-ldflags=-s -w");
                }
                let status = build
                    .arg("-o")
                    .arg(&out)
                    .arg(source)
                    .env("GO111MODULE", "off")
                    .env("GOTOOLCHAIN", "local")
                    .env("GOCACHE", dir.path().join("cache"))
                    .env("HOME", dir.path())
                    .status()
                    .unwrap_or_else(|e| panic!("running {go} (./x setup installs it): {e}"));
                assert!(status.success(), "{go} build failed");
                let binary = inspect(&out).unwrap().expect("a Go binary");
                assert!(
                    binary.version.as_deref().unwrap().starts_with(version),
                    "{binary:?}"
                );
                assert!(binary.functions.iter().all(Option::is_some), "{binary:?}");
                assert!(binary.dials_http());
                assert_eq!(binary.symtab, !stripped);
                found.push((binary.goid.clone().unwrap(), binary.parent_goid));
            }
            let table = table_goid_offset(version).unwrap();
            let parent = table_parent_goid_offset(version);
            assert_eq!(
                found,
                [
                    ((table, GoidSource::Dwarf), parent),
                    ((table, GoidSource::VersionTable), parent)
                ]
            );
        }
    }
}

//! Go function names and file:line from a Go binary's own line table.
//!
//! Go programs are often shipped stripped (`go build -ldflags="-s -w"`): no
//! `.symtab` and no DWARF, so blazesym has nothing to name their frames with.
//! The Go runtime, however, needs a table of its own functions for tracebacks
//! and garbage collection, so every Go binary keeps `runtime.pclntab`, the
//! "PC line table". It maps a program counter to its function, source file
//! and line, and no Rust crate reads it, hence this module.
//!
//! Where it lives: a section named `.gopclntab` (Go's internal linker, and
//! external linking of a non-PIE), `.data.rel.ro.gopclntab` (Go 1.19's
//! internal linker building a PIE), or, when an external linker merged it into
//! `.data.rel.ro` (cgo PIE), nowhere by name; then we look for its header in
//! the binary's non-executable data, which only Go binaries (those with a
//! `.go.buildinfo` or `.note.go.buildid` section) pay for.
//!
//! Layout (Go 1.18+, from Go's `runtime/symtab.go`; 1.16 differs as noted):
//!
//! - header: magic `u32`, two zero bytes, the PC quantum (minimum instruction
//!   size), the pointer size, then pointer-sized words `nfunc`, `nfiles`,
//!   `textStart` (not in 1.16), and the offsets, from the header, of
//!   `funcnametab`, `cutab`, `filetab`, `pctab` and the function table.
//! - function table: `nfunc + 1` pairs (`entryoff`, `funcoff`) of `u32`
//!   (pointer-sized, entries absolute, in 1.16), `entryoff` relative to
//!   `textStart`, sorted, the last holding only the end of the text; `funcoff`
//!   locates a `_func` relative to the table's start.
//! - `_func`: entry (`u32` offset; a pointer in 1.16), then `u32`s `nameOff`,
//!   `args`, `deferreturn`, `pcsp`, `pcfile`, `pcln`, `npcdata`, `cuOffset`
//!   (Go 1.20+ adds `startLine` after these, which we do not need).
//! - `pcfile` and `pcln` are offsets into `pctab` of "pcvalue" tables: pairs
//!   of varints, a zigzag value delta and a PC delta in quanta, from the
//!   function's entry and value -1, ending with a zero value delta. A file
//!   number is an index into the function's compilation unit's run of
//!   `cutab`, which holds offsets of NUL-terminated names in `filetab`.
//!
//! Every read is bounds-checked: a malformed table gives an error when loaded
//! or `None` from a lookup, never a panic.
use std::{fmt, ops::Range, path::Path};

use anyhow::{Context, Result, anyhow, bail, ensure};
use object::{
    Object, ObjectSection, ObjectSegment, ObjectSymbol, ReadCache, ReadRef, SectionFlags,
    SegmentFlags, elf,
};

/// What a program counter in Go code resolves to.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GoFrame {
    /// Package-qualified name, as Go prints it: `main.leakOne`,
    /// `net.(*Dialer).DialContext`.
    pub function: String,
    /// The function's first instruction (ELF virtual address).
    pub entry: u64,
    /// Source file as recorded at build time (usually an absolute path).
    /// In code inlined into `function`, the inlined source's position (as
    /// `go tool addr2line` says).
    pub file: Option<String>,
    pub line: Option<u32>,
    /// The position in `function` itself: for inlined code, the line that
    /// called what was inlined there (followed out through every level of
    /// inlining); `file` and `line` otherwise, or when the binary's inline
    /// trees cannot be found.
    pub function_file: Option<String>,
    pub function_line: Option<u32>,
}

/// The function table of one Go binary, read from its pclntab.
pub struct GoSymbols {
    data: Vec<u8>,
    layout: Layout,
    /// The binary's `go:func.*` data, which holds the inline trees.
    gofunc: Option<GoFunc>,
}

/// `go:func.*`: function data (inline trees among it) that `_func`s locate
/// by offset from its start (`runtime.moduledata.gofunc`).
struct GoFunc {
    /// From its start to the end of the section holding it.
    bytes: Vec<u8>,
}

impl fmt::Debug for GoSymbols {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GoSymbols")
            .field("bytes", &self.data.len())
            .field("gofunc_bytes", &self.gofunc.as_ref().map(|g| g.bytes.len()))
            .field("layout", &self.layout)
            .finish()
    }
}

impl GoSymbols {
    /// Reads the Go line table of the ELF file at `path`.
    ///
    /// `Ok(None)` when the file is not ELF or holds no Go line table (a C
    /// program, a gccgo binary); `Err` when it cannot be read, its ELF headers
    /// are broken, or its `.gopclntab` is malformed. Reads only the parts of
    /// the file it needs.
    pub fn from_elf_path(path: &Path) -> Result<Option<GoSymbols>> {
        let file =
            std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        let cache = ReadCache::new(file);
        Self::from_elf(&cache).with_context(|| format!("reading Go symbols of {}", path.display()))
    }

    /// Like [`GoSymbols::from_elf_path`], for an ELF file already in memory.
    pub fn from_bytes(elf: &[u8]) -> Result<Option<GoSymbols>> {
        Self::from_elf(elf)
    }

    /// Reads a bare pclntab (starting with its magic), for callers that found
    /// it themselves, e.g. in a process's memory. `text_start`, if given,
    /// replaces the header's `textStart` (Go 1.18+), which a loader relocates
    /// in a PIE.
    pub fn from_pclntab(pclntab: &[u8], text_start: Option<u64>) -> Result<GoSymbols> {
        let layout = Layout::parse(pclntab, text_start)?;
        Ok(GoSymbols {
            data: pclntab.to_vec(),
            layout,
            gofunc: None,
        })
    }

    /// The function containing `vaddr` (an ELF virtual address: callers
    /// subtract the load bias), with the file and line of that instruction.
    /// `None` outside the Go text or if the table cannot say.
    ///
    /// Code inlined into a function is reported under the function it was
    /// inlined into, but with the file and line of the inlined source.
    pub fn lookup(&self, vaddr: u64) -> Option<GoFrame> {
        self.layout.lookup(
            &self.data,
            vaddr,
            self.gofunc.as_ref().map(|g| &g.bytes[..]),
        )
    }

    /// The entry address (ELF virtual address) of the function named
    /// `name` exactly (`net/http.(*Transport).queueForDial`); a linear scan,
    /// for the few functions leakbpf probes.
    pub fn entry_of(&self, name: &str) -> Option<u64> {
        self.layout.entry_of(&self.data, name.as_bytes())
    }

    /// Addresses covered by the function table: the Go text.
    pub fn text_range(&self) -> Range<u64> {
        self.layout.text_range(&self.data).unwrap_or(0..0)
    }

    fn from_elf<'data, R: ReadRef<'data>>(data: R) -> Result<Option<GoSymbols>> {
        match data.read_bytes_at(0, 4) {
            Ok(magic) if magic == elf::ELFMAG => {}
            _ => return Ok(None),
        }
        let file = object::File::parse(data).map_err(|e| anyhow!("parsing ELF: {e}"))?;
        Self::from_object(&file)
    }

    /// Like [`GoSymbols::from_elf_path`], for an ELF file already parsed.
    pub fn from_object<'data, R: ReadRef<'data>>(
        file: &object::File<'data, R>,
    ) -> Result<Option<GoSymbols>> {
        let Some((pclntab, address)) = find_pclntab(file)? else {
            return Ok(None);
        };
        let text_start = relocated_text_start(file, pclntab, address);
        let mut symbols = Self::from_pclntab(pclntab, text_start)?;
        symbols.gofunc = find_gofunc(file, &symbols.layout, address);
        Ok(Some(symbols))
    }
}

/// Header magics, by the Go release that introduced the format.
const MAGIC_GO116: u32 = 0xffff_fffa;
const MAGIC_GO118: u32 = 0xffff_fff0;
const MAGIC_GO120: u32 = 0xffff_fff1;

/// Section names the Go linkers give the pclntab.
const SECTION_NAMES: [&str; 2] = [".gopclntab", ".data.rel.ro.gopclntab"];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Version {
    /// Go 1.16 and 1.17: pointer-sized function table, absolute entries.
    Go116,
    /// Go 1.18 and 1.19.
    Go118,
    /// Go 1.20 and later (`_func` gains `startLine`, which we skip).
    Go120,
}

/// Where the parts of one pclntab are; offsets index its bytes.
#[derive(Clone, Copy, Debug)]
struct Layout {
    version: Version,
    big_endian: bool,
    quantum: u8,
    ptr_size: usize,
    nfunc: usize,
    /// Base of function entries (Go 1.18+); 0 for Go 1.16.
    text_start: u64,
    funcnametab: usize,
    cutab: usize,
    filetab: usize,
    pctab: usize,
    /// The function table; `funcoff`s are relative to it.
    functab: usize,
}

/// Magic, endianness and header bytes 4..8, checked as `debug/gosym` does.
fn sniff(data: &[u8]) -> Option<(Version, bool)> {
    let head = data.get(..8)?;
    if head[4] != 0 || head[5] != 0 || !matches!(head[6], 1 | 2 | 4) || !matches!(head[7], 4 | 8) {
        return None;
    }
    let magic: [u8; 4] = head[..4].try_into().ok()?;
    let version = |magic| match magic {
        MAGIC_GO116 => Some(Version::Go116),
        MAGIC_GO118 => Some(Version::Go118),
        MAGIC_GO120 => Some(Version::Go120),
        _ => None,
    };
    if let Some(v) = version(u32::from_le_bytes(magic)) {
        Some((v, false))
    } else {
        version(u32::from_be_bytes(magic)).map(|v| (v, true))
    }
}

fn read_u32(data: &[u8], off: usize, big_endian: bool) -> Option<u32> {
    let bytes: [u8; 4] = data.get(off..off.checked_add(4)?)?.try_into().ok()?;
    Some(if big_endian {
        u32::from_be_bytes(bytes)
    } else {
        u32::from_le_bytes(bytes)
    })
}

/// A 4- or 8-byte unsigned integer.
fn read_word(data: &[u8], off: usize, size: usize, big_endian: bool) -> Option<u64> {
    match size {
        4 => read_u32(data, off, big_endian).map(u64::from),
        8 => {
            let bytes: [u8; 8] = data.get(off..off.checked_add(8)?)?.try_into().ok()?;
            Some(if big_endian {
                u64::from_be_bytes(bytes)
            } else {
                u64::from_le_bytes(bytes)
            })
        }
        _ => None,
    }
}

/// The NUL-terminated string at `off`.
fn c_str(data: &[u8], off: usize) -> Option<&[u8]> {
    let tail = data.get(off..)?;
    let len = tail.iter().position(|&b| b == 0)?;
    Some(&tail[..len])
}

/// Go's unsigned LEB128-style varint, at most 5 bytes for a `u32`: the value
/// and the number of bytes read.
fn read_varint(data: &[u8], off: usize) -> Option<(u32, usize)> {
    let mut value = 0u32;
    for (i, &b) in data.get(off..)?.iter().take(5).enumerate() {
        value |= u32::from(b & 0x7f) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// `_func` field numbers (after the entry), as in `debug/gosym`.
const FIELD_NAMEOFF: usize = 1;
const FIELD_PCFILE: usize = 5;
const FIELD_PCLN: usize = 6;
const FIELD_NPCDATA: usize = 7;
const FIELD_CUOFFSET: usize = 8;
/// `_PCDATA_InlTreeIndex` and `_FUNCDATA_InlTree` (runtime/symtab.go).
const PCDATA_INL_TREE_INDEX: usize = 2;
const FUNCDATA_INL_TREE: usize = 3;
/// Levels of inlining followed out at most (Go inlines a few deep).
const MAX_INLINE_DEPTH: usize = 64;

impl Layout {
    /// Parses and checks the header and function table, so that lookups
    /// only meet bad data in the parts they read per function.
    fn parse(data: &[u8], text_start: Option<u64>) -> Result<Layout> {
        let Some((version, big_endian)) = sniff(data) else {
            bail!("not a Go 1.16+ pclntab (unknown magic or bad header)");
        };
        let quantum = data[6];
        let ptr_size = usize::from(data[7]);
        let words = if version == Version::Go116 { 7 } else { 8 };
        let header_len = 8 + words * ptr_size;
        ensure!(data.len() >= header_len, "pclntab header truncated");
        let word = |i: usize| read_word(data, 8 + i * ptr_size, ptr_size, big_endian).unwrap_or(0);
        let offset = |i: usize| -> Result<usize> {
            let off = usize::try_from(word(i)).unwrap_or(usize::MAX);
            ensure!(
                (header_len..=data.len()).contains(&off),
                "pclntab header word {i} ({off:#x}) is outside the table"
            );
            Ok(off)
        };
        let nfunc = usize::try_from(word(0)).context("pclntab nfunc too large")?;
        ensure!(nfunc > 0, "pclntab lists no functions");
        // Offsets start after nfunc, nfiles and (1.18+) textStart.
        let first = words - 5;
        let layout = Layout {
            version,
            big_endian,
            quantum,
            ptr_size,
            nfunc,
            text_start: match version {
                Version::Go116 => 0,
                _ => text_start.unwrap_or_else(|| word(2)),
            },
            funcnametab: offset(first)?,
            cutab: offset(first + 1)?,
            filetab: offset(first + 2)?,
            pctab: offset(first + 3)?,
            functab: offset(first + 4)?,
        };
        layout.check_functab(data)?;
        Ok(layout)
    }

    /// The function table must fit, be sorted, and agree with each `_func`'s
    /// own entry: that is what makes a binary search over it meaningful, and
    /// it tells a real pclntab from bytes that happen to look like a header.
    fn check_functab(&self, data: &[u8]) -> Result<()> {
        let len = self
            .nfunc
            .checked_mul(2)
            .and_then(|n| n.checked_add(1))
            .and_then(|n| n.checked_mul(self.field_size()))
            .and_then(|n| n.checked_add(self.functab))
            .context("pclntab nfunc too large")?;
        ensure!(len <= data.len(), "pclntab function table truncated");
        let mut previous = 0;
        for i in 0..=self.nfunc {
            let raw = self
                .functab_raw(data, i)
                .context("pclntab function table truncated")?;
            ensure!(raw >= previous, "pclntab function table not sorted at {i}");
            previous = raw;
            if i == self.nfunc {
                break;
            }
            let func = self.func(data, i).context("pclntab funcoff out of range")?;
            ensure!(
                self.func_raw_entry(data, func) == Some(raw)
                    && self.func_field(data, func, FIELD_CUOFFSET).is_some(),
                "pclntab function {i} is inconsistent with the function table"
            );
        }
        self.text_range(data)
            .context("pclntab text range overflows")?;
        Ok(())
    }

    /// Size of one function-table field.
    fn field_size(&self) -> usize {
        match self.version {
            Version::Go116 => self.ptr_size,
            _ => 4,
        }
    }

    /// Entry `i` of the function table as stored (offset or address).
    fn functab_raw(&self, data: &[u8], i: usize) -> Option<u64> {
        let sz = self.field_size();
        let off = self.functab.checked_add(i.checked_mul(2 * sz)?)?;
        read_word(data, off, sz, self.big_endian)
    }

    fn pc(&self, data: &[u8], i: usize) -> Option<u64> {
        self.functab_raw(data, i)?.checked_add(self.text_start)
    }

    fn text_range(&self, data: &[u8]) -> Option<Range<u64>> {
        Some(self.pc(data, 0)?..self.pc(data, self.nfunc)?)
    }

    /// Offset of function `i`'s `_func`.
    fn func(&self, data: &[u8], i: usize) -> Option<usize> {
        let sz = self.field_size();
        let off = self
            .functab
            .checked_add(i.checked_mul(2)?.checked_add(1)?.checked_mul(sz)?)?;
        let funcoff = read_word(data, off, sz, self.big_endian)?;
        self.functab.checked_add(usize::try_from(funcoff).ok()?)
    }

    /// Size of the `_func` entry field.
    fn entry_size(&self) -> usize {
        match self.version {
            Version::Go116 => self.ptr_size,
            _ => 4,
        }
    }

    fn func_raw_entry(&self, data: &[u8], func: usize) -> Option<u64> {
        read_word(data, func, self.entry_size(), self.big_endian)
    }

    /// Field `n` (1-based, after the entry) of the `_func` at `func`.
    fn func_field(&self, data: &[u8], func: usize, n: usize) -> Option<u32> {
        let off = func
            .checked_add(self.entry_size())?
            .checked_add((n - 1) * 4)?;
        read_u32(data, off, self.big_endian)
    }

    fn entry_of(&self, data: &[u8], name: &[u8]) -> Option<u64> {
        (0..self.nfunc).find_map(|i| {
            let func = self.func(data, i)?;
            let name_off = self.func_field(data, func, FIELD_NAMEOFF)?;
            let found = c_str(data, self.funcnametab.checked_add(name_off as usize)?)?;
            (found == name).then(|| self.pc(data, i)).flatten()
        })
    }

    /// Offset of the bytes after `_func`'s `u32` fields: `funcID`, `flag`,
    /// a pad byte and `nfuncdata`, then the pcdata and funcdata offsets.
    fn func_tail(&self, func: usize) -> Option<usize> {
        let words = if self.version == Version::Go120 { 9 } else { 8 };
        func.checked_add(self.entry_size())?.checked_add(words * 4)
    }

    /// `_func`'s pcdata table `i` (an offset into `pctab`).
    fn pcdata(&self, data: &[u8], func: usize, i: usize) -> Option<u32> {
        let npcdata = self.func_field(data, func, FIELD_NPCDATA)? as usize;
        if i >= npcdata {
            return None;
        }
        let off = self.func_tail(func)?.checked_add(4 + i * 4)?;
        read_u32(data, off, self.big_endian).filter(|&table| table != 0)
    }

    /// `_func`'s funcdata `i` (an offset from `go:func.*`).
    fn funcdata(&self, data: &[u8], func: usize, i: usize) -> Option<u32> {
        let tail = self.func_tail(func)?;
        let nfuncdata = usize::from(*data.get(tail + 3)?);
        if i >= nfuncdata {
            return None;
        }
        let npcdata = self.func_field(data, func, FIELD_NPCDATA)? as usize;
        let off = tail.checked_add(4 + npcdata * 4 + i * 4)?;
        read_u32(data, off, self.big_endian).filter(|&off| off != u32::MAX)
    }

    /// The pc in the function itself that `vaddr`'s inlined code stands
    /// for: each inlined call's `parentPc`, outwards (runtime's
    /// `inlineUnwinder`). `vaddr` itself when it is not inlined code, or when
    /// the tree does not hold together (a parent outside the function `entry
    /// ..end`: a `go:func.*` found at the wrong place in an unknown layout):
    /// the inlined code's own line then, never a made-up one.
    fn outermost_pc(
        &self,
        data: &[u8],
        func: usize,
        entry: u64,
        end: u64,
        vaddr: u64,
        gofunc: &[u8],
    ) -> u64 {
        // Go 1.18/1.19 `inlinedCall`: parent i16, funcID u8, pad, file i32,
        // line i32, func i32, parentPc i32; 1.20+: funcID u8, pad [3],
        // nameOff i32, parentPc i32, startLine i32.
        let (size, parent_pc_at) = match self.version {
            Version::Go116 => return vaddr,
            Version::Go118 => (20, 16),
            Version::Go120 => (16, 8),
        };
        let (Some(index_table), Some(tree)) = (
            self.pcdata(data, func, PCDATA_INL_TREE_INDEX),
            self.funcdata(data, func, FUNCDATA_INL_TREE),
        ) else {
            return vaddr;
        };
        let mut pc = vaddr;
        for _ in 0..MAX_INLINE_DEPTH {
            let Some(index) = self.pcvalue(data, index_table, entry, pc) else {
                break;
            };
            let Ok(index) = usize::try_from(index) else {
                break; // -1: not inlined code
            };
            let parent = (tree as usize)
                .checked_add(index * size + parent_pc_at)
                .and_then(|off| read_u32(gofunc, off, self.big_endian));
            match parent.and_then(|p| entry.checked_add(u64::from(p))) {
                Some(parent) if parent == pc => break,
                Some(parent) if (entry..end).contains(&parent) => pc = parent,
                _ => return vaddr,
            }
        }
        pc
    }

    fn lookup(&self, data: &[u8], vaddr: u64, gofunc: Option<&[u8]>) -> Option<GoFrame> {
        let text = self.text_range(data)?;
        if !text.contains(&vaddr) {
            return None;
        }
        // The last function whose entry is at or below vaddr: pc(lo) <= vaddr
        // < pc(hi) throughout.
        let (mut lo, mut hi) = (0, self.nfunc);
        while hi - lo > 1 {
            let mid = lo + (hi - lo) / 2;
            if self.pc(data, mid)? <= vaddr {
                lo = mid;
            } else {
                hi = mid;
            }
        }
        let entry = self.pc(data, lo)?;
        let func = self.func(data, lo)?;
        let name_off = self.func_field(data, func, FIELD_NAMEOFF)?;
        let name = c_str(data, self.funcnametab.checked_add(name_off as usize)?)?;
        let line = self
            .func_field(data, func, FIELD_PCLN)
            .and_then(|table| self.pcvalue(data, table, entry, vaddr))
            .and_then(|line| u32::try_from(line).ok());
        let file = self.file(data, func, entry, vaddr);
        let end = self.pc(data, lo + 1)?;
        let outer = gofunc.map_or(vaddr, |g| {
            self.outermost_pc(data, func, entry, end, vaddr, g)
        });
        let (function_file, function_line) = if outer == vaddr {
            (file.clone(), line)
        } else {
            (
                self.file(data, func, entry, outer),
                self.func_field(data, func, FIELD_PCLN)
                    .and_then(|table| self.pcvalue(data, table, entry, outer))
                    .and_then(|line| u32::try_from(line).ok()),
            )
        };
        Some(GoFrame {
            function: String::from_utf8_lossy(name).into_owned(),
            entry,
            file,
            line,
            function_file,
            function_line,
        })
    }

    fn file(&self, data: &[u8], func: usize, entry: u64, vaddr: u64) -> Option<String> {
        let table = self.func_field(data, func, FIELD_PCFILE)?;
        let file_no = u32::try_from(self.pcvalue(data, table, entry, vaddr)?).ok()?;
        let cu = self.func_field(data, func, FIELD_CUOFFSET)?;
        let index = usize::try_from(cu.checked_add(file_no)?).ok()?;
        let name_off = read_u32(
            data,
            self.cutab.checked_add(index.checked_mul(4)?)?,
            self.big_endian,
        )?;
        if name_off == u32::MAX {
            return None;
        }
        let name = c_str(data, self.filetab.checked_add(name_off as usize)?)?;
        Some(String::from_utf8_lossy(name).into_owned())
    }

    /// The value the pcvalue table at `table` (an offset into `pctab`) gives
    /// `target`, for a function starting at `entry`; like the runtime's
    /// `pcvalue`, `None` if the table is absent or ends before `target`.
    fn pcvalue(&self, data: &[u8], table: u32, entry: u64, target: u64) -> Option<i32> {
        if table == 0 {
            return None;
        }
        let mut pos = self.pctab.checked_add(table as usize)?;
        let mut pc = entry;
        let mut value: i32 = -1;
        loop {
            // A zero value delta ends the table, except in the first pair
            // (Go's test is "pc is still at entry", which we copy exactly).
            let (delta, n) = read_varint(data, pos)?;
            if delta == 0 && pc != entry {
                return None;
            }
            pos = pos.checked_add(n)?;
            let delta = ((delta >> 1) as i32) ^ -((delta & 1) as i32);
            value = value.wrapping_add(delta);
            let (pc_delta, n) = read_varint(data, pos)?;
            pos = pos.checked_add(n)?;
            pc = pc.checked_add(u64::from(pc_delta) * u64::from(self.quantum))?;
            if target < pc {
                return Some(value);
            }
        }
    }
}

/// The pclntab's bytes (to the end of the section or segment holding it) and
/// its virtual address.
fn find_pclntab<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
) -> Result<Option<(&'data [u8], u64)>> {
    for name in SECTION_NAMES {
        if let Some(section) = file.section_by_name(name) {
            let data = section.data().map_err(|e| anyhow!("reading {name}: {e}"))?;
            if !data.is_empty() {
                return Ok(Some((data, section.address())));
            }
        }
    }
    // Merged away by an external linker: search, but only in Go binaries
    // (or ones without section headers, which could be anything).
    let has_sections = file.sections().next().is_some();
    let is_go = [".go.buildinfo", ".note.go.buildid"]
        .iter()
        .any(|name| file.section_by_name(name).is_some());
    if has_sections && !is_go {
        return Ok(None);
    }
    let mut text = Vec::new();
    let mut data = Vec::new();
    if has_sections {
        for section in file.sections() {
            let SectionFlags::Elf { sh_flags, .. } = section.flags() else {
                continue;
            };
            let range = section.address()..section.address().saturating_add(section.size());
            if sh_flags.contains(elf::SHF_EXECINSTR) {
                text.push(range);
            } else if sh_flags.contains(elf::SHF_ALLOC)
                && let Ok(bytes) = section.data()
            {
                data.push((bytes, section.address()));
            }
        }
    } else {
        for segment in file.segments() {
            let SegmentFlags::Elf { p_flags, .. } = segment.flags() else {
                continue;
            };
            if p_flags.contains(elf::PF_X) {
                text.push(segment.address()..segment.address().saturating_add(segment.size()));
            }
            if let Ok(bytes) = segment.data() {
                data.push((bytes, segment.address()));
            }
        }
    }
    for (bytes, address) in data {
        if let Some(found) = scan(bytes, address, file, &text) {
            return Ok(Some(found));
        }
    }
    Ok(None)
}

/// The first pclntab in `bytes` (at virtual address `address`) whose
/// functions lie in one of the `text` ranges. The header holds pointer-sized
/// words, so it is at least 4-aligned.
fn scan<'data, R: ReadRef<'data>>(
    bytes: &'data [u8],
    address: u64,
    file: &object::File<'data, R>,
    text: &[Range<u64>],
) -> Option<(&'data [u8], u64)> {
    let skip = ((4 - address % 4) % 4) as usize;
    (skip..bytes.len()).step_by(4).find_map(|off| {
        let candidate = &bytes[off..];
        sniff(candidate)?;
        let at = address.checked_add(off as u64)?;
        let text_start = relocated_text_start(file, candidate, at);
        let layout = Layout::parse(candidate, text_start).ok()?;
        let functions = layout.text_range(candidate)?;
        text.iter()
            .any(|t| t.start <= functions.start && functions.end <= t.end)
            .then_some((candidate, at))
    })
}

/// Offset of `gofunc` in `runtime.moduledata`, by pclntab format: Go
/// 1.18/1.19, and 1.20+ (which added `covctrs` and `ecovctrs` before it).
/// Read from the DWARF of Debian's Go 1.19 and 1.23 builds.
const MODULEDATA_GOFUNC: [(Version, usize); 2] = [(Version::Go118, 304), (Version::Go120, 320)];

/// `go:func.*`, found through `runtime.firstmoduledata` (in `.noptrdata`),
/// whose first word points at the pclntab and second at its function name
/// table; in a PIE those words are dynamic relocations.
fn find_gofunc<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
    layout: &Layout,
    pclntab_address: u64,
) -> Option<GoFunc> {
    let gofunc_at = MODULEDATA_GOFUNC
        .iter()
        .find(|(version, _)| *version == layout.version)?
        .1;
    if layout.ptr_size != 8 || layout.big_endian {
        return None;
    }
    let noptrdata = file.section_by_name(".noptrdata")?;
    let bytes = noptrdata.data().ok()?;
    let base = noptrdata.address();
    // Words the loader fills in (PIE): address -> value.
    let relocated: std::collections::HashMap<u64, u64> = file
        .dynamic_relocations()
        .map(|relocations| {
            relocations
                .filter(|(offset, _)| (base..base + bytes.len() as u64).contains(offset))
                .filter_map(|(offset, r)| Some((offset, u64::try_from(r.addend()).ok()?)))
                .collect()
        })
        .unwrap_or_default();
    let word = |off: usize| -> Option<u64> {
        let stored = read_word(bytes, off, 8, false)?;
        Some(if stored == 0 {
            relocated.get(&(base + off as u64)).copied().unwrap_or(0)
        } else {
            stored
        })
    };
    let names = pclntab_address.checked_add(layout.funcnametab as u64)?;
    let moduledata = (0..bytes.len().saturating_sub(gofunc_at + 8))
        .step_by(8)
        .find(|&off| word(off) == Some(pclntab_address) && word(off + 8) == Some(names))?;
    let gofunc = word(moduledata + gofunc_at)?;
    let section = file
        .sections()
        .find(|s| (s.address()..s.address() + s.size()).contains(&gofunc))?;
    let data = section.data().ok()?;
    let start = usize::try_from(gofunc - section.address()).ok()?;
    Some(GoFunc {
        bytes: data.get(start..)?.to_vec(),
    })
}

/// `textStart` when the header's copy is 0 because the linker left it to a
/// dynamic relocation (a PIE): the relocation's addend, else the
/// `runtime.text` symbol, else the `.text` section. `None` when the header
/// can be trusted (or is not Go 1.18+).
fn relocated_text_start<'data, R: ReadRef<'data>>(
    file: &object::File<'data, R>,
    pclntab: &[u8],
    address: u64,
) -> Option<u64> {
    let (version, big_endian) = sniff(pclntab)?;
    if version == Version::Go116 {
        return None;
    }
    let ptr_size = usize::from(pclntab[7]);
    let field = 8 + 2 * ptr_size;
    if read_word(pclntab, field, ptr_size, big_endian)? != 0 {
        return None;
    }
    let field_address = address.checked_add(field as u64)?;
    if let Some(relocations) = file.dynamic_relocations() {
        for (offset, relocation) in relocations {
            if offset == field_address && !relocation.has_implicit_addend() {
                return u64::try_from(relocation.addend()).ok();
            }
        }
    }
    if let Some(symbol) = file.symbol_by_name("runtime.text") {
        return Some(symbol.address());
    }
    file.section_by_name(".text").map(|text| text.address())
}

#[cfg(test)]
mod tests {
    use std::{
        collections::BTreeSet,
        io::Write,
        process::{Command, Stdio},
        sync::OnceLock,
    };

    use super::*;

    const FIXTURE: &str = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../tests/fixtures/gopclntab/main.go"
    );

    /// The fixture built several ways, read into memory (the build directory
    /// is removed once they are read).
    struct Builds {
        source: String,
        plain: Vec<u8>,
        stripped: Vec<u8>,
        pie: Vec<u8>,
        pie_stripped: Vec<u8>,
        ext_pie: Vec<u8>,
        ext_pie_stripped: Vec<u8>,
    }

    /// A scratch directory, removed when dropped.
    fn scratch_dir(what: &str) -> tempfile::TempDir {
        tempfile::Builder::new()
            .prefix(&format!("leakbpf-gopclntab-{what}-"))
            .tempdir()
            .unwrap()
    }

    fn go(dir: &Path, cgo: bool) -> Command {
        let mut cmd = Command::new("go");
        cmd.current_dir(dir)
            .env("GO111MODULE", "off")
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath"))
            .env("HOME", dir)
            .env("GOTOOLCHAIN", "local")
            .env("CGO_ENABLED", if cgo { "1" } else { "0" })
            .env_remove("GOFLAGS");
        cmd
    }

    fn run_go(mut cmd: Command) -> std::process::Output {
        match cmd.output() {
            Ok(output) => output,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => panic!(
                "`go` is not in PATH: the gopclntab tests build Go programs and need Go \
                 (Debian: apt-get install golang-1.19-go, then put /usr/lib/go-1.19/bin in PATH)"
            ),
            Err(e) => panic!("running go: {e}"),
        }
    }

    fn builds() -> &'static Builds {
        static BUILDS: OnceLock<Builds> = OnceLock::new();
        BUILDS.get_or_init(|| {
            let scratch = scratch_dir("build");
            let dir = scratch.path();
            let build = |out: &str, cgo: bool, args: &[&str]| -> Vec<u8> {
                let mut cmd = go(dir, cgo);
                cmd.arg("build").arg("-o").arg(out).args(args).arg(FIXTURE);
                let output = run_go(cmd);
                assert!(
                    output.status.success(),
                    "go build {args:?} failed: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                std::fs::read(dir.join(out)).unwrap()
            };
            Builds {
                source: std::fs::read_to_string(FIXTURE).unwrap(),
                plain: build("plain", false, &[]),
                stripped: build("stripped", false, &["-ldflags=-s -w"]),
                pie: build("pie", false, &["-buildmode=pie"]),
                pie_stripped: build("pie-stripped", false, &["-buildmode=pie", "-ldflags=-s -w"]),
                ext_pie: build(
                    "ext-pie",
                    true,
                    &["-buildmode=pie", "-ldflags=-linkmode=external"],
                ),
                ext_pie_stripped: build(
                    "ext-pie-stripped",
                    true,
                    &["-buildmode=pie", "-ldflags=-linkmode=external -s -w"],
                ),
            }
        })
    }

    /// Line number (1-based) of the fixture line holding `marker:NAME`.
    fn marker(name: &str) -> u32 {
        let tag = format!("marker:{name}");
        let index = builds()
            .source
            .lines()
            .position(|l| l.trim_end().ends_with(&tag))
            .unwrap_or_else(|| panic!("no {tag} in the fixture"));
        u32::try_from(index + 1).unwrap()
    }

    /// Address and size of `name` in an unstripped binary's .symtab.
    fn symbol(elf: &[u8], name: &str) -> (u64, u64) {
        let file = object::File::parse(elf).unwrap();
        assert!(
            file.section_by_name(".symtab").is_some(),
            "expected a .symtab"
        );
        let symbol = file
            .symbol_by_name(name)
            .unwrap_or_else(|| panic!("no symbol {name}"));
        (symbol.address(), symbol.size())
    }

    fn go_symbols(elf: &[u8]) -> GoSymbols {
        GoSymbols::from_bytes(elf).unwrap().expect("a Go binary")
    }

    fn section_names(elf: &[u8]) -> Vec<String> {
        let file = object::File::parse(elf).unwrap();
        file.sections()
            .filter_map(|s| s.name().ok().map(str::to_owned))
            .collect()
    }

    #[test]
    #[ignore = "host: builds Go binaries (golang-go); `./x test` runs it"]
    fn stripped_binary_resolves_to_symtab_addresses() {
        let b = builds();
        let names = section_names(&b.stripped);
        assert!(names.iter().any(|n| n == ".gopclntab"), "{names:?}");
        assert!(
            !names
                .iter()
                .any(|n| n == ".symtab" || n.starts_with(".debug") || n.starts_with(".zdebug")),
            "stripped binary still has symbols: {names:?}"
        );
        let symbols = go_symbols(&b.stripped);
        let (entry, _) = symbol(&b.plain, "main.leakOne");
        let frame = symbols.lookup(entry).unwrap();
        assert_eq!(frame.function, "main.leakOne");
        assert_eq!(frame.entry, entry);
        assert!(
            frame
                .file
                .as_deref()
                .unwrap()
                .ends_with("/gopclntab/main.go"),
            "{frame:?}"
        );
        assert_eq!(frame.line, Some(marker("leakOne-func")));
    }

    #[test]
    #[ignore = "host: builds Go binaries (golang-go); `./x test` runs it"]
    fn lines_inside_functions() {
        let b = builds();
        let symbols = go_symbols(&b.stripped);
        let (entry, size) = symbol(&b.plain, "main.leakOne");
        assert!(size > 0);
        let mut lines = BTreeSet::new();
        for vaddr in entry..entry + size {
            let frame = symbols.lookup(vaddr).unwrap();
            assert_eq!(
                (frame.function.as_str(), frame.entry),
                ("main.leakOne", entry)
            );
            assert!(frame.file.unwrap().ends_with("main.go"));
            lines.insert(frame.line.unwrap());
        }
        let (first, last) = (marker("leakOne-func"), marker("leakOne-end"));
        assert!(lines.contains(&marker("leakOne-body")), "{lines:?}");
        assert!(
            lines.iter().all(|l| (first..=last).contains(l)),
            "{lines:?}"
        );

        let (entry, size) = symbol(&b.plain, "main.(*pool).open");
        let lines: BTreeSet<_> = (entry..entry + size)
            .map(|vaddr| {
                let frame = symbols.lookup(vaddr).unwrap();
                assert_eq!(
                    (frame.function.as_str(), frame.entry),
                    ("main.(*pool).open", entry)
                );
                frame.line
            })
            .collect();
        assert!(lines.contains(&Some(marker("open-body"))), "{lines:?}");
    }

    #[test]
    #[ignore = "host: builds Go binaries (golang-go); `./x test` runs it"]
    fn runtime_main_and_text_bounds() {
        let b = builds();
        let symbols = go_symbols(&b.stripped);
        let (entry, _) = symbol(&b.plain, "runtime.main");
        let frame = symbols.lookup(entry + 1).unwrap();
        assert_eq!(
            (frame.function.as_str(), frame.entry),
            ("runtime.main", entry)
        );
        assert!(frame.file.unwrap().ends_with("src/runtime/proc.go"));
        assert!(frame.line.is_some());

        let (text, _) = symbol(&b.plain, "runtime.text");
        let (etext, _) = symbol(&b.plain, "runtime.etext");
        assert_eq!(symbols.text_range(), text..etext);
        assert!(symbols.lookup(text).is_some());
        assert!(symbols.lookup(etext - 1).is_some());
        for outside in [0, text - 1, etext, etext + 0x1000, u64::MAX] {
            assert_eq!(symbols.lookup(outside), None, "{outside:#x}");
        }
    }

    /// Every function symbol of the unstripped binaries resolves to itself,
    /// through both the stripped and the unstripped binary's table.
    #[test]
    #[ignore = "host: builds Go binaries (golang-go); `./x test` runs it"]
    fn agrees_with_symtab() {
        for (plain, stripped) in [
            (&builds().plain, &builds().stripped),
            (&builds().pie, &builds().pie_stripped),
            (&builds().ext_pie, &builds().ext_pie_stripped),
        ] {
            let symbols = go_symbols(stripped);
            let unstripped = go_symbols(plain);
            let file = object::File::parse(plain.as_slice()).unwrap();
            let text = symbols.text_range();
            let mut checked = 0;
            for sym in file.symbols() {
                // Assembly functions' symbols carry their ABI; the
                // pclntab names them without it.
                let name = sym.name().unwrap().trim_end_matches(".abi0");
                if sym.kind() != object::SymbolKind::Text
                    || sym.size() == 0
                    || !text.contains(&sym.address())
                {
                    continue;
                }
                for table in [&symbols, &unstripped] {
                    let frame = table.lookup(sym.address()).unwrap();
                    assert_eq!(
                        (elide_brackets(&frame.function), frame.entry),
                        (elide_brackets(name), sym.address())
                    );
                }
                checked += 1;
            }
            assert!(checked > 1000, "only {checked} symbols compared");
        }
    }

    /// `name` with each outermost `[...]` group's contents replaced by
    /// `...`, as the linker writes some names (`type..eq.[...]T`) into the
    /// pclntab while .symtab keeps them whole.
    fn elide_brackets(name: &str) -> String {
        let mut out = String::new();
        let mut depth = 0usize;
        for c in name.chars() {
            match c {
                '[' => {
                    if depth == 0 {
                        out.push_str("[...");
                    }
                    depth += 1;
                }
                ']' if depth > 0 => {
                    depth -= 1;
                    if depth == 0 {
                        out.push(']');
                    }
                }
                _ if depth == 0 => out.push(c),
                _ => {}
            }
        }
        out
    }

    #[test]
    #[ignore = "host: builds Go binaries (golang-go); `./x test` runs it"]
    fn finds_pclntab_in_pie_and_external_links() {
        let b = builds();
        assert!(
            section_names(&b.pie_stripped)
                .iter()
                .any(|n| n == ".data.rel.ro.gopclntab")
        );
        assert!(
            !section_names(&b.ext_pie_stripped)
                .iter()
                .any(|n| n.contains("pclntab"))
        );
        for (plain, stripped) in [(&b.pie, &b.pie_stripped), (&b.ext_pie, &b.ext_pie_stripped)] {
            let symbols = go_symbols(stripped);
            for name in ["main.leakOne", "main.(*pool).open", "runtime.main"] {
                let (entry, _) = symbol(plain, name);
                let frame = symbols.lookup(entry + 1).unwrap();
                assert_eq!((frame.function.as_str(), frame.entry), (name, entry));
            }
            let (entry, _) = symbol(plain, "main.leakOne");
            assert_eq!(
                symbols.lookup(entry).unwrap().line,
                Some(marker("leakOne-func"))
            );
        }
    }

    /// File and line for addresses across the text, against Go's own
    /// `go tool addr2line` (which reads the same table with `debug/gosym`).
    #[test]
    #[ignore = "host: builds Go binaries (golang-go); `./x test` runs it"]
    fn matches_go_tool_addr2line() {
        let b = builds();
        let symbols = go_symbols(&b.stripped);
        let scratch = scratch_dir("addr2line");
        let dir = scratch.path();
        let binary = dir.join("stripped");
        std::fs::write(&binary, &b.stripped).unwrap();
        let text = symbols.text_range();
        let addresses: Vec<u64> = (text.start - 64..text.end + 64).step_by(37).collect();
        let mut cmd = go(dir, false);
        cmd.args(["tool", "addr2line"])
            .arg(&binary)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("running go tool addr2line");
        let input = addresses
            .iter()
            .map(|a| format!("{a:#x}\n"))
            .collect::<Vec<_>>()
            .concat();
        // Write from another thread: addr2line answers as it reads and would
        // block on a full stdout pipe while we block writing its stdin.
        let mut stdin = child.stdin.take().unwrap();
        let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
        let output = child.wait_with_output().unwrap();
        writer.join().unwrap().unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        let stdout = String::from_utf8(output.stdout).unwrap();
        let lines: Vec<&str> = stdout.lines().collect();
        assert_eq!(lines.len(), 2 * addresses.len());
        for (address, pair) in addresses.iter().zip(lines.chunks(2)) {
            let (function, position) = (pair[0], pair[1]);
            let (file, line) = position.rsplit_once(':').unwrap();
            let line: i64 = line.parse().unwrap();
            match symbols.lookup(*address) {
                None => assert_eq!(function, "?", "{address:#x}"),
                Some(frame) => {
                    assert_eq!(frame.function, function, "{address:#x}");
                    assert_eq!(frame.file.as_deref().unwrap_or(""), file, "{address:#x}");
                    assert_eq!(frame.line.map_or(-1, i64::from), line, "{address:#x}");
                }
            }
        }
    }

    #[test]
    fn non_go_files_give_none() {
        assert!(
            GoSymbols::from_elf_path(Path::new("/bin/true"))
                .unwrap()
                .is_none()
        );
        assert!(
            GoSymbols::from_elf_path(Path::new(FIXTURE))
                .unwrap()
                .is_none()
        );
        assert!(GoSymbols::from_bytes(&[]).unwrap().is_none());
        assert!(GoSymbols::from_elf_path(Path::new("/nonexistent/leakbpf")).is_err());
    }

    #[test]
    #[ignore = "host: builds Go binaries (golang-go); `./x test` runs it"]
    fn from_elf_path_reads_go_binaries() {
        let b = builds();
        let scratch = scratch_dir("path");
        let path = scratch.path().join("ext-pie-stripped");
        std::fs::write(&path, &b.ext_pie_stripped).unwrap();
        let from_path = GoSymbols::from_elf_path(&path).unwrap().unwrap();
        let from_bytes = go_symbols(&b.ext_pie_stripped);
        assert_eq!(from_path.text_range(), from_bytes.text_range());
        let (entry, _) = symbol(&b.ext_pie, "main.leakOne");
        assert_eq!(from_path.lookup(entry), from_bytes.lookup(entry));
        assert_eq!(from_path.lookup(entry).unwrap().function, "main.leakOne");
    }

    /// A linker may leave a PIE's `textStart` as 0 in the file for a dynamic
    /// relocation to fill in (ours write it, so zero it by hand): the
    /// relocation's addend, or for a non-PIE `.text`, must stand in.
    #[test]
    #[ignore = "host: builds Go binaries (golang-go); `./x test` runs it"]
    fn zero_text_start_falls_back() {
        let b = builds();
        for elf in [&b.stripped, &b.pie_stripped, &b.ext_pie_stripped] {
            let header = [0xf0, 0xff, 0xff, 0xff, 0, 0, 1, 8];
            let at = elf
                .windows(8)
                .position(|w| w == header)
                .expect("a Go 1.18+ amd64 pclntab");
            let mut zeroed = elf.clone();
            zeroed[at + 24..at + 32].fill(0);
            let (original, patched) = (go_symbols(elf), go_symbols(&zeroed));
            let text = original.text_range();
            assert!(text.start > 0);
            assert_eq!(patched.text_range(), text);
            for vaddr in text.step_by(4093) {
                assert_eq!(patched.lookup(vaddr), original.lookup(vaddr));
            }
        }
    }

    /// The bytes of the stripped build's pclntab and its text start.
    fn real_pclntab() -> (Vec<u8>, u64) {
        let elf = &builds().stripped;
        let file = object::File::parse(elf.as_slice()).unwrap();
        let data = file
            .section_by_name(".gopclntab")
            .unwrap()
            .data()
            .unwrap()
            .to_vec();
        (data, go_symbols(elf).text_range().start)
    }

    /// Go 1.20 changed the magic and appended `startLine` to `_func`; the
    /// fields we read did not move, so a 1.19 table relabelled 1.20 must read
    /// the same.
    #[test]
    fn go120_magic() {
        let (mut data, text) = real_pclntab();
        let go119 = GoSymbols::from_pclntab(&data, None).unwrap();
        data[..4].copy_from_slice(&MAGIC_GO120.to_le_bytes());
        let go120 = GoSymbols::from_pclntab(&data, None).unwrap();
        assert_eq!(go120.layout.version, Version::Go120);
        for vaddr in (text..go119.text_range().end).step_by(101) {
            assert_eq!(go119.lookup(vaddr), go120.lookup(vaddr));
        }
    }

    /// Hand-built tables for what no installed Go produces: Go 1.16's
    /// pointer-sized function table, big-endian and 32-bit targets.
    struct Synthetic {
        version: Version,
        big_endian: bool,
        ptr_size: usize,
        quantum: u8,
    }

    impl Synthetic {
        const TEXT: u64 = 0x10_0000;

        fn word(&self, out: &mut Vec<u8>, value: u64) {
            match (self.ptr_size, self.big_endian) {
                (4, false) => out.extend((value as u32).to_le_bytes()),
                (4, true) => out.extend((value as u32).to_be_bytes()),
                (_, false) => out.extend(value.to_le_bytes()),
                (_, true) => out.extend(value.to_be_bytes()),
            }
        }

        fn u32(&self, out: &mut Vec<u8>, value: u32) {
            out.extend(if self.big_endian {
                value.to_be_bytes()
            } else {
                value.to_le_bytes()
            });
        }

        fn varint(out: &mut Vec<u8>, mut v: u32) {
            while v >= 0x80 {
                out.push(v as u8 | 0x80);
                v >>= 7;
            }
            out.push(v as u8);
        }

        /// A pcvalue table from (value, bytes of code) runs.
        fn pcvalue(&self, out: &mut Vec<u8>, runs: &[(i32, u64)]) {
            let mut previous = -1;
            for &(value, len) in runs {
                let delta = value - previous;
                Self::varint(out, ((delta << 1) ^ (delta >> 31)) as u32);
                Self::varint(out, (len / u64::from(self.quantum)) as u32);
                previous = value;
            }
            out.push(0);
        }

        /// Two functions: `pkg.a` at TEXT+0 (0x40 bytes, a.go lines 10 then
        /// 11 from +0x20) and `pkg.(*T).b` at TEXT+0x40 (0x100 bytes, b.go
        /// line 300, then line 7 of a.go from +0x80 as if inlined).
        fn build(&self) -> Vec<u8> {
            let files = ["dir/a.go", "dir/b.go"];
            let names = ["pkg.a", "pkg.(*T).b"];
            let mut funcnametab = Vec::new();
            let mut name_offs = Vec::new();
            for name in names {
                name_offs.push(funcnametab.len() as u32);
                funcnametab.extend(name.as_bytes());
                funcnametab.push(0);
            }
            let mut filetab = Vec::new();
            let mut cutab = Vec::new();
            for file in files {
                self.u32(&mut cutab, filetab.len() as u32);
                filetab.extend(file.as_bytes());
                filetab.push(0);
            }
            self.u32(&mut cutab, u32::MAX);
            let mut pctab = vec![0];
            let mut tables = Vec::new();
            for runs in [
                &[(0, 0x40)][..],
                &[(10, 0x20), (11, 0x20)],
                &[(1, 0x80), (0, 0x80)],
                &[(300, 0x80), (7, 0x80)],
            ] {
                tables.push(pctab.len() as u32);
                self.pcvalue(&mut pctab, runs);
            }
            let entries = [0u64, 0x40, 0x140];
            let go116 = self.version == Version::Go116;
            let field = |s: &Self, out: &mut Vec<u8>, v: u64| {
                if go116 {
                    s.word(out, v);
                } else {
                    s.u32(out, v as u32);
                }
            };
            let fsz = if go116 { self.ptr_size } else { 4 };
            let mut functab = Vec::new();
            let funcs_start = 5 * fsz;
            let func_len = fsz + 8 * 4 + 8;
            let entry = |offset: u64| if go116 { Self::TEXT + offset } else { offset };
            for (i, &offset) in entries.iter().enumerate() {
                field(self, &mut functab, entry(offset));
                if i < 2 {
                    field(self, &mut functab, (funcs_start + i * func_len) as u64);
                }
            }
            for (i, &name_off) in name_offs.iter().enumerate() {
                field(self, &mut functab, entry(entries[i]));
                let (pcfile, pcln) = (tables[2 * i], tables[2 * i + 1]);
                for v in [name_off, 0, 0, 0, pcfile, pcln, 0, 0] {
                    self.u32(&mut functab, v);
                }
                functab.extend([0; 8]);
            }
            let magic = match self.version {
                Version::Go116 => MAGIC_GO116,
                Version::Go118 => MAGIC_GO118,
                Version::Go120 => MAGIC_GO120,
            };
            let mut out = Vec::new();
            self.u32(&mut out, magic);
            out.extend([0, 0, self.quantum, self.ptr_size as u8]);
            let words = if go116 { 7 } else { 8 };
            let mut off = 8 + words * self.ptr_size;
            let mut offsets = Vec::new();
            for part in [&funcnametab, &cutab, &filetab, &pctab, &functab] {
                offsets.push(off as u64);
                off += part.len();
            }
            self.word(&mut out, 2);
            self.word(&mut out, 2);
            if !go116 {
                self.word(&mut out, Self::TEXT);
            }
            for o in offsets {
                self.word(&mut out, o);
            }
            for part in [funcnametab, cutab, filetab, pctab, functab] {
                out.extend(part);
            }
            out
        }
    }

    #[test]
    fn synthetic_tables() {
        let t = Synthetic::TEXT;
        for (version, big_endian, ptr_size, quantum) in [
            (Version::Go116, false, 8, 1),
            (Version::Go116, true, 4, 4),
            (Version::Go118, true, 4, 4),
            (Version::Go120, false, 8, 1),
            (Version::Go120, true, 8, 2),
        ] {
            let spec = Synthetic {
                version,
                big_endian,
                ptr_size,
                quantum,
            };
            let data = spec.build();
            let symbols = GoSymbols::from_pclntab(&data, None).unwrap();
            assert_eq!(symbols.layout.version, version);
            assert_eq!(symbols.text_range(), t..t + 0x140);
            let frame = |function: &str, entry, file: &str, line| GoFrame {
                function: function.into(),
                entry,
                file: Some(file.into()),
                line: Some(line),
                function_file: Some(file.into()),
                function_line: Some(line),
            };
            assert_eq!(symbols.lookup(t), Some(frame("pkg.a", t, "dir/a.go", 10)));
            assert_eq!(
                symbols.lookup(t + 0x1f),
                Some(frame("pkg.a", t, "dir/a.go", 10))
            );
            assert_eq!(
                symbols.lookup(t + 0x20),
                Some(frame("pkg.a", t, "dir/a.go", 11))
            );
            let b = t + 0x40;
            assert_eq!(
                symbols.lookup(b),
                Some(frame("pkg.(*T).b", b, "dir/b.go", 300))
            );
            assert_eq!(
                symbols.lookup(b + 0xc0),
                Some(frame("pkg.(*T).b", b, "dir/a.go", 7))
            );
            assert_eq!(symbols.lookup(t - 1), None);
            assert_eq!(symbols.lookup(t + 0x140), None);
        }
    }

    /// Truncated and corrupted tables and ELF files: errors or `None`, never
    /// a panic.
    #[test]
    #[ignore = "host: builds Go binaries (golang-go); `./x test` runs it"]
    fn malformed_input_does_not_panic() {
        let (data, text) = real_pclntab();
        let end = GoSymbols::from_pclntab(&data, None)
            .unwrap()
            .text_range()
            .end;
        let probes: Vec<u64> = (text - 16..end + 16).step_by(997).collect();
        let probe = |symbols: &GoSymbols| {
            for &p in &probes {
                let _ = symbols.lookup(p);
            }
        };
        let mut cuts: Vec<usize> = (0..200).collect();
        cuts.extend((200..data.len()).step_by(4099));
        for len in cuts {
            if let Ok(symbols) = GoSymbols::from_pclntab(&data[..len], None) {
                probe(&symbols);
            }
        }
        // xorshift64: corrupt a few bytes at random places, mostly in the
        // header and function table, sometimes anywhere.
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let hot = 0x200.min(data.len());
        for round in 0..3000 {
            let mut bad = data.clone();
            for _ in 0..=(next() % 4) {
                let at = if round % 2 == 0 {
                    next() as usize % hot
                } else {
                    next() as usize % bad.len()
                };
                bad[at] = next() as u8;
            }
            if let Ok(symbols) = GoSymbols::from_pclntab(&bad, None) {
                probe(&symbols);
            }
        }
        let elf = &builds().ext_pie_stripped;
        for _ in 0..300 {
            let mut bad = elf.clone();
            for _ in 0..=(next() % 8) {
                let at = next() as usize % 0x1000.min(bad.len());
                bad[at] = next() as u8;
            }
            if let Ok(Some(symbols)) = GoSymbols::from_bytes(&bad) {
                probe(&symbols);
            }
        }
        for len in [0, 3, 4, 16, 64, 0x40, 0x200, 0x1000] {
            let _ = GoSymbols::from_bytes(&elf[..len]);
        }
    }
}

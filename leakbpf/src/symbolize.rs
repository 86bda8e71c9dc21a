//! Turns stack addresses into frames with blazesym: user stacks through
//! /proc/PID (ELF symbols and DWARF, PIE and shared objects, files seen
//! through /proc/PID/map_files, so containers work), kernel stacks through
//! kallsyms. Where blazesym finds no name, the frame keeps its module and
//! offset, and a Go binary's own line table (.gopclntab, present even when
//! stripped) names it ([`crate::gopclntab`]).
use std::{cell::RefCell, collections::HashMap, rc::Rc};

use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer as Blaze,
        source::{Kernel, Process, Source},
    },
};
use serde::Serialize;

use crate::{
    gopclntab::GoSymbols,
    procmaps::{self, Mapping, Segments},
};

/// One stack frame, as reports print it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// Instruction pointer, as `0x...`.
    #[serde(serialize_with = "hex")]
    pub address: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// Offset of `address` from the symbol's start; without a symbol, the
    /// file offset in `module`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub offset: Option<u64>,
    /// The object file (executable or shared library).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub module: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub line: Option<u32>,
}

#[expect(
    clippy::trivially_copy_pass_by_ref,
    reason = "serde's serialize_with passes a reference"
)]
fn hex<S: serde::Serializer>(address: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{address:#x}"))
}

/// (device, inode) of a mapped file.
type FileId = (String, u64);

/// A Go binary's line table and how its file maps to addresses.
struct GoBinary {
    symbols: GoSymbols,
    segments: Segments,
}

pub struct Symbolizer {
    blaze: Blaze,
    /// By (device, inode); `None`: not a Go binary.
    go: RefCell<HashMap<FileId, Option<Rc<GoBinary>>>>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer {
            blaze: Blaze::new(),
            go: RefCell::new(HashMap::new()),
        }
    }
}

impl Symbolizer {
    /// Frames of a user stack taken in process `pid` (which must still run).
    pub fn user(&self, pid: u32, addresses: &[u64]) -> Vec<Frame> {
        let source = Source::Process(Process::new(Pid::from(pid)));
        let mut frames = self.symbolize(&source, addresses);
        if frames.iter().any(|frame| frame.symbol.is_none()) {
            self.fill_unresolved(pid, &mut frames);
        }
        frames
    }

    /// Module and offset for frames blazesym could not name, and the Go
    /// function where the module is a Go binary.
    fn fill_unresolved(&self, pid: u32, frames: &mut [Frame]) {
        let maps = procmaps::read(pid);
        for (index, frame) in frames.iter_mut().enumerate() {
            if frame.symbol.is_some() {
                continue;
            }
            let Some(mapping) = maps.iter().find(|m| m.range.contains(&frame.address)) else {
                continue;
            };
            let file_offset = mapping.file_offset_of(frame.address);
            frame.module = Some(mapping.path.clone());
            frame.offset = Some(file_offset);
            let Some(go) = self.go_binary(pid, mapping) else {
                continue;
            };
            // Outer frames hold return addresses: look up the call itself.
            let back = u64::from(index > 0);
            let Some(found) = go
                .segments
                .address_of(file_offset)
                .and_then(|vaddr| Some((vaddr, go.symbols.lookup(vaddr - back)?)))
            else {
                continue;
            };
            let (vaddr, function) = found;
            frame.symbol = Some(function.function);
            frame.offset = Some(vaddr - function.entry);
            frame.file = function.file;
            frame.line = function.line;
        }
    }

    fn go_binary(&self, pid: u32, mapping: &Mapping) -> Option<Rc<GoBinary>> {
        self.go
            .borrow_mut()
            .entry(mapping.file.clone())
            .or_insert_with(|| {
                let data = std::fs::read(mapping.map_file(pid)).ok()?;
                let symbols = GoSymbols::from_bytes(&data).ok()??;
                let segments = Segments::of(&object::File::parse(&*data).ok()?);
                Some(Rc::new(GoBinary { symbols, segments }))
            })
            .clone()
    }

    pub fn kernel(&self, addresses: &[u64]) -> Vec<Frame> {
        let source = Source::Kernel(Kernel::default());
        self.symbolize(&source, addresses)
    }

    fn symbolize(&self, source: &Source<'_>, addresses: &[u64]) -> Vec<Frame> {
        let unresolved = || {
            addresses
                .iter()
                .map(|&address| Frame {
                    address,
                    ..Frame::default()
                })
                .collect()
        };
        let Ok(symbolized) = self.blaze.symbolize(source, Input::AbsAddr(addresses)) else {
            return unresolved();
        };
        addresses
            .iter()
            .zip(symbolized)
            .map(|(&address, symbolized)| match symbolized {
                Symbolized::Sym(sym) => Frame {
                    address,
                    symbol: Some(sym.name.into_owned()),
                    offset: Some(sym.offset as u64),
                    module: sym.module.map(|m| m.to_string_lossy().into_owned()),
                    file: sym.code_info.as_ref().map(|info| {
                        let file = info.file.to_string_lossy();
                        match &info.dir {
                            Some(dir) => dir.join(&*file).display().to_string(),
                            None => file.into_owned(),
                        }
                    }),
                    line: sym.code_info.as_ref().and_then(|info| info.line),
                },
                Symbolized::Unknown(_) => Frame {
                    address,
                    ..Frame::default()
                },
            })
            .collect()
    }
}

//! Turns stack addresses into frames with blazesym: user stacks through
//! /proc/PID (ELF symbols and DWARF, PIE and shared objects), kernel stacks
//! through kallsyms. A frame that cannot be resolved keeps its address.
use blazesym::{
    Pid,
    symbolize::{
        Input, Symbolized, Symbolizer as Blaze,
        source::{Kernel, Process, Source},
    },
};
use serde::Serialize;

/// One stack frame, as reports print it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Frame {
    /// Instruction pointer, as `0x...`.
    #[serde(serialize_with = "hex")]
    pub address: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub symbol: Option<String>,
    /// Offset of `address` from the symbol's start.
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

fn hex<S: serde::Serializer>(address: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format!("{address:#x}"))
}

pub struct Symbolizer {
    blaze: Blaze,
}

impl Default for Symbolizer {
    fn default() -> Self {
        Symbolizer {
            blaze: Blaze::new(),
        }
    }
}

impl Symbolizer {
    /// Frames of a user stack taken in process `pid` (which must still run).
    pub fn user(&self, pid: u32, addresses: &[u64]) -> Vec<Frame> {
        let source = Source::Process(Process::new(Pid::from(pid)));
        self.symbolize(&source, addresses)
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

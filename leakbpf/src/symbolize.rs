//! Turns stack addresses into frames with blazesym: user stacks through
//! /proc/PID (ELF symbols and DWARF, PIE and shared objects, files seen
//! through /proc/PID/map_files, so containers work), kernel stacks through
//! kallsyms. Where blazesym finds no name, the frame keeps its module and
//! offset, and a Go binary's own line table (.gopclntab, present even when
//! stripped) names it ([`crate::gopclntab`]).
use std::{
    collections::HashSet,
    num::NonZeroUsize,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
        mpsc,
    },
};

use lru::LruCache;

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

/// Go binaries whose line tables are kept (least recently used go first).
const MAX_GO_BINARIES: usize = 32;
/// blazesym keeps what it opened (ELF files, DWARF) for the life of its
/// symbolizer and has no eviction: it is started afresh after this many
/// distinct processes, which bounds that memory on a host that runs for weeks.
const MAX_PROCESSES_PER_BLAZE: usize = 256;

/// What the symbolizer thread is asked to name.
enum Target {
    Process(u32),
    Kernel,
    /// Drop what blazesym and the Go tables cached (see
    /// [`Symbolizer::release_caches`]); answered with no frames.
    Release,
}

struct Job {
    target: Target,
    addresses: Vec<u64>,
    reply: mpsc::Sender<Vec<Frame>>,
}

/// Frames on their way from the symbolizer thread.
pub struct Pending(mpsc::Receiver<Vec<Frame>>, Vec<u64>);

impl Pending {
    /// Waits for them (unnamed frames if the thread is gone).
    pub fn wait(self) -> Vec<Frame> {
        self.0.recv().unwrap_or_else(|_| unresolved(&self.1))
    }
}

/// blazesym's symbolizer is not `Send` (it keeps `Rc`s): it lives on a
/// thread of its own with the Go line tables, and is asked over a channel.
/// So the rest of the stack pipeline can move between threads, and the
/// ring-buffer reader can hand a new stack over ([`Symbolizer::submit_user`])
/// and go on reading while it is named.
pub struct Symbolizer {
    jobs: mpsc::Sender<Job>,
    /// Times blazesym's caches were dropped, and Go tables evicted.
    evictions: Arc<AtomicU64>,
}

impl Default for Symbolizer {
    fn default() -> Self {
        let (jobs, queue) = mpsc::channel::<Job>();
        let evictions = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&evictions);
        // Ends when the symbolizer (the only sender) is dropped.
        let _ = std::thread::Builder::new()
            .name("leakbpf-symbols".into())
            .spawn(move || {
                // Made here: blazesym's symbolizer cannot cross threads.
                let mut worker = Worker {
                    blaze: Blaze::new(),
                    pids: HashSet::new(),
                    go: LruCache::new(NonZeroUsize::new(MAX_GO_BINARIES).expect("non-zero")),
                    evictions: counted,
                };
                for job in queue {
                    let frames = match job.target {
                        Target::Process(pid) => worker.user(pid, &job.addresses),
                        Target::Kernel => symbolize(
                            &worker.blaze,
                            &Source::Kernel(Kernel::default()),
                            &job.addresses,
                        ),
                        Target::Release => {
                            worker.release();
                            Vec::new()
                        }
                    };
                    let _ = job.reply.send(frames);
                }
            });
        Symbolizer { jobs, evictions }
    }
}

impl Symbolizer {
    /// Frames of a user stack taken in process `pid` (which must still run).
    pub fn user(&self, pid: u32, addresses: &[u64]) -> Vec<Frame> {
        self.submit_user(pid, addresses).wait()
    }

    /// Starts naming a user stack of `pid` now, while it runs; the frames
    /// are collected later.
    pub fn submit_user(&self, pid: u32, addresses: &[u64]) -> Pending {
        self.submit(Target::Process(pid), addresses)
    }

    pub fn kernel(&self, addresses: &[u64]) -> Vec<Frame> {
        self.submit(Target::Kernel, addresses).wait()
    }

    /// Drops the files blazesym keeps open and parsed (a binary's
    /// decompressed debug sections: 10 MiB for a small C program) and the
    /// Go line tables, once the stacks already asked for are named, and
    /// gives the memory back. For a report's moment: every stack it shows
    /// has been named by then, and its sockets need the room. Later stacks
    /// are named as before, from the files read anew.
    pub fn release_caches(&self) {
        self.submit(Target::Release, &[]).wait();
    }

    /// Cache evictions so far (blazesym restarts and Go tables dropped).
    pub fn evictions(&self) -> u64 {
        self.evictions.load(Ordering::Relaxed)
    }

    fn submit(&self, target: Target, addresses: &[u64]) -> Pending {
        let (reply, answer) = mpsc::channel();
        let job = Job {
            target,
            addresses: addresses.to_vec(),
            reply,
        };
        // A send fails only if the thread is gone: `wait` then says so.
        let _ = self.jobs.send(job);
        Pending(answer, addresses.to_vec())
    }
}

/// The symbolizer thread's state.
struct Worker {
    blaze: Blaze,
    /// Processes blazesym has cached files for.
    pids: HashSet<u32>,
    /// By (device, inode); `None`: not a Go binary.
    go: LruCache<FileId, Option<Arc<GoBinary>>>,
    evictions: Arc<AtomicU64>,
}

impl Worker {
    fn release(&mut self) {
        self.blaze = Blaze::new();
        self.pids.clear();
        self.go.clear();
        // Freed blocks are kept by the allocator's arenas (this thread has
        // its own) unless trimmed.
        // SAFETY: malloc_trim only walks glibc's own arenas.
        unsafe {
            libc::malloc_trim(0);
        }
    }

    fn user(&mut self, pid: u32, addresses: &[u64]) -> Vec<Frame> {
        if !self.pids.contains(&pid) {
            if self.pids.len() >= MAX_PROCESSES_PER_BLAZE {
                self.blaze = Blaze::new();
                self.pids.clear();
                self.evictions.fetch_add(1, Ordering::Relaxed);
            }
            self.pids.insert(pid);
        }
        let source = Source::Process(Process::new(Pid::from(pid)));
        let mut frames = symbolize(&self.blaze, &source, addresses);
        if frames.iter().any(|frame| frame.symbol.is_none()) {
            self.fill_unresolved(pid, &mut frames);
        }
        frames
    }

    /// Module and offset for frames blazesym could not name, and the Go
    /// function where the module is a Go binary.
    fn fill_unresolved(&mut self, pid: u32, frames: &mut [Frame]) {
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
            // The named function's own line (a call it inlined reads as
            // the line that called it), as DWARF-based symbolization says.
            frame.file = function.function_file;
            frame.line = function.function_line;
        }
    }

    fn go_binary(&mut self, pid: u32, mapping: &Mapping) -> Option<Arc<GoBinary>> {
        if let Some(found) = self.go.get(&mapping.file) {
            return found.clone();
        }
        let read = || {
            let data = std::fs::read(mapping.map_file(pid)).ok()?;
            let symbols = GoSymbols::from_bytes(&data).ok()??;
            let segments = Segments::of(&object::File::parse(&*data).ok()?);
            Some(Arc::new(GoBinary { symbols, segments }))
        };
        let found = read();
        if self
            .go
            .push(mapping.file.clone(), found.clone())
            .is_some_and(|(key, _)| key != mapping.file)
        {
            self.evictions.fetch_add(1, Ordering::Relaxed);
        }
        found
    }
}

fn unresolved(addresses: &[u64]) -> Vec<Frame> {
    addresses
        .iter()
        .map(|&address| Frame {
            address,
            ..Frame::default()
        })
        .collect()
}

fn symbolize(blaze: &Blaze, source: &Source<'_>, addresses: &[u64]) -> Vec<Frame> {
    // Outer frames hold return addresses, which may belong to the line
    // after the call: look up the call instruction (a byte before).
    let back = |index: usize, address: u64| u64::from(index > 0 && address > 0);
    let calls: Vec<u64> = addresses
        .iter()
        .enumerate()
        .map(|(index, &address)| address - back(index, address))
        .collect();
    let Ok(symbolized) = blaze.symbolize(source, Input::AbsAddr(&calls)) else {
        return unresolved(addresses);
    };
    addresses
        .iter()
        .enumerate()
        .zip(symbolized)
        .map(|((index, &address), symbolized)| match symbolized {
            Symbolized::Sym(sym) => Frame {
                address,
                symbol: Some(sym.name.into_owned()),
                offset: Some(sym.offset as u64 + back(index, address)),
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

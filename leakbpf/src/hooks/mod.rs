//! The one seam for hook sets: probe what this kernel allows, choose the best
//! set that works, and say which. Every set feeds the same events into the
//! same ring buffer, so nothing past this module knows which one ran. What
//! each set attaches, needs and since which kernel is declared once, in
//! [`sets`].
mod attach;
pub mod sets;

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    str::FromStr,
};

use anyhow::{Context as _, Result, bail};
use aya::{Btf, Ebpf, EbpfLoader, programs::FEntry};
use leakbpf_common::KernelOffsets;

use crate::kernel::{
    cgroup::{self, CgroupRoot},
    tracefs,
};
use sets::{ProgramKind, SETS, SetSpec, spec};

/// What the user asked for (`--hooks`): a set, or the best one that works.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HookChoice {
    #[default]
    Auto,
    Set(HookSet),
}

impl HookChoice {
    pub const AUTO_DESCRIPTION: &str =
        "the best set this kernel allows: fentry, else kprobe, else tracepoint";
}

impl FromStr for HookChoice {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "auto" {
            return Ok(HookChoice::Auto);
        }
        SETS.iter()
            .find(|spec| spec.name == text)
            .map(|spec| HookChoice::Set(spec.set))
            .ok_or_else(|| {
                let names: Vec<&str> = SETS.iter().map(|spec| spec.name).collect();
                format!("unknown hook set {text:?}; use auto, {}", names.join(", "))
            })
    }
}

impl fmt::Display for HookChoice {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            HookChoice::Auto => f.write_str("auto"),
            HookChoice::Set(set) => set.fmt(f),
        }
    }
}

/// A set of programs that together produce every lifecycle event.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HookSet {
    Fentry,
    Kprobe,
    Tracepoint,
}

impl HookSet {
    pub fn spec(self) -> &'static SetSpec {
        spec(self)
    }

    pub fn name(self) -> &'static str {
        self.spec().name
    }

    /// The hooks, as a user would look them up, and what each reports.
    pub fn describe(self) -> String {
        let spec = self.spec();
        let mut parts: Vec<String> = Vec::new();
        for program in spec.all_programs() {
            let part = format!("{} ({})", program.hook(), program.reports);
            if !parts.contains(&part) {
                parts.push(part);
            }
        }
        parts.join(", ")
    }

    /// Whether the state tracepoint reports connects (see `HookConfig`).
    pub fn connect_from_state(self) -> bool {
        self == HookSet::Tracepoint
    }

    /// Loads and attaches this set's programs (`all_facts`: also those
    /// only `events` needs).
    pub fn attach(
        self,
        ebpf: &mut Ebpf,
        caps: &Capabilities,
        btf: &Btf,
        accept_arity: u32,
        all_facts: bool,
    ) -> Result<()> {
        attach::attach_set(self.spec(), ebpf, caps, btf, accept_arity, all_facts)
    }
}

impl fmt::Display for HookSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Every tracepoint some set attaches, as (system, event).
pub fn tracepoints() -> Vec<(&'static str, &'static str)> {
    let mut tracepoints = Vec::new();
    for spec in &SETS {
        for tracepoint in spec.all_programs().filter_map(sets::Program::tracepoint) {
            if !tracepoints.contains(&tracepoint) {
                tracepoints.push(tracepoint);
            }
        }
    }
    tracepoints
}

/// Every kernel function some set hooks.
pub fn functions() -> Vec<&'static str> {
    let mut functions = Vec::new();
    for spec in &SETS {
        for program in spec.all_programs().filter(|p| p.kind.hooks_function()) {
            if !functions.contains(&program.target) {
                functions.push(program.target);
            }
        }
    }
    functions
}

/// Whether this kernel runs BPF trampolines, found by loading one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trampolines {
    Work,
    Refused(String),
}

/// What this kernel offers, as far as leakbpf cares.
#[derive(Clone, Debug)]
pub struct Capabilities {
    pub kernel_release: String,
    /// /sys/kernel/btf/vmlinux: needed for tp_btf and for every offset.
    pub btf: bool,
    pub tracefs: Option<PathBuf>,
    /// Each of [`tracepoints()`], present or not.
    pub tracepoints: Vec<((&'static str, &'static str), bool)>,
    /// The root of the cgroup v2 hierarchy (sock_release attaches there).
    pub cgroup2: CgroupRoot,
    /// A kprobe PMU exists (CONFIG_KPROBES).
    pub kprobes: bool,
    /// Each of [`functions()`], present in /proc/kallsyms or not (inlined or
    /// renamed functions cannot be hooked).
    pub functions: Vec<(&'static str, bool)>,
    pub trampolines: Trampolines,
}

impl Capabilities {
    /// Probes the running kernel. With `trampoline_probe` (the eBPF object,
    /// the kernel's BTF and the offsets read from it), one fentry program is
    /// loaded to see whether trampolines work; without it they count as
    /// refused (not asked for).
    /// `cgroup_root` is `--cgroup-root`, if given.
    pub fn probe(
        trampoline_probe: Option<(&[u8], &Btf, &KernelOffsets)>,
        cgroup_root: Option<&Path>,
    ) -> Self {
        let tracefs = tracefs::Tracefs::find()
            .ok()
            .map(|t| t.root().to_path_buf());
        let tracepoints = tracepoints()
            .into_iter()
            .map(|(system, event)| ((system, event), tracefs::tracepoint_exists(system, event)))
            .collect();
        let kallsyms = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
        let functions = functions()
            .into_iter()
            .map(|name| (name, kallsyms_has(&kallsyms, name)))
            .collect();
        Capabilities {
            kernel_release: fs::read_to_string("/proc/sys/kernel/osrelease")
                .map_or_else(|_| "unknown".to_owned(), |s| s.trim().to_owned()),
            btf: fs::metadata("/sys/kernel/btf/vmlinux").is_ok(),
            tracefs,
            tracepoints,
            cgroup2: cgroup::find(cgroup_root),
            kprobes: fs::metadata("/sys/bus/event_source/devices/kprobe").is_ok(),
            functions,
            trampolines: match trampoline_probe {
                Some((object, btf, offsets)) => probe_trampolines(object, btf, offsets),
                None => {
                    Trampolines::Refused("not probed: another hook set was asked for".to_owned())
                }
            },
        }
    }

    /// What `set` needs that this kernel lacks, one phrase each: the needs
    /// of every set (BTF for offsets, tracefs for tracepoint formats), then
    /// what each of its programs' kinds and targets need.
    pub fn missing_for(&self, set: HookSet) -> Vec<String> {
        let mut missing = Vec::new();
        if !self.btf {
            missing.push("kernel BTF (/sys/kernel/btf/vmlinux, CONFIG_DEBUG_INFO_BTF)".to_owned());
        }
        if self.tracefs.is_none() {
            missing.push("a readable tracefs (run as root; leakbpf mounts it on /sys/kernel/tracing when it is not mounted)".to_owned());
        }
        let mut add = |phrase: String| {
            if !missing.contains(&phrase) {
                missing.push(phrase);
            }
        };
        for program in set.spec().all_programs() {
            match program.kind {
                ProgramKind::TpBtf | ProgramKind::Tracepoint => {
                    let present = self
                        .tracepoints
                        .iter()
                        .any(|(tp, present)| Some(*tp) == program.tracepoint() && *present);
                    if !present && self.tracefs.is_some() {
                        add(format!("tracepoint {}", program.target));
                    }
                }
                ProgramKind::Cgroup => {
                    if let Some(missing) =
                        self.cgroup2.missing(&format!("cgroup/{}", program.target))
                    {
                        add(missing);
                    }
                }
                ProgramKind::Fentry | ProgramKind::Fexit => {
                    if let Trampolines::Refused(why) = &self.trampolines {
                        add(format!(
                            "BPF trampolines (fentry/fexit), which this kernel refuses: {why}"
                        ));
                    }
                }
                ProgramKind::Kprobe | ProgramKind::Kretprobe => {
                    if !self.kprobes {
                        add(
                            "kprobes (CONFIG_KPROBES): /sys/bus/event_source/devices/kprobe is missing"
                                .to_owned(),
                        );
                    }
                }
            }
            if program.kind.hooks_function()
                && !self
                    .functions
                    .iter()
                    .any(|(name, present)| *name == program.target && *present)
            {
                add(format!(
                    "kernel function {} (not in /proc/kallsyms)",
                    program.target
                ));
            }
        }
        missing
    }

    /// The set to use: the one asked for, or the best that this kernel has.
    pub fn choose(&self, choice: HookChoice) -> Result<HookSet> {
        let wanted: Vec<HookSet> = match choice {
            HookChoice::Auto => SETS.iter().map(|spec| spec.set).collect(),
            HookChoice::Set(set) => vec![set],
        };
        for &set in &wanted {
            if self.missing_for(set).is_empty() {
                return Ok(set);
            }
        }
        let reasons: Vec<String> = wanted
            .iter()
            .map(|&set| {
                format!(
                    "the {set} hook set needs {}",
                    self.missing_for(set).join(", ")
                )
            })
            .collect();
        bail!("kernel {}: {}", self.kernel_release, reasons.join("; "))
    }
}

/// Loads (then drops) the fentry set's first fentry program: BPF_PROG_LOAD
/// is where a kernel without trampolines says no. The maps are made tiny:
/// nothing runs. The real offsets go in: the program loads fields through
/// BTF-typed pointers at them, and the verifier checks each against BTF.
fn probe_trampolines(object: &[u8], btf: &Btf, offsets: &KernelOffsets) -> Trampolines {
    let refused = |err: &dyn fmt::Display| Trampolines::Refused(err.to_string());
    let mut ebpf = match EbpfLoader::new()
        .override_global("OFFSETS", offsets, true)
        .map_max_entries("EVENTS", 4096)
        .map_max_entries("STACKS", 1)
        .map_max_entries("USER_STACKS", 1)
        .load(object)
    {
        Ok(ebpf) => ebpf,
        Err(err) => return refused(&err),
    };
    let Some(probe) = spec(HookSet::Fentry)
        .programs
        .iter()
        .find(|p| p.kind == ProgramKind::Fentry)
    else {
        return refused(&"the fentry set has no fentry program");
    };
    let program: Result<&mut FEntry> = attach::program_mut(&mut ebpf, probe.name);
    match program.and_then(|p| {
        p.load(probe.target, btf)
            .with_context(|| format!("loading {}", probe.hook()))
    }) {
        Ok(()) => Trampolines::Work,
        // The verifier got as far as the helpers: trampolines load, and the
        // missing helper is named when the set is attached.
        Err(err) if crate::kernel::verifier::MissingHelper::in_error(&err).is_some() => {
            Trampolines::Work
        }
        Err(err) => refused(&format_args!("{err:#}")),
    }
}

/// Whether /proc/kallsyms text lists function `name`.
fn kallsyms_has(kallsyms: &str, name: &str) -> bool {
    kallsyms.lines().any(|line| {
        let mut fields = line.split_whitespace();
        matches!(fields.nth(1), Some("T" | "t")) && fields.next() == Some(name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_functions_in_kallsyms_text() {
        let kallsyms = "\
ffffffff81e30f19 T __sys_connect
ffffffff82031409 T tcp_connect
ffffffff82031500 t tcp_close\t[some_module]
ffffffff82031600 D tcp_hashinfo
";
        assert!(kallsyms_has(kallsyms, "tcp_connect"));
        assert!(kallsyms_has(kallsyms, "tcp_close"));
        assert!(
            !kallsyms_has(kallsyms, "tcp_hashinfo"),
            "data, not a function"
        );
        assert!(!kallsyms_has(kallsyms, "inet_csk_accept"));
    }

    fn caps() -> Capabilities {
        Capabilities {
            kernel_release: "6.18".to_owned(),
            btf: true,
            tracefs: Some("/sys/kernel/tracing".into()),
            tracepoints: tracepoints().into_iter().map(|tp| (tp, true)).collect(),
            cgroup2: CgroupRoot::Root("/sys/fs/cgroup".into()),
            kprobes: false,
            functions: functions().into_iter().map(|f| (f, true)).collect(),
            trampolines: Trampolines::Refused("EPERM".to_owned()),
        }
    }

    #[test]
    fn hook_choices_parse_from_and_print_as_their_names() {
        for choice in [
            HookChoice::Auto,
            HookChoice::Set(HookSet::Fentry),
            HookChoice::Set(HookSet::Kprobe),
            HookChoice::Set(HookSet::Tracepoint),
        ] {
            assert_eq!(choice.to_string().parse::<HookChoice>(), Ok(choice));
        }
        assert_eq!(
            "uprobe".parse::<HookChoice>(),
            Err("unknown hook set \"uprobe\"; use auto, fentry, kprobe, tracepoint".to_owned())
        );
    }

    #[test]
    fn auto_takes_the_best_set_that_works() {
        let mut caps = caps();
        assert_eq!(caps.choose(HookChoice::Auto).unwrap(), HookSet::Tracepoint);
        caps.kprobes = true;
        assert_eq!(caps.choose(HookChoice::Auto).unwrap(), HookSet::Kprobe);
        caps.trampolines = Trampolines::Work;
        assert_eq!(caps.choose(HookChoice::Auto).unwrap(), HookSet::Fentry);
    }

    #[test]
    fn a_forced_set_the_kernel_lacks_names_what_is_missing() {
        let caps = caps();
        let err = caps
            .choose(HookChoice::Set(HookSet::Kprobe))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "kernel 6.18: the kprobe hook set needs kprobes (CONFIG_KPROBES): \
             /sys/bus/event_source/devices/kprobe is missing"
        );
        let err = caps
            .choose(HookChoice::Set(HookSet::Fentry))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "kernel 6.18: the fentry hook set needs BPF trampolines (fentry/fexit), \
             which this kernel refuses: EPERM"
        );
        let mut no_cgroup = caps.clone();
        no_cgroup.cgroup2 = CgroupRoot::Missing;
        no_cgroup.tracepoints[3].1 = false;
        let err = no_cgroup
            .choose(HookChoice::Set(HookSet::Tracepoint))
            .unwrap_err()
            .to_string();
        assert_eq!(
            err,
            "kernel 6.18: the tracepoint hook set needs tracepoint syscalls:sys_exit_accept, \
             a cgroup v2 mount (for cgroup/sock_release)"
        );
    }
}

//! Loading and attaching a hook set's programs, as its table in `sets.rs`
//! declares them (the programs live in `leakbpf-ebpf/src/*_set.rs` and
//! `shared.rs`).
use std::fs;

use anyhow::{Context as _, Result, bail};
use aya::{
    Btf, Ebpf,
    programs::{
        BtfTracePoint, CgroupAttachMode, CgroupSock, FEntry, FExit, KProbe, Program, ProgramError,
        TracePoint,
    },
};

use crate::kernel::cgroup::CgroupRoot;

use super::{
    Capabilities,
    sets::{Program as Spec, ProgramKind, SetSpec},
};

/// Loads and attaches every program of `set` that this kernel needs: the
/// shared ones, then the set's own; of the fexit programs, only the one for
/// this kernel's `inet_csk_accept` signature; without `all_facts`, none of
/// the `events`-only ones.
pub(super) fn attach_set(
    set: &SetSpec,
    ebpf: &mut Ebpf,
    caps: &Capabilities,
    btf: &Btf,
    accept_arity: u32,
    all_facts: bool,
) -> Result<()> {
    let arities: Vec<u32> = set.programs.iter().filter_map(|p| p.accept_arity).collect();
    if !arities.is_empty() && !arities.contains(&accept_arity) {
        bail!(
            "inet_csk_accept takes {accept_arity} parameters on this kernel; leakbpf knows {arities:?}"
        );
    }
    // A program attached to several targets is loaded once.
    let mut loaded: Vec<&str> = Vec::new();
    for spec in set
        .all_programs()
        .filter(|p| p.accept_arity.is_none_or(|arity| arity == accept_arity))
        .filter(|p| all_facts || !p.events_only)
    {
        let first = !loaded.contains(&spec.name);
        attach_one(ebpf, spec, first, caps, btf)
            .with_context(|| format!("{} (program {})", spec.hook(), spec.name))?;
        loaded.push(spec.name);
    }
    Ok(())
}

/// Loads `spec`'s program unless it is already, then attaches it. aya keeps
/// the links in the program: dropping `ebpf` detaches everything.
fn attach_one(
    ebpf: &mut Ebpf,
    spec: &Spec,
    load: bool,
    caps: &Capabilities,
    btf: &Btf,
) -> Result<()> {
    match spec.kind {
        ProgramKind::TpBtf => {
            let (_, event) = spec.tracepoint().context("tp_btf target is system:event")?;
            let program: &mut BtfTracePoint = program_mut(ebpf, spec.name)?;
            if load {
                program.load(event, btf).context("loading")?;
            }
            program.attach().context("attaching")?;
        }
        ProgramKind::Tracepoint => {
            let (system, event) = spec
                .tracepoint()
                .context("tracepoint target is system:event")?;
            let program: &mut TracePoint = program_mut(ebpf, spec.name)?;
            if load {
                program.load().context("loading")?;
            }
            program.attach(system, event).context("attaching")?;
        }
        ProgramKind::Cgroup => {
            let CgroupRoot::Root(path) = &caps.cgroup2 else {
                bail!("no cgroup v2 root: {}", caps.cgroup2.describe());
            };
            let cgroup = fs::File::open(path)
                .with_context(|| format!("opening cgroup {}", path.display()))?;
            let program: &mut CgroupSock = program_mut(ebpf, spec.name)?;
            if load {
                program.load().context("loading")?;
            }
            program
                // A link (kernel >= 5.7) never excludes other programs, whatever the mode.
                .attach(&cgroup, CgroupAttachMode::Single)
                .context("attaching to the cgroup v2 root")?;
        }
        ProgramKind::Fentry => {
            let program: &mut FEntry = program_mut(ebpf, spec.name)?;
            if load {
                program.load(spec.target, btf).context("loading")?;
            }
            program.attach().context("attaching")?;
        }
        ProgramKind::Fexit => {
            let program: &mut FExit = program_mut(ebpf, spec.name)?;
            if load {
                program.load(spec.target, btf).context("loading")?;
            }
            program.attach().context("attaching")?;
        }
        ProgramKind::Kprobe | ProgramKind::Kretprobe => {
            let program: &mut KProbe = program_mut(ebpf, spec.name)?;
            if load {
                program.load().context("loading")?;
            }
            program.attach(spec.target, 0).context("attaching")?;
        }
    }
    Ok(())
}

pub(super) fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut Program, Error = ProgramError>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

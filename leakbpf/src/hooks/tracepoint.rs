//! Attaches the tracepoint set (see `leakbpf-ebpf/src/tracepoint_set.rs`).
use anyhow::{Context as _, Result};
use aya::{
    Btf, Ebpf,
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSock, TracePoint},
};

use super::{Capabilities, open_cgroup_root};

pub(super) fn attach(ebpf: &mut Ebpf, caps: &Capabilities) -> Result<()> {
    let btf = Btf::from_sys_fs().context("reading kernel BTF")?;

    let program: &mut BtfTracePoint = program_mut(ebpf, "inet_sock_set_state")?;
    program
        .load("inet_sock_set_state", &btf)
        .context("loading tp_btf/inet_sock_set_state")?;
    program
        .attach()
        .context("attaching tp_btf/inet_sock_set_state")?;

    let program: &mut TracePoint = program_mut(ebpf, "sys_exit_accept")?;
    program
        .load()
        .context("loading the accept exit tracepoint program")?;
    for event in ["sys_exit_accept", "sys_exit_accept4"] {
        program
            .attach("syscalls", event)
            .with_context(|| format!("attaching tracepoint syscalls:{event}"))?;
    }

    let program: &mut TracePoint = program_mut(ebpf, "tcp_destroy_sock")?;
    program
        .load()
        .context("loading the tcp_destroy_sock program")?;
    program
        .attach("tcp", "tcp_destroy_sock")
        .context("attaching tracepoint tcp:tcp_destroy_sock")?;

    let program: &mut TracePoint = program_mut(ebpf, "sched_process_exit")?;
    program
        .load()
        .context("loading the sched_process_exit program")?;
    program
        .attach("sched", "sched_process_exit")
        .context("attaching tracepoint sched:sched_process_exit")?;

    let cgroup = open_cgroup_root(caps)?;
    let program: &mut CgroupSock = program_mut(ebpf, "sock_release")?;
    program.load().context("loading cgroup/sock_release")?;
    program
        .attach(&cgroup, CgroupAttachMode::Single)
        // A link (kernel >= 5.7) never excludes other programs, whatever the mode.
        .context("attaching cgroup/sock_release to the cgroup v2 root")?;
    Ok(())
}

fn program_mut<'a, P>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut P>
where
    &'a mut P: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    ebpf.program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?
        .try_into()
        .with_context(|| format!("program {name} has an unexpected type"))
}

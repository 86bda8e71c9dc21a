//! `leakbpf check`: what this kernel offers and which hook set would run.
use std::process::ExitCode;

use crate::{
    cli::CheckArgs,
    hooks::{Capabilities, Trampolines, sets::SETS},
    kernel::offsets,
};

pub fn run(args: &CheckArgs) -> anyhow::Result<ExitCode> {
    // As root, mount tracefs if needed, as `events` would; otherwise report.
    let privileged = crate::tracer::require_root().is_ok();
    if privileged {
        crate::kernel::tracefs::ensure_mounted()?;
    } else {
        println!(
            "note              without privileges tracefs (mode 0700), kallsyms and BPF cannot be \
             probed: what follows is partial; run `sudo leakbpf check`"
        );
    }
    let btf = aya::Btf::from_sys_fs().ok();
    let offsets = crate::kernel::offsets::read_offsets().ok();
    let caps = Capabilities::probe(
        btf.as_ref()
            .zip(offsets.as_ref())
            .map(|(btf, offsets)| (crate::tracer::EBPF_OBJECT, btf, offsets)),
        args.tracer.cgroup_root.as_deref(),
    );
    let yes_no = |present: bool| if present { "yes" } else { "no" };
    println!("kernel            {}", caps.kernel_release);
    println!("BTF               {}", yes_no(caps.btf));
    match &caps.tracefs {
        Some(path) => println!("tracefs           {}", path.display()),
        None if !privileged => println!("tracefs           not readable without privileges"),
        None => println!("tracefs           not found (mount it on /sys/kernel/tracing)"),
    }
    if caps.tracefs.is_some() {
        for ((system, event), present) in &caps.tracepoints {
            println!("  {system}:{event:<22} {}", yes_no(*present));
        }
    }
    println!("cgroup v2         {}", caps.cgroup2.describe());
    println!("kprobe PMU        {}", yes_no(caps.kprobes));
    for (function, present) in &caps.functions {
        println!(
            "  {function:<28} {}",
            if *present { "in kallsyms" } else { "missing" }
        );
    }
    println!(
        "uprobe PMU        {}",
        if crate::go_requests::uprobes_available() {
            "yes (Go request sites are named)"
        } else {
            "no (Go request sites are not named)"
        }
    );
    println!(
        "BPF trampolines   {}",
        match &caps.trampolines {
            Trampolines::Work => "yes".to_owned(),
            Trampolines::Refused(why) => format!("no ({why})"),
        }
    );
    match offsets::read_offsets() {
        Ok(read) => {
            println!("kernel offsets    read from BTF and tracefs:");
            for line in offsets::describe(&read).lines() {
                println!("  {line}");
            }
        }
        Err(err) => println!("kernel offsets    unavailable: {err:#}"),
    }
    for spec in &SETS {
        let missing = caps.missing_for(spec.set);
        let (major, minor) = spec.min_kernel();
        println!(
            "set {:<13} Linux {major}.{minor}+, {}: {}",
            spec.name,
            spec.description,
            if missing.is_empty() {
                "usable".to_owned()
            } else {
                format!("unusable: needs {}", missing.join(", "))
            }
        );
    }
    let set = caps.choose(args.tracer.hooks)?;
    println!("hook set          {set}: {}", set.describe());
    Ok(ExitCode::SUCCESS)
}

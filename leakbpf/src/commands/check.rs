//! `leakbpf check`: what this kernel offers and which hook set would run.
use std::process::ExitCode;

use crate::{cli::CheckArgs, hooks::Capabilities, kernel::offsets};

pub fn run(args: CheckArgs) -> anyhow::Result<ExitCode> {
    // As root, mount tracefs if needed, as `events` would; otherwise report.
    if crate::tracer::require_root().is_ok() {
        crate::kernel::tracefs::ensure_mounted()?;
    }
    let caps = Capabilities::probe();
    let yes_no = |present: bool| if present { "yes" } else { "no" };
    println!("kernel            {}", caps.kernel_release);
    println!("BTF               {}", yes_no(caps.btf));
    println!(
        "tracefs           {}",
        caps.tracefs
            .as_ref()
            .map_or("not found".to_owned(), |p| p.display().to_string())
    );
    for ((system, event), present) in &caps.tracepoints {
        println!("  {system}:{event:<22} {}", yes_no(*present));
    }
    println!(
        "cgroup v2         {}",
        caps.cgroup2
            .as_ref()
            .map_or("not mounted".to_owned(), |p| p.display().to_string())
    );
    println!("kprobe PMU        {}", yes_no(caps.kprobes));
    match offsets::read_offsets() {
        Ok(_) => println!("kernel offsets    read from BTF and tracefs"),
        Err(err) => println!("kernel offsets    unavailable: {err:#}"),
    }
    let set = caps.choose(args.tracer.hooks)?;
    println!("hook set          {set}: {}", set.describe());
    Ok(ExitCode::SUCCESS)
}

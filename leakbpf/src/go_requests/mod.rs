//! The Go request site: which user function asked net/http for a connection.
//!
//! net/http dials on a goroutine of its own, so the connect's stack ends in
//! the Transport. The kernel side (`leakbpf-ebpf/src/go_request.rs`) joins
//! that goroutine to the caller's stack with entry uprobes on four functions
//! of each Go binary; this module finds the Go binaries, reads what the
//! probes need from each ([`binary`]) and attaches them once per binary (by
//! inode), for every process running it. A binary whose last observed
//! process ends is detached.
//!
//! Processes are observed at start-up (every running one), when they exec
//! (`sched:sched_process_exec`) and at their first socket. A program that
//! dials within the few milliseconds between its exec and the probes'
//! attachment has that first request unnamed (the report counts dials
//! without a request site).
pub mod binary;

use std::{
    collections::{HashMap, HashSet},
    os::unix::fs::MetadataExt as _,
    path::Path,
};

use anyhow::{Context as _, Result};
use aya::{
    Ebpf,
    programs::{
        TracePoint, UProbe,
        uprobe::{UProbeAttachLocation, UProbeAttachPoint, UProbeLinkId, UProbeScope},
    },
};

use binary::{GoBinary, PROBED};

/// True if this kernel can attach uprobes (the uprobe PMU is registered).
pub fn uprobes_available() -> bool {
    Path::new("/sys/bus/event_source/devices/uprobe/type").exists()
}

/// A binary, identified as the kernel's uprobes identify it.
type Inode = (u64, u64);

enum Known {
    /// Not Go, or Go without net/http's Transport: nothing to probe.
    Nothing,
    /// Go with net/http, but something stops the probes (said once).
    Refused,
    Probed(Probed),
}

struct Probed {
    links: Vec<(&'static str, UProbeLinkId)>,
    pids: HashSet<u32>,
}

/// Attaches and detaches the Go uprobes as processes come and go.
pub struct GoProbes {
    known: HashMap<Inode, Known>,
    /// Observed processes and their binary (looked up at every open: FxHash).
    pids: rustc_hash::FxHashMap<u32, Inode>,
    /// Why a Go binary could not be probed, once each.
    warnings: Vec<String>,
}

impl GoProbes {
    /// Loads the uprobe programs into `ebpf` (they attach per binary later)
    /// and probes the Go processes running now.
    pub fn start(ebpf: &mut Ebpf) -> Result<GoProbes> {
        for (_, program) in PROBED {
            let probe: &mut UProbe = ebpf
                .program_mut(program)
                .with_context(|| format!("program {program} is missing"))?
                .try_into()?;
            probe
                .load()
                .with_context(|| format!("loading the Go uprobe {program}"))?;
        }
        // Processes that start later are looked at when they exec, not
        // only at their first socket (by then a request has dialed).
        let exec: &mut TracePoint = ebpf
            .program_mut("go_process_exec")
            .context("program go_process_exec is missing")?
            .try_into()?;
        exec.load().context("loading go_process_exec")?;
        exec.attach("sched", "sched_process_exec")
            .context("attaching go_process_exec to sched:sched_process_exec")?;
        let mut probes = GoProbes {
            known: HashMap::new(),
            pids: rustc_hash::FxHashMap::default(),
            warnings: Vec::new(),
        };
        let pids: Vec<u32> = std::fs::read_dir("/proc")
            .context("listing /proc")?
            .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
            .collect();
        for pid in pids {
            probes.observe(ebpf, pid);
        }
        Ok(probes)
    }

    /// Looks at process `pid` once: probes its binary if it is a Go program
    /// using net/http and is not probed yet.
    pub fn observe(&mut self, ebpf: &mut Ebpf, pid: u32) {
        if self.pids.contains_key(&pid) || pid == std::process::id() {
            return;
        }
        let exe = format!("/proc/{pid}/exe");
        // A kernel thread or a process already gone: nothing to probe.
        let Ok(meta) = std::fs::metadata(&exe) else {
            return;
        };
        let inode = (meta.dev(), meta.ino());
        self.pids.insert(pid, inode);
        if !self.known.contains_key(&inode) {
            let known = self.probe(ebpf, pid, &exe);
            self.known.insert(inode, known);
        }
        if let Some(Known::Probed(probed)) = self.known.get_mut(&inode) {
            probed.pids.insert(pid);
        }
    }

    /// Process `pid` ended: detaches its binary if no observed process
    /// runs it any more.
    pub fn exit(&mut self, ebpf: &mut Ebpf, pid: u32) {
        let Some(inode) = self.pids.remove(&pid) else {
            return;
        };
        let Some(Known::Probed(probed)) = self.known.get_mut(&inode) else {
            return;
        };
        probed.pids.remove(&pid);
        if probed.pids.is_empty()
            && let Some(Known::Probed(probed)) = self.known.remove(&inode)
        {
            for (program, link) in probed.links {
                if let Ok(probe) = program_mut(ebpf, program) {
                    let _ = probe.detach(link);
                }
            }
        }
    }

    /// Go binaries that could not be probed, and why.
    pub fn warnings(&self) -> &[String] {
        &self.warnings
    }

    fn probe(&mut self, ebpf: &mut Ebpf, pid: u32, exe: &str) -> Known {
        let name = std::fs::read_link(exe)
            .map_or_else(|_| exe.to_owned(), |path| path.display().to_string());
        let binary = match binary::inspect(Path::new(exe)) {
            Ok(Some(binary)) if binary.dials_http() => binary,
            Ok(_) => return Known::Nothing,
            Err(err) => {
                self.warn(format!(
                    "Go request sites: cannot read {name} (pid {pid}): {err:#}"
                ));
                return Known::Refused;
            }
        };
        let goid = match &binary.goid {
            Ok((goid, _)) => *goid,
            Err(why) => {
                self.warn(format!(
                    "Go request sites of {name} (pid {pid}) are not named: {why}"
                ));
                return Known::Refused;
            }
        };
        match attach(ebpf, exe, &binary, goid) {
            Ok(links) => Known::Probed(Probed {
                links,
                pids: HashSet::new(),
            }),
            Err(err) => {
                self.warn(format!(
                    "Go request sites of {name} (pid {pid}) are not named: attaching uprobes: {err:#}"
                ));
                Known::Refused
            }
        }
    }

    fn warn(&mut self, warning: String) {
        if !self.warnings.contains(&warning) {
            self.warnings.push(warning);
        }
    }
}

fn program_mut<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut UProbe> {
    Ok(ebpf
        .program_mut(name)
        .with_context(|| format!("program {name} is missing"))?
        .try_into()?)
}

/// Attaches each probed function the binary has; all or nothing.
fn attach(
    ebpf: &mut Ebpf,
    exe: &str,
    binary: &GoBinary,
    goid: u32,
) -> Result<Vec<(&'static str, UProbeLinkId)>> {
    let mut links = Vec::new();
    // Go 1.21+ tells a racer's parent: the bridge's two probe hits per dial
    // are not needed there.
    let probed = if binary.parent_goid.is_some() { 2 } else { 4 };
    for ((function, program), offset) in PROBED.iter().zip(binary.functions).take(probed) {
        let Some(offset) = offset else { continue };
        let point = UProbeAttachPoint {
            location: UProbeAttachLocation::AbsoluteOffset(offset),
            cookie: Some(leakbpf_common::go::cookie(
                goid,
                binary.parent_goid.unwrap_or(0),
            )),
        };
        match program_mut(ebpf, program)
            .and_then(|probe| Ok(probe.attach([point], exe, UProbeScope::AllProcesses)?))
        {
            Ok(link) => links.push((*program, link)),
            Err(err) => {
                for (program, link) in links {
                    if let Ok(probe) = program_mut(ebpf, program) {
                        let _ = probe.detach(link);
                    }
                }
                return Err(err.context(format!("{function} at file offset {offset:#x}")));
            }
        }
    }
    Ok(links)
}

/// Adds to `report` what it must say about Go request sites: binaries that
/// could not be probed, and, per executable, the net/http connections in
/// the report that have no request site (`probing`: the Go uprobes ran).
pub fn annotate(report: &mut crate::report::model::Report, warnings: &[String], probing: bool) {
    report.warnings.extend(warnings.iter().cloned());
    if !probing {
        return;
    }
    let mut unnamed: Vec<(String, usize)> = Vec::new();
    for process in &report.processes {
        let count: usize = process
            .groups
            .iter()
            .filter(|group| {
                group.direction == crate::event::Direction::Connect
                    && group.request_stack.is_empty()
                    && group.stack.iter().any(|frame| {
                        frame.symbol.as_deref() == Some("net/http.(*Transport).dialConn")
                    })
            })
            .map(|group| group.count)
            .sum();
        if count == 0 {
            continue;
        }
        let exe = process
            .exe
            .clone()
            .unwrap_or_else(|| format!("pid {}", process.pid));
        match unnamed.iter_mut().find(|(e, _)| *e == exe) {
            Some((_, n)) => *n += count,
            None => unnamed.push((exe, count)),
        }
    }
    for (exe, count) in unnamed {
        report.warnings.push(format!(
            "{count} connections net/http dialed in {exe} have no request site (requested before \
             leakbpf probed that binary, which happens at a process's first socket when it starts \
             after leakbpf, or dialed from cgo)"
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        event::Direction,
        report::model::{Group, ProcessReport, Report},
        symbolize::Frame,
    };

    fn group(stack: &str, request: bool, count: usize) -> Group {
        let mut group = Group::for_tests(Direction::Connect, count);
        group.stack = vec![Frame {
            symbol: Some(stack.to_owned()),
            ..Frame::default()
        }];
        if request {
            group.request_stack = vec![Frame {
                symbol: Some("main.fetch".to_owned()),
                ..Frame::default()
            }];
        }
        group
    }

    /// net/http connections without a request site are counted per
    /// executable; named ones and other connects are not; nothing is said
    /// while the probes are off.
    #[test]
    fn unnamed_dials_are_counted_per_executable() {
        let dial = "net/http.(*Transport).dialConn";
        let process = |pid, groups| ProcessReport {
            pid,
            exe: Some("/srv/api".to_owned()),
            groups,
            ..ProcessReport::default()
        };
        let report = Report {
            processes: vec![
                process(1, vec![group(dial, false, 2), group(dial, true, 5)]),
                process(2, vec![group(dial, false, 1), group("main.dial", false, 7)]),
            ],
            ..Report::default()
        };
        let mut off = report.clone();
        annotate(&mut off, &["uprobes: none".to_owned()], false);
        assert_eq!(off.warnings, ["uprobes: none"]);
        let mut on = report;
        annotate(&mut on, &[], true);
        assert_eq!(on.warnings.len(), 1, "{:?}", on.warnings);
        assert!(
            on.warnings[0]
                .starts_with("3 connections net/http dialed in /srv/api have no request site"),
            "{:?}",
            on.warnings
        );
    }
}

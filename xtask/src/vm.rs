//! Run commands under stock Debian kernels in qemu: the kernel matrix.
//!
//! The development machines run a kernel without kprobes or BPF trampolines
//! (see /work/shared/PLATFORM.md), so hooks that need them are tested by
//! booting a distribution kernel with [virtme-ng] (`vng`) over the host's own
//! root filesystem:
//!
//! * [`ensure_kernel`] fetches the kernel's `.deb` with `apt-get download`
//!   through a private apt configuration in the cache ([`APT_SOURCES`]:
//!   bullseye to trixie-backports; the system's sources are left alone),
//!   unpacks it with `dpkg-deb -x` into the cache
//!   (`${LEAKBPF_CACHE:-${XDG_CACHE_HOME:-~/.cache}/leakbpf}/kernels/RELEASE/`),
//!   moves the split layout of newer kernels (`linux-binary-*` and
//!   `linux-modules-*` under usr/lib/modules) to the classic one, and runs
//!   `depmod -b` on the unpacked tree. vng takes the modules (9p,
//!   virtio, ...) from that tree (`lib/modules/RELEASE` next to `boot/`), so
//!   nothing is written to the host's `/lib/modules` and no root is needed.
//! * [`ensure_vng`] pip-installs virtme-ng [`VNG_VERSION`] when `vng` is
//!   missing or another version; [`ensure_busybox`] finds busybox (vng needs
//!   it for its initramfs) or unpacks Debian's `busybox-static` into the cache.
//! * [`run_in_vm`] boots the kernel (software emulation: nested KVM hangs on
//!   these machines; 9p root: the host's `/` read-only, overlays on /tmp, /var,
//!   /etc ..., plus one read-write folder) and runs a bash command as root
//!   through `xtask/vm/guest-run.sh`, which first makes sure tracefs, debugfs,
//!   bpffs, a cgroup2 hierarchy and loopback are up.
//!
//! Costs measured on a 2-core development VM (qemu's TCG, so everything in the
//! guest runs several times slower than on the host): a trivial command under
//! 6.1 or 6.12 takes 15-21 s of wall time on an idle host and up to 35 s while
//! the host compiles, the guest reaching the command after 11-27 s of uptime
//! and vng/qemu start-up adding 3-5 s. A kernel's first [`ensure_kernel`]
//! takes 4-11 s (a 70-110 MB download from the apt mirror, then unpacking);
//! later calls return at once. Boot once and run many tests per boot.
//!
//! [virtme-ng]: https://github.com/arighi/virtme-ng

use std::{
    env,
    ffi::OsStr,
    fmt, fs,
    io::{self, Read, Write},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    thread,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use anyhow::{Context as _, Result, anyhow, bail, ensure};

/// The virtme-ng release this runner is written against (`pip install virtme-ng==1.42`).
pub const VNG_VERSION: &str = "1.42";

/// The kernel the PLATFORM.md recipe was measured with: Debian 12's 6.1 LTS,
/// generic flavour (the `-cloud-` flavour lacks the 9p modules the guest
/// root needs).
pub const DEFAULT_KERNEL: &str = "linux-image-6.1.0-56-amd64";

/// The kernels `./x matrix` boots, oldest first: Debian 11's 5.10 LTS
/// (bullseye-security), Debian 12's 6.1 and its 6.12 backport
/// (bookworm-security; the two signatures of inet_csk_accept), and the
/// newest kernel the archive offers (trixie-backports). The archive drops
/// superseded ABIs: when a download fails, `apt-cache search` with
/// [`APT_SOURCES`] names the current ones.
pub const KERNEL_MATRIX: &[&str] = &[
    "linux-image-5.10.0-46-amd64",
    DEFAULT_KERNEL,
    "linux-image-6.12.117+deb12-amd64",
    "linux-image-7.3.4+deb13-amd64",
];

/// The suites the matrix kernels come from. Used only through a private apt
/// configuration in the cache ([`apt_get`]): the system's sources are
/// neither read nor changed.
pub const APT_SOURCES: &str = "\
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bullseye main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bullseye-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian bookworm main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian-security bookworm-security main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie main
deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] http://deb.debian.org/debian trixie-backports main
";

/// The guest-side wrapper; see the file for what it sets up.
const GUEST_RUN_SH: &str = include_str!("../vm/guest-run.sh");

/// Prefix of the lines `guest-run.sh` writes to the guest's stderr.
const MARKER: &str = "leakbpf-vm: ";

/// A Debian kernel image package, e.g. `linux-image-6.1.0-56-amd64`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct KernelSpec {
    package: String,
}

impl KernelSpec {
    /// A kernel by its exact Debian package name: `linux-image-RELEASE`, where
    /// RELEASE (what `uname -r` prints in the guest) starts with a digit and
    /// ends in `-amd64`. The `-cloud-` and `-rt-` flavours and the `-dbg` /
    /// `-unsigned` packages are refused.
    pub fn package(name: &str) -> Result<Self> {
        name.strip_prefix("linux-image-")
            .filter(|r| is_generic_release(r))
            .ok_or_else(|| {
                anyhow!(
                    "{name:?} is not a generic Debian amd64 kernel image package \
                     (expected e.g. {DEFAULT_KERNEL})"
                )
            })?;
        Ok(Self {
            package: name.to_owned(),
        })
    }

    /// The Debian package name.
    pub fn package_name(&self) -> &str {
        &self.package
    }

    /// The kernel release, as `uname -r` prints it in the guest.
    pub fn release(&self) -> &str {
        &self.package["linux-image-".len()..]
    }
}

impl Default for KernelSpec {
    fn default() -> Self {
        Self::package(DEFAULT_KERNEL).expect("DEFAULT_KERNEL is a valid package name")
    }
}

impl fmt::Display for KernelSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.release())
    }
}

/// How to boot the guest. [`run_in_vm`] uses [`VmOptions::default`].
#[derive(Clone, Debug)]
pub struct VmOptions {
    /// Guest CPUs (qemu `-smp`).
    pub cpus: u32,
    /// Guest memory, in qemu's syntax (`1G`, `1536M`).
    pub memory: String,
    /// Boot with `vng --verbose`: the kernel's console (boot log, oopses,
    /// panics) is appended to [`VmOutput::stderr`]. Costs no measurable time.
    pub console: bool,
    /// Also copy the guest's stdout and stderr to this process's stderr as
    /// they arrive.
    pub echo: bool,
}

impl Default for VmOptions {
    fn default() -> Self {
        Self {
            cpus: 2,
            memory: "1536M".to_owned(),
            console: true,
            echo: false,
        }
    }
}

/// What a guest run produced.
#[derive(Clone, Debug)]
pub struct VmOutput {
    /// The kernel that ran.
    pub kernel: String,
    /// The command's exit status as vng reported it, or `None` if the VM was
    /// killed at the timeout (or vng died of a signal).
    pub exit_code: Option<i32>,
    /// Whether the command ran to its end (`guest-run.sh` reported its
    /// status). `false` with an exit code means the guest died first (vng
    /// then returns 255: a kernel panic, or a boot that never got there).
    pub command_finished: bool,
    /// The run was killed after the timeout.
    pub timed_out: bool,
    /// The guest's stdout: only the command's.
    pub stdout: String,
    /// The guest's stderr: the command's, `leakbpf-vm:` lines from the
    /// wrapper, vng's own messages and, with [`VmOptions::console`], the
    /// kernel console.
    pub stderr: String,
    /// Guest uptime when the command started: the boot's share of `wall`
    /// (minus ~3 s of host-side vng and qemu start-up).
    pub boot: Option<Duration>,
    /// Host wall time from starting vng to its exit.
    pub wall: Duration,
}

impl VmOutput {
    /// The command ran to its end and exited 0.
    pub fn success(&self) -> bool {
        self.command_finished && self.exit_code == Some(0)
    }

    /// The last `lines` lines of [`VmOutput::stderr`].
    pub fn stderr_tail(&self, lines: usize) -> &str {
        tail_lines(&self.stderr, lines)
    }

    /// `Ok(self)` on [`success`](Self::success), otherwise an error that
    /// says what went wrong, followed by the last lines of stderr.
    pub fn into_result(self) -> Result<Self> {
        if self.success() {
            return Ok(self);
        }
        let what = if self.timed_out {
            format!("timed out after {:.0?}", self.wall)
        } else if !self.command_finished {
            format!(
                "the guest died before the command finished (vng exit {}: kernel panic or boot failure)",
                code_str(self.exit_code)
            )
        } else {
            format!(
                "the command failed with exit status {}",
                code_str(self.exit_code)
            )
        };
        // A guest that died shows its oops from the first line: the tail
        // alone loses the oops' kind and the faulting context.
        let (which, excerpt) = match oops_start(&self.stderr) {
            Some(at) if !self.command_finished => ("its oops", head_lines(&self.stderr[at..], 90)),
            _ => ("the last lines of its stderr", self.stderr_tail(40)),
        };
        bail!(
            "VM run under kernel {}: {what}; {which}:\n{excerpt}",
            self.kernel,
        )
    }
}

/// Where the kernel's first oops, BUG, warning or panic line starts.
fn oops_start(stderr: &str) -> Option<usize> {
    const MARKERS: &[&str] = &[
        "BUG:",
        "Oops:",
        "general protection fault",
        "kernel BUG at",
        "WARNING:",
        "int3:",
        "Kernel panic",
    ];
    let mut at = 0;
    for line in stderr.split_inclusive('\n') {
        if MARKERS.iter().any(|m| line.contains(m)) {
            return Some(at);
        }
        at += line.len();
    }
    None
}

fn head_lines(text: &str, lines: usize) -> &str {
    match text.match_indices('\n').nth(lines.saturating_sub(1)) {
        Some((at, _)) => &text[..=at],
        None => text,
    }
}

fn code_str(code: Option<i32>) -> String {
    code.map_or_else(|| "none".to_owned(), |c| c.to_string())
}

/// Boots `kernel` (fetching it, vng and busybox first if needed) with
/// [`VmOptions::default`] and runs `command` in it; see [`run_in_vm_with`].
pub fn run_in_vm(
    kernel: &KernelSpec,
    command: &str,
    rw_dir: &Path,
    timeout: Duration,
) -> Result<VmOutput> {
    run_in_vm_with(&VmOptions::default(), kernel, command, rw_dir, timeout)
}

/// Boots `kernel` and runs `command` (a bash script) in it as root.
///
/// The guest sees the host's whole filesystem read-only at the same paths
/// (with throwaway writable overlays on /tmp, /var, /etc, /home, ...), starts
/// in this process's working directory, and can write to `rw_dir` (created
/// if missing), whose contents the host sees afterwards. The command's stdout
/// and stderr come back in the [`VmOutput`], as does its exit status; a
/// non-zero status, a guest panic or a timeout is *not* an `Err` (see
/// [`VmOutput::into_result`]). `Err` means the VM could not be set up or vng
/// could not be run.
pub fn run_in_vm_with(
    options: &VmOptions,
    kernel: &KernelSpec,
    command: &str,
    rw_dir: &Path,
    timeout: Duration,
) -> Result<VmOutput> {
    let vmlinuz = ensure_kernel(kernel)?;
    let vng = ensure_vng()?;
    let busybox = ensure_busybox()?;
    check_host_tools()?;

    fs::create_dir_all(rw_dir)
        .with_context(|| format!("cannot create the VM's writable dir {}", rw_dir.display()))?;
    let rw_dir = rw_dir
        .canonicalize()
        .with_context(|| format!("cannot resolve {}", rw_dir.display()))?;

    // The command travels as a file: the kernel command line, which carries
    // --exec, holds only 2 KiB. The guest sees the cache at the same path.
    let run_dir = ScratchDir::new(&cache_root()?.join("vm"), "run")?;
    let wrapper = run_dir.path.join("guest-run.sh");
    let script = run_dir.path.join("command.sh");
    fs::write(&wrapper, GUEST_RUN_SH)
        .and_then(|()| fs::write(&script, command))
        .with_context(|| {
            format!(
                "cannot write the guest's scripts to {}",
                run_dir.path.display()
            )
        })?;
    let exec = format!(
        "/bin/bash {} {}",
        sh_quote(&wrapper.to_string_lossy()),
        sh_quote(&script.to_string_lossy())
    );

    // A guest that never reaches its first line is booted once more: it ran
    // nothing of ours. With qemu 10's software CPUs and the matrix's VMs
    // sharing 2 cores, Debian's 5.10 once stalled in boot for the whole
    // timeout ("rcu_sched kthread starved", 2026-12-02 CI) where the same VM
    // booted in 82 s the run before; and qemu itself once aborted while the
    // 6.1 guest set up its PCI devices ("msix_table_mmio_write: Assertion
    // failed", 2026-12-03 CI), where the same VM passed on the next run.
    let mut attempt = 0;
    loop {
        attempt += 1;
        let vng_cmd = vng_command(&vng, &vmlinuz, &busybox, options, &rw_dir, &exec);
        let (output, booted) = run_vng(vng_cmd, kernel, options.echo, timeout)?;
        if attempt == 1 && !booted {
            let why = if output.timed_out {
                format!("did not boot within {} s", BOOT_LIMIT.as_secs())
            } else {
                format!(
                    "died before its first line (vng exit {}): {}",
                    code_str(output.exit_code),
                    output.stderr_tail(3).replace('\n', " | ")
                )
            };
            eprintln!("xtask: {} {why}; booting it once more", kernel.release());
            continue;
        }
        return Ok(output);
    }
}

/// How long a guest may take to print its first line (boots take 46-82 s
/// under the matrix's load).
const BOOT_LIMIT: Duration = Duration::from_mins(8);

fn vng_command(
    vng: &Path,
    vmlinuz: &Path,
    busybox: &Path,
    options: &VmOptions,
    rw_dir: &Path,
    exec: &str,
) -> Command {
    let mut vng_cmd = Command::new(vng);
    vng_cmd
        .arg("--run")
        .arg(vmlinuz)
        .arg("--busybox")
        .arg(busybox)
        .args(["--disable-kvm", "--force-9p", "--user", "root"])
        .args(["--cpus", &options.cpus.to_string()])
        .args(["--memory", &options.memory])
        .arg(format!("--rwdir={}", rw_dir.display()))
        .args(["--exec", exec]);
    if options.console {
        vng_cmd.arg("--verbose");
    }
    vng_cmd
}

/// Spawns vng in its own process group (vng, its shell, virtme-run, qemu),
/// collects its output, and stops the VM at the timeout, or at
/// [`BOOT_LIMIT`] if the guest has not said it is ready. The second value:
/// whether it said so (its first line came).
fn run_vng(
    mut vng_cmd: Command,
    kernel: &KernelSpec,
    echo: bool,
    timeout: Duration,
) -> Result<(VmOutput, bool)> {
    use std::os::unix::process::CommandExt as _;

    vng_cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let start = Instant::now();
    let mut child = vng_cmd
        .spawn()
        .with_context(|| format!("cannot run {}", display_cmd(&vng_cmd)))?;
    let ready = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stdout = collect(child.stdout.take().expect("piped"), echo, None);
    let stderr = collect(
        child.stderr.take().expect("piped"),
        echo,
        Some(std::sync::Arc::clone(&ready)),
    );

    let deadline = start + timeout;
    let mut timed_out = false;
    let status = loop {
        if let Some(status) = child.try_wait().context("cannot wait for vng")? {
            break status;
        }
        if Instant::now() >= deadline {
            timed_out = true;
            break stop_vm(&mut child)?;
        }
        if start.elapsed() >= BOOT_LIMIT && !ready.load(std::sync::atomic::Ordering::Relaxed) {
            timed_out = true;
            break stop_vm(&mut child)?;
        }
        thread::sleep(Duration::from_millis(50));
    };
    let wall = start.elapsed();
    // Grandchildren (qemu) may still hold the pipes for a moment.
    let stdout = stdout.join().unwrap_or_default();
    let stderr = stderr.join().unwrap_or_default();
    let markers = parse_markers(&stderr);
    let output = VmOutput {
        kernel: kernel.release().to_owned(),
        exit_code: if timed_out { None } else { status.code() },
        command_finished: !timed_out && markers.exit_status.is_some(),
        timed_out,
        stdout,
        stderr,
        boot: markers.ready_uptime,
        wall,
    };
    Ok((output, ready.load(std::sync::atomic::Ordering::Relaxed)))
}

/// Stops a VM at its timeout without leaving orphans behind: kills qemu
/// first, so that virtme-run and vng reap it and exit on their own, and only
/// if they do not, the whole process group (`kill`, as there is no libc
/// dependency). Killing the group at once would reparent qemu to init, which
/// on these machines never reaps it.
fn stop_vm(child: &mut Child) -> Result<ExitStatus> {
    let pgid = child.id();
    let kill = |target: String| {
        let _ = Command::new("kill")
            .args(["-KILL", "--", &target])
            .stderr(Stdio::null())
            .status();
    };
    for pid in group_members(pgid, "qemu-system-") {
        kill(pid.to_string());
    }
    let grace = Instant::now() + Duration::from_secs(10);
    while Instant::now() < grace {
        if let Some(status) = child.try_wait().context("cannot wait for vng")? {
            return Ok(status);
        }
        thread::sleep(Duration::from_millis(50));
    }
    kill(format!("-{pgid}"));
    child.wait().context("cannot reap vng")
}

/// The processes of group `pgid` whose name starts with `comm_prefix`.
fn group_members(pgid: u32, comm_prefix: &str) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                parse_stat(&stat)
                    .is_some_and(|(comm, pgrp)| pgrp == pgid && comm.starts_with(comm_prefix))
            })
        })
        .collect()
}

/// `(comm, pgrp)` from a /proc/PID/stat line: `PID (COMM) STATE PPID PGRP ...`,
/// where COMM may itself contain spaces and parentheses.
fn parse_stat(stat: &str) -> Option<(&str, u32)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let comm = stat.get(open + 1..close)?;
    let pgrp = stat
        .get(close + 1..)?
        .split_whitespace()
        .nth(2)?
        .parse()
        .ok()?;
    Some((comm, pgrp))
}

/// Reads a pipe to its end on a thread, optionally echoing to our stderr.
/// Reads `pipe` to its end; sets `ready` once the guest's first line
/// ("leakbpf-vm: ready") has come.
fn collect(
    mut pipe: impl Read + Send + 'static,
    echo: bool,
    ready: Option<std::sync::Arc<std::sync::atomic::AtomicBool>>,
) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut all = Vec::new();
        let mut buf = [0u8; 8192];
        loop {
            match pipe.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if echo {
                        let _ = io::stderr().write_all(&buf[..n]);
                    }
                    // Only what came now, and a line's worth before it in
                    // case the marker straddles two reads.
                    let from = all.len().saturating_sub(READY_LINE.len());
                    all.extend_from_slice(&buf[..n]);
                    if let Some(ready) = &ready
                        && !ready.load(std::sync::atomic::Ordering::Relaxed)
                        && all[from..]
                            .windows(READY_LINE.len())
                            .any(|w| w == READY_LINE.as_bytes())
                    {
                        ready.store(true, std::sync::atomic::Ordering::Relaxed);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        String::from_utf8_lossy(&all).into_owned()
    })
}

const READY_LINE: &str = "leakbpf-vm: ready uptime=";

/// A directory removed (with its contents) when dropped: a run's scripts,
/// or a download being unpacked.
struct ScratchDir {
    path: PathBuf,
}

impl ScratchDir {
    /// A fresh, uniquely named directory `PREFIX-PID-N-NANOS` inside `parent`.
    fn new(parent: &Path, prefix: &str) -> Result<Self> {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let nanos = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        let path = parent.join(format!(
            "{prefix}-{}-{}-{nanos}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Where a download's packages come from.
#[derive(Clone, Copy)]
enum AptSources {
    /// The system's own configuration.
    System,
    /// [`APT_SOURCES`], through a configuration of its own in the cache.
    Private,
}

impl AptSources {
    fn apt_get(self) -> Result<Command> {
        let apt_get = find_tool("apt-get", "apt")?;
        let mut command = Command::new(apt_get);
        if let AptSources::Private = self {
            let dir = cache_root()?.join("apt");
            for sub in ["lists/partial", "cache/archives/partial"] {
                fs::create_dir_all(dir.join(sub))
                    .with_context(|| format!("cannot create {}", dir.join(sub).display()))?;
            }
            let sources = dir.join("sources.list");
            if fs::read_to_string(&sources).ok().as_deref() != Some(APT_SOURCES) {
                fs::write(&sources, APT_SOURCES)
                    .with_context(|| format!("cannot write {}", sources.display()))?;
            }
            for option in [
                format!("Dir::Etc::SourceList={}", sources.display()),
                "Dir::Etc::SourceParts=/dev/null".to_owned(),
                format!("Dir::State::Lists={}", dir.join("lists").display()),
                format!("Dir::Cache={}", dir.join("cache").display()),
                // Downloads land in a root-owned cache dir.
                "APT::Sandbox::User=root".to_owned(),
            ] {
                command.arg("-o").arg(option);
            }
        }
        Ok(command)
    }
}

/// `apt-get download PACKAGES` and `dpkg-deb -x` each into `tree`. Needs
/// no root: nothing is installed.
fn download_and_unpack(
    packages: &[&str],
    sources: AptSources,
    scratch: &ScratchDir,
    tree: &Path,
) -> Result<()> {
    let dpkg_deb = find_tool("dpkg-deb", "dpkg")?;
    let download = scratch.path.join("download");
    fs::create_dir_all(&download)
        .with_context(|| format!("cannot create {}", download.display()))?;
    let fetch = || -> Result<()> {
        run_quiet(
            sources
                .apt_get()?
                .arg("download")
                .args(packages)
                .current_dir(&download),
        )
    };
    // A fresh machine (or cache) may have no package lists yet: refresh
    // once and retry.
    if fetch().is_err() {
        run_quiet(sources.apt_get()?.args(["update", "-qq"]))
            .context("apt-get update failed (needed to download a kernel for the matrix)")?;
        fetch().with_context(|| {
            format!(
                "apt-get download {} failed even after apt-get update",
                packages.join(" ")
            )
        })?;
    }
    for deb in debs_in(&download)? {
        run_quiet(Command::new(&dpkg_deb).arg("-x").arg(&deb).arg(tree))
            .with_context(|| format!("dpkg-deb -x {} failed", deb.display()))?;
        let _ = fs::remove_file(&deb);
    }
    Ok(())
}

/// Debian's kernels since 6.17 split the image: `linux-image-R` only
/// depends on `linux-binary-R` (usr/lib/modules/R/vmlinuz) and
/// `linux-modules-R`. Moves that layout to the classic one vng reads
/// (boot/vmlinuz-R, lib/modules/R).
fn normalize_kernel_tree(tree: &Path, release: &str) -> Result<()> {
    let usr_modules = tree.join("usr/lib/modules").join(release);
    let modules = tree.join("lib/modules").join(release);
    if usr_modules.is_dir() && !modules.is_dir() {
        fs::create_dir_all(tree.join("lib/modules"))?;
        fs::rename(&usr_modules, &modules).with_context(|| {
            format!(
                "cannot move {} to {}",
                usr_modules.display(),
                modules.display()
            )
        })?;
    }
    let vmlinuz = tree.join("boot").join(format!("vmlinuz-{release}"));
    let split = modules.join("vmlinuz");
    if !vmlinuz.is_file() && split.is_file() {
        fs::create_dir_all(tree.join("boot"))?;
        fs::rename(&split, &vmlinuz)
            .with_context(|| format!("cannot move {} to {}", split.display(), vmlinuz.display()))?;
    }
    Ok(())
}

/// Moves a finished `tree` to `dir`, replacing whatever was there.
fn install_tree(tree: &Path, dir: &Path) -> Result<()> {
    let _ = fs::remove_dir_all(dir);
    fs::rename(tree, dir)
        .with_context(|| format!("cannot move {} to {}", tree.display(), dir.display()))
}

/// Makes sure `kernel` is unpacked in the cache and returns its vmlinuz.
///
/// Idempotent: returns at once when `boot/vmlinuz-RELEASE` and
/// `lib/modules/RELEASE/modules.dep` are in place. Otherwise runs
/// `apt-get download PACKAGE`, `dpkg-deb -x` and `depmod -b DIR RELEASE`
/// into a staging directory and renames it into place, so an interrupted
/// run leaves nothing half-done behind.
pub fn ensure_kernel(kernel: &KernelSpec) -> Result<PathBuf> {
    let release = kernel.release();
    let kernels = cache_root()?.join("kernels");
    let dir = kernels.join(release);
    let vmlinuz = dir.join("boot").join(format!("vmlinuz-{release}"));
    if vmlinuz.is_file()
        && dir
            .join("lib/modules")
            .join(release)
            .join("modules.dep")
            .is_file()
    {
        return Ok(vmlinuz);
    }

    let depmod = find_tool("depmod", "kmod")?;
    eprintln!(
        "xtask: fetching kernel {} into {}",
        kernel.package_name(),
        dir.display()
    );
    let scratch = ScratchDir::new(&kernels, ".partial")?;
    let tree = scratch.path.join("tree");
    download_and_unpack(
        &[kernel.package_name()],
        AptSources::Private,
        &scratch,
        &tree,
    )?;
    if !tree
        .join("boot")
        .join(format!("vmlinuz-{release}"))
        .is_file()
    {
        let binary = format!("linux-binary-{release}");
        let modules = format!("linux-modules-{release}");
        download_and_unpack(&[&binary, &modules], AptSources::Private, &scratch, &tree)?;
    }
    normalize_kernel_tree(&tree, release)?;
    ensure!(
        tree.join("boot")
            .join(format!("vmlinuz-{release}"))
            .is_file(),
        "{} has no boot/vmlinuz-{release}",
        kernel.package_name()
    );
    ensure!(
        tree.join("lib/modules").join(release).is_dir(),
        "{} has no lib/modules/{release}",
        kernel.package_name()
    );
    // The .deb ships no modules.dep; vng would otherwise run depmod itself
    // on every boot.
    run_quiet(Command::new(depmod).arg("-b").arg(&tree).arg(release))
        .with_context(|| format!("depmod -b {} {release} failed", tree.display()))?;
    install_tree(&tree, &dir)?;
    Ok(vmlinuz)
}

/// Returns a `vng` of [`VNG_VERSION`], pip-installing virtme-ng first if the
/// one on PATH is missing or another version.
pub fn ensure_vng() -> Result<PathBuf> {
    if let Some(vng) = which("vng")
        && vng_version(&vng).as_deref() == Some(VNG_VERSION)
    {
        return Ok(vng);
    }
    let python = which("python3").ok_or_else(|| {
        anyhow!("vng (virtme-ng {VNG_VERSION}) is missing and there is no python3 to pip-install it with")
    })?;
    eprintln!(
        "xtask: installing virtme-ng {VNG_VERSION} with {}",
        python.display()
    );
    run_quiet(
        Command::new(&python)
            .args([
                "-m",
                "pip",
                "install",
                "--disable-pip-version-check",
                "--quiet",
            ])
            .arg(format!("virtme-ng=={VNG_VERSION}")),
    )
    .with_context(|| format!("pip install virtme-ng=={VNG_VERSION} failed"))?;
    // The interpreter's own scripts dir: a pyenv shim may not be rehashed yet.
    let scripts = capture(Command::new(&python).args([
        "-c",
        "import sysconfig; print(sysconfig.get_path('scripts'))",
    ]))?;
    let vng = Path::new(scripts.trim()).join("vng");
    match vng_version(&vng) {
        Some(v) if v == VNG_VERSION => Ok(vng),
        other => bail!(
            "pip installed virtme-ng but {} reports version {}, not {VNG_VERSION}",
            vng.display(),
            other.as_deref().unwrap_or("nothing")
        ),
    }
}

/// `vng --version` prints `virtme-ng 1.42`.
fn vng_version(vng: &Path) -> Option<String> {
    let out = Command::new(vng)
        .arg("--version")
        .stderr(Stdio::null())
        .output()
        .ok()?;
    parse_vng_version(&String::from_utf8_lossy(&out.stdout))
}

fn parse_vng_version(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|l| l.trim().strip_prefix("virtme-ng "))
        .map(|v| v.trim().to_owned())
}

/// Returns a busybox binary for vng's initramfs: one on PATH (the names vng
/// looks for), else Debian's `busybox-static` unpacked into the cache.
pub fn ensure_busybox() -> Result<PathBuf> {
    for name in ["busybox-static", "busybox.static", "busybox"] {
        if let Some(path) = which(name) {
            return Ok(path);
        }
    }
    let dir = cache_root()?.join("tools").join("busybox-static");
    let busybox = dir.join("bin/busybox");
    if busybox.is_file() {
        return Ok(busybox);
    }
    eprintln!("xtask: fetching busybox-static into {}", dir.display());
    let tools = dir.parent().expect("dir has a parent");
    let scratch = ScratchDir::new(tools, ".partial")?;
    let tree = scratch.path.join("tree");
    download_and_unpack(&["busybox-static"], AptSources::System, &scratch, &tree)
        .context("vng needs busybox to build its initramfs")?;
    ensure!(
        tree.join("bin/busybox").is_file(),
        "busybox-static has no bin/busybox"
    );
    install_tree(&tree, &dir)?;
    Ok(busybox)
}

/// What vng needs from the host besides itself: qemu, and udevd, which the
/// guest's init runs from the shared root to find vng's virtio ports.
fn check_host_tools() -> Result<()> {
    find_tool("qemu-system-x86_64", "qemu-system-x86")?;
    ensure!(
        [
            "/usr/lib/systemd/systemd-udevd",
            "/lib/systemd/systemd-udevd"
        ]
        .iter()
        .any(|p| Path::new(p).is_file()),
        "systemd-udevd is missing: apt-get install udev (the VM's init needs it)"
    );
    Ok(())
}

/// The project's cache, as ./x computes it.
fn cache_root() -> Result<PathBuf> {
    if let Some(dir) = env::var_os("LEAKBPF_CACHE").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir));
    }
    if let Some(dir) = env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(dir).join("leakbpf"));
    }
    let home = env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .ok_or_else(|| anyhow!("neither LEAKBPF_CACHE, XDG_CACHE_HOME nor HOME is set"))?;
    Ok(PathBuf::from(home).join(".cache/leakbpf"))
}

/// A program on PATH, or in the sbin directories a non-root PATH may lack.
fn which(name: &str) -> Option<PathBuf> {
    let path = env::var_os("PATH").unwrap_or_default();
    env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

fn find_tool(name: &str, package: &str) -> Result<PathBuf> {
    which(name).ok_or_else(|| anyhow!("{name} is missing: apt-get install {package}"))
}

/// Runs a command; on failure the error carries its stderr's last lines.
fn run_quiet(cmd: &mut Command) -> Result<()> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {}", display_cmd(cmd)))?;
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let stderr: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        bail!(
            "{} exited with {}: {}",
            display_cmd(cmd),
            out.status,
            stderr[stderr.len().saturating_sub(3)..].join(" / ")
        );
    }
    Ok(())
}

/// Runs a command and returns its stdout.
fn capture(cmd: &mut Command) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("cannot run {}", display_cmd(cmd)))?;
    ensure!(
        out.status.success(),
        "{} exited with {}",
        display_cmd(cmd),
        out.status
    );
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn display_cmd(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

fn debs_in(dir: &Path) -> Result<Vec<PathBuf>> {
    let debs: Vec<PathBuf> = fs::read_dir(dir)
        .with_context(|| format!("cannot list {}", dir.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension() == Some(OsStr::new("deb")))
        .collect();
    ensure!(
        !debs.is_empty(),
        "apt-get download left no .deb in {}",
        dir.display()
    );
    Ok(debs)
}

/// A generic amd64 kernel release: `6.1.0-56-amd64`, `6.12.117+deb12-amd64`;
/// not `6.1.0-56-cloud-amd64`, `6.1.0-56-rt-amd64`, `6.1.0-56-amd64-dbg`.
fn is_generic_release(release: &str) -> bool {
    release.starts_with(|c: char| c.is_ascii_digit())
        && release.ends_with("-amd64")
        && !release.contains("-cloud-")
        && !release.contains("-rt-")
        && release
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '+' | '~'))
}

/// The `leakbpf-vm:` lines `guest-run.sh` writes to stderr: the first
/// `ready`, the last `exit status` (a command may run the wrapper again).
#[derive(Debug, Default, PartialEq)]
struct Markers {
    ready_uptime: Option<Duration>,
    exit_status: Option<i32>,
}

fn parse_markers(stderr: &str) -> Markers {
    let mut markers = Markers::default();
    for line in stderr.lines() {
        // With the console on, a line may be preceded by console output.
        let Some(at) = line.find(MARKER) else {
            continue;
        };
        let rest = &line[at + MARKER.len()..];
        if let Some(rest) = rest.strip_prefix("ready uptime=")
            && markers.ready_uptime.is_none()
        {
            markers.ready_uptime = rest
                .split_whitespace()
                .next()
                .and_then(|s| s.parse::<f64>().ok())
                .and_then(|s| Duration::try_from_secs_f64(s).ok());
        } else if let Some(rest) = rest.strip_prefix("exit status=") {
            markers.exit_status = rest.trim().parse().ok();
        }
    }
    markers
}

fn tail_lines(text: &str, lines: usize) -> &str {
    if lines == 0 {
        return "";
    }
    let trimmed = text.strip_suffix('\n').unwrap_or(text);
    match trimmed.rmatch_indices('\n').nth(lines - 1) {
        Some((at, _)) => &text[at + 1..],
        None => text,
    }
}

/// Quotes a string for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernel_spec_accepts_only_generic_images() {
        let spec = KernelSpec::package("linux-image-6.1.0-56-amd64").unwrap();
        assert_eq!(spec.release(), "6.1.0-56-amd64");
        assert_eq!(spec.package_name(), "linux-image-6.1.0-56-amd64");
        assert_eq!(
            KernelSpec::package("linux-image-6.12.117+deb12-amd64")
                .unwrap()
                .release(),
            "6.12.117+deb12-amd64"
        );
        for bad in [
            "linux-image-amd64",
            "linux-image-6.1.0-56-cloud-amd64",
            "linux-image-6.1.0-56-rt-amd64",
            "linux-image-6.1.0-56-amd64-dbg",
            "linux-image-6.1.0-56-amd64-unsigned",
            "linux-headers-6.1.0-56-amd64",
            "linux-image-6.1.0-56-amd64; rm -rf /",
        ] {
            assert!(KernelSpec::package(bad).is_err(), "{bad}");
        }
        for name in KERNEL_MATRIX {
            KernelSpec::package(name).unwrap();
        }
        assert_eq!(KernelSpec::default().release(), "6.1.0-56-amd64");
    }

    #[test]
    fn parses_vng_version() {
        assert_eq!(
            parse_vng_version("virtme-ng 1.42\n").as_deref(),
            Some("1.42")
        );
        assert_eq!(parse_vng_version("usage: vng ...\n"), None);
    }

    #[test]
    fn parses_guest_markers() {
        let stderr = "\
[    0.000000] Linux version 6.1.0-56-amd64
leakbpf-vm: ready uptime=11.03 kernel=6.1.0-56-amd64
some error from the command
[   12.1] random: crng initleakbpf-vm: exit status=3
leakbpf-vm: ready uptime=13.5 kernel=6.1.0-56-amd64
";
        assert_eq!(
            parse_markers(stderr),
            Markers {
                ready_uptime: Some(Duration::from_millis(11_030)),
                exit_status: Some(3),
            }
        );
        assert_eq!(parse_markers("no markers\n"), Markers::default());
    }

    #[test]
    fn parses_proc_stat() {
        assert_eq!(
            parse_stat("14575 (qemu-system-x86) S 14559 14550 14550 0 -1 4194560 ..."),
            Some(("qemu-system-x86", 14550))
        );
        assert_eq!(parse_stat("7 (a (b) c) R 1 7 7 0"), Some(("a (b) c", 7)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn finds_the_oops_start() {
        let log = "boot\nok\n[ 1.0] BUG: unable to handle page fault\n[ 1.1] RIP: x\n";
        let at = oops_start(log).unwrap();
        assert!(log[at..].starts_with("[ 1.0] BUG:"));
        assert_eq!(
            head_lines(&log[at..], 1),
            "[ 1.0] BUG: unable to handle page fault\n"
        );
        assert_eq!(oops_start("boot\nfine\n"), None);
    }

    #[test]
    fn tails_lines() {
        assert_eq!(tail_lines("a\nb\nc\n", 2), "b\nc\n");
        assert_eq!(tail_lines("a\nb\nc", 2), "b\nc");
        assert_eq!(tail_lines("a\nb\n", 5), "a\nb\n");
        assert_eq!(tail_lines("a\n", 0), "");
    }

    #[test]
    fn quotes_for_the_shell() {
        assert_eq!(sh_quote("/a b/c"), "'/a b/c'");
        assert_eq!(sh_quote("it's"), r"'it'\''s'");
    }
}

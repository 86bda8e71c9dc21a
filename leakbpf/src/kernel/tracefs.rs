//! Tracepoint record layouts from tracefs.
//!
//! A tracepoint program receives the raw record the kernel wrote, whose
//! layout is published as text in `<tracefs>/events/<system>/<event>/format`.
//! Field offsets there change between kernel versions and configurations
//! (e.g. `tcp_destroy_sock` grew `sock_cookie`), so they are read at run time.

use std::io;
use std::path::{Path, PathBuf};

/// Where tracefs is usually mounted, newest convention first. The second is
/// the debugfs automount kept for old setups.
pub const WELL_KNOWN_MOUNTS: [&str; 2] = ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"];

/// Where a field lives in a tracepoint record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Field {
    /// Bytes from the start of the record (common fields included).
    pub offset: u32,
    /// Bytes the field occupies.
    pub size: u32,
}

/// A format file line that could not be understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {reason}: {text:?}")]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    pub reason: &'static str,
    pub text: String,
}

/// Why a tracefs question could not be answered. Messages name the file.
#[derive(Debug, thiserror::Error)]
pub enum TracefsError {
    #[error(
        "tracefs is not mounted (checked /proc/self/mounts, {}); \
         mount it with `mount -t tracefs nodev /sys/kernel/tracing`",
        WELL_KNOWN_MOUNTS.join(", ")
    )]
    NotMounted,
    #[error("reading {path}: {error}")]
    Read { path: PathBuf, error: io::Error },
    #[error("parsing {path}: {error}")]
    Parse { path: PathBuf, error: ParseError },
    #[error("{path} has no field {field}")]
    NoField { path: PathBuf, field: String },
}

/// A tracefs mount.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tracefs {
    root: PathBuf,
}

impl Tracefs {
    /// Finds the mounted tracefs: first any `tracefs` mount listed in
    /// `/proc/self/mounts`, then tracefs under a debugfs mount, then
    /// [`WELL_KNOWN_MOUNTS`] (touching `debug/tracing` makes the kernel
    /// automount it). A candidate counts only if it has an `events`
    /// directory: an empty `/sys/kernel/tracing` is just the mount point.
    pub fn find() -> Result<Self, TracefsError> {
        let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
        candidate_roots(&mounts)
            .into_iter()
            .find(|root| root.join("events").is_dir())
            .map(|root| Self { root })
            .ok_or(TracefsError::NotMounted)
    }

    /// Uses `root` as the tracefs mount without checking it (tests point it
    /// at a directory of copied format files).
    pub fn at(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/events/<system>/<event>/format`.
    pub fn format_path(&self, system: &str, event: &str) -> PathBuf {
        self.root
            .join("events")
            .join(system)
            .join(event)
            .join("format")
    }

    /// Whether the kernel has this tracepoint (built in and not compiled out).
    pub fn exists(&self, system: &str, event: &str) -> bool {
        self.format_path(system, event).is_file()
    }

    /// All fields of an event's record, in file order.
    pub fn format(&self, system: &str, event: &str) -> Result<Vec<(String, Field)>, TracefsError> {
        let path = self.format_path(system, event);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => return Err(TracefsError::Read { path, error }),
        };
        parse_format(&text).map_err(|error| TracefsError::Parse { path, error })
    }

    /// One field of an event's record.
    pub fn field(&self, system: &str, event: &str, field: &str) -> Result<Field, TracefsError> {
        self.format(system, event)?
            .into_iter()
            .find_map(|(name, found)| (name == field).then_some(found))
            .ok_or_else(|| TracefsError::NoField {
                path: self.format_path(system, event),
                field: field.to_owned(),
            })
    }
}

/// Whether tracepoint `system:event` exists; `false` also when tracefs is
/// not mounted, since then it cannot be attached either.
pub fn tracepoint_exists(system: &str, event: &str) -> bool {
    Tracefs::find().is_ok_and(|tracefs| tracefs.exists(system, event))
}

/// Parses the text of a tracefs `format` file into `(name, field)` pairs, in
/// file order. Only `field:` lines matter; the header (`name:`, `ID:`) and
/// `print fmt:` are skipped. A field line looks like (tabs shown as spaces)
///
/// ```text
///     field:__u8 saddr[4];    offset:28;    size:4;    signed:0;
/// ```
///
/// The name is the declaration's last word with any `*` prefix and array
/// suffix removed (`saddr`, `skaddr` from `const void * skaddr`).
pub fn parse_format(text: &str) -> Result<Vec<(String, Field)>, ParseError> {
    let mut fields = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let trimmed = line.trim();
        let Some(rest) = trimmed.strip_prefix("field:") else {
            continue;
        };
        let fail = |reason| ParseError {
            line: index + 1,
            reason,
            text: line.to_owned(),
        };
        let mut parts = rest.split(';').map(str::trim);
        let declaration = parts.next().unwrap_or_default();
        let name = declaration
            .split_whitespace()
            .next_back()
            .map(|word| word.trim_start_matches('*'))
            .map(|word| word.split_once('[').map_or(word, |(name, _)| name))
            .filter(|name| !name.is_empty())
            .ok_or_else(|| fail("no field name"))?;
        let (mut offset, mut size) = (None, None);
        for part in parts {
            let Some((key, value)) = part.split_once(':') else {
                continue;
            };
            let slot = match key.trim() {
                "offset" => &mut offset,
                "size" => &mut size,
                _ => continue,
            };
            *slot = Some(
                value
                    .trim()
                    .parse::<u32>()
                    .map_err(|_| fail("bad number"))?,
            );
        }
        let offset = offset.ok_or_else(|| fail("no offset"))?;
        let size = size.ok_or_else(|| fail("no size"))?;
        fields.push((name.to_owned(), Field { offset, size }));
    }
    if fields.is_empty() {
        return Err(ParseError {
            line: 0,
            reason: "no field: lines",
            text: text.lines().next().unwrap_or_default().to_owned(),
        });
    }
    Ok(fields)
}

/// Where tracefs may be, best first, given the text of `/proc/self/mounts`.
fn candidate_roots(mounts: &str) -> Vec<PathBuf> {
    let mut tracefs = Vec::new();
    let mut debugfs = Vec::new();
    for line in mounts.lines() {
        let mut words = line.split_whitespace();
        let (Some(_device), Some(mount_point), Some(fs_type)) =
            (words.next(), words.next(), words.next())
        else {
            continue;
        };
        let mount_point = PathBuf::from(unescape_mount_point(mount_point));
        match fs_type {
            "tracefs" => tracefs.push(mount_point),
            "debugfs" => debugfs.push(mount_point.join("tracing")),
            _ => {}
        }
    }
    let mut roots = tracefs;
    roots.extend(debugfs);
    for known in WELL_KNOWN_MOUNTS {
        let known = PathBuf::from(known);
        if !roots.contains(&known) {
            roots.push(known);
        }
    }
    roots
}

/// `/proc/self/mounts` writes space, tab, newline and backslash in mount
/// points as three-digit octal escapes (`\040`).
fn unescape_mount_point(escaped: &str) -> String {
    let bytes = escaped.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let octal = bytes.get(i + 1..i + 4).and_then(|digits| {
            let digits = std::str::from_utf8(digits).ok()?;
            u8::from_str_radix(digits, 8).ok()
        });
        match (bytes[i], octal) {
            (b'\\', Some(byte)) => {
                out.push(byte);
                i += 4;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Where leakbpf mounts tracefs when no mount exists (as the kernel docs do).
pub const DEFAULT_MOUNT: &str = "/sys/kernel/tracing";

/// The tracefs mount, mounting it on [`DEFAULT_MOUNT`] first if the system
/// has none (a fresh VM may not). Needs root, like everything that loads.
pub fn ensure_mounted() -> anyhow::Result<Tracefs> {
    if let Ok(tracefs) = Tracefs::find() {
        return Ok(tracefs);
    }
    // Only here is CAP_SYS_ADMIN needed: say so rather than EPERM.
    crate::privileges::require(crate::privileges::effective(), &[crate::privileges::MOUNT])?;
    let target = std::ffi::CString::new(DEFAULT_MOUNT).expect("no NUL in a constant");
    // SAFETY: NUL-terminated strings that outlive the call; no data pointer.
    let rc = unsafe {
        libc::mount(
            c"nodev".as_ptr(),
            target.as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc != 0 {
        anyhow::bail!(
            "tracefs is not mounted and mounting it on {DEFAULT_MOUNT} failed: {}",
            std::io::Error::last_os_error()
        );
    }
    Ok(Tracefs::find()?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// `events/syscalls/sys_exit_accept4/format` from Linux 6.18 (x86_64).
    pub(crate) const SYS_EXIT_ACCEPT4: &str = "name: sys_exit_accept4
ID: 2233
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;

print fmt: \"0x%lx\", REC->ret
";

    /// `events/syscalls/sys_exit_accept/format` from Linux 6.18 (x86_64).
    pub(crate) const SYS_EXIT_ACCEPT: &str = "name: sys_exit_accept
ID: 2231
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:int __syscall_nr;\toffset:8;\tsize:4;\tsigned:1;
\tfield:long ret;\toffset:16;\tsize:8;\tsigned:1;

print fmt: \"0x%lx\", REC->ret
";

    /// `events/tcp/tcp_destroy_sock/format` from Linux 6.18 (x86_64).
    pub(crate) const TCP_DESTROY_SOCK: &str = "name: tcp_destroy_sock
ID: 2278
format:
\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;
\tfield:unsigned char common_flags;\toffset:2;\tsize:1;\tsigned:0;
\tfield:unsigned char common_preempt_count;\toffset:3;\tsize:1;\tsigned:0;
\tfield:int common_pid;\toffset:4;\tsize:4;\tsigned:1;

\tfield:const void * skaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:__u16 sport;\toffset:16;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:18;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:20;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:22;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:26;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:30;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:46;\tsize:16;\tsigned:0;
\tfield:__u64 sock_cookie;\toffset:64;\tsize:8;\tsigned:0;

print fmt: \"family=%s sport=%hu dport=%hu saddr=%pI4 daddr=%pI4 saddrv6=%pI6c daddrv6=%pI6c sock_cookie=%llx\", __print_symbolic(REC->family, { 2, \"AF_INET\" }, { 10, \"AF_INET6\" }), REC->sport, REC->dport, REC->saddr, REC->daddr, REC->saddr_v6, REC->daddr_v6, REC->sock_cookie
";

    fn parse(text: &str) -> Vec<(String, Field)> {
        match parse_format(text) {
            Ok(fields) => fields,
            Err(e) => panic!("{e}"),
        }
    }

    fn field(offset: u32, size: u32) -> Field {
        Field { offset, size }
    }

    #[test]
    fn parses_sys_exit_accept4() {
        let fields = parse(SYS_EXIT_ACCEPT4);
        let names: Vec<&str> = fields.iter().map(|(name, _)| name.as_str()).collect();
        assert_eq!(
            names,
            [
                "common_type",
                "common_flags",
                "common_preempt_count",
                "common_pid",
                "__syscall_nr",
                "ret"
            ]
        );
        assert_eq!(fields[5].1, field(16, 8));
        assert_eq!(fields[4].1, field(8, 4));
        assert_eq!(fields[0].1, field(0, 2));
    }

    #[test]
    fn parses_tcp_destroy_sock() {
        let fields = parse(TCP_DESTROY_SOCK);
        let get = |wanted: &str| {
            fields
                .iter()
                .find(|(name, _)| name == wanted)
                .map(|(_, f)| *f)
        };
        assert_eq!(get("skaddr"), Some(field(8, 8)));
        assert_eq!(get("saddr"), Some(field(22, 4)));
        assert_eq!(get("daddr_v6"), Some(field(46, 16)));
        assert_eq!(get("sock_cookie"), Some(field(64, 8)));
        assert_eq!(fields.len(), 13);
    }

    #[test]
    fn names_lose_pointer_stars_and_array_suffixes() {
        let fields = parse(
            "\tfield:const void *skaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
             field:char comm[TASK_COMM_LEN];\toffset:16;\tsize:16;\tsigned:0;\n\
             \tfield:__data_loc char[] name;\toffset:32;\tsize:4;\tsigned:0;\n",
        );
        assert_eq!(
            fields,
            [
                ("skaddr".to_owned(), field(8, 8)),
                ("comm".to_owned(), field(16, 16)),
                ("name".to_owned(), field(32, 4)),
            ]
        );
    }

    #[test]
    fn rejects_malformed_lines() {
        let e = parse_format("format:\n\tfield:long ret;\tsize:8;\n").unwrap_err();
        assert_eq!(e.line, 2);
        assert_eq!(e.reason, "no offset");
        let e = parse_format("\tfield:long ret;\toffset:x;\tsize:8;\n").unwrap_err();
        assert_eq!(e.reason, "bad number");
        let e = parse_format("\tfield:;\toffset:1;\tsize:8;\n").unwrap_err();
        assert_eq!(e.reason, "no field name");
        let e = parse_format("name: nothing\nprint fmt: \"\"\n").unwrap_err();
        assert_eq!(e.reason, "no field: lines");
    }

    #[test]
    fn errors_name_the_file() {
        let scratch = tempfile::tempdir().unwrap();
        let root = scratch.path();
        let dir = root.join("events/tcp/tcp_destroy_sock");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("format"), TCP_DESTROY_SOCK).unwrap();
        let tracefs = Tracefs::at(root);
        let path = dir.join("format");

        assert!(tracefs.exists("tcp", "tcp_destroy_sock"));
        assert!(!tracefs.exists("tcp", "tcp_nope"));
        assert_eq!(
            tracefs
                .field("tcp", "tcp_destroy_sock", "sock_cookie")
                .unwrap(),
            field(64, 8)
        );
        let e = tracefs
            .field("tcp", "tcp_destroy_sock", "nope")
            .unwrap_err();
        assert_eq!(
            e.to_string(),
            format!("{} has no field nope", path.display())
        );
        let e = tracefs.field("tcp", "tcp_nope", "x").unwrap_err();
        let missing = root.join("events/tcp/tcp_nope/format");
        assert!(
            e.to_string()
                .starts_with(&format!("reading {}: ", missing.display())),
            "{e}"
        );
        std::fs::write(dir.join("format"), "\tfield:long ret;\n").unwrap();
        let e = tracefs.field("tcp", "tcp_destroy_sock", "ret").unwrap_err();
        assert!(
            e.to_string()
                .starts_with(&format!("parsing {}: line 1: no offset", path.display())),
            "{e}"
        );
    }

    #[test]
    fn mount_candidates() {
        let mounts = "sysfs /sys sysfs rw 0 0\n\
                      debugfs /sys/kernel/debug debugfs rw 0 0\n\
                      nodev /mnt/trace\\040fs tracefs rw 0 0\n";
        assert_eq!(
            candidate_roots(mounts),
            [
                PathBuf::from("/mnt/trace fs"),
                PathBuf::from("/sys/kernel/debug/tracing"),
                PathBuf::from("/sys/kernel/tracing"),
            ]
        );
        assert_eq!(
            candidate_roots(""),
            WELL_KNOWN_MOUNTS.map(PathBuf::from).to_vec()
        );
        assert_eq!(unescape_mount_point(r"a\134b\011c\"), "a\\b\tc\\");
    }
}

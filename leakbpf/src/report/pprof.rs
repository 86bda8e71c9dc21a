//! `--format pprof`: the report as a gzip-compressed profile.proto
//! (github.com/google/pprof/proto/profile.proto), so `go tool pprof`, flame
//! graph UIs and profile stores can browse outstanding sockets by the stack
//! that opened them, the way they browse heap profiles by allocation site.
//!
//! Shape of the profile:
//! - one sample type, `sockets`/`count` (an age would not add up across
//!   samples the way flame graphs sum values, so it is a label instead);
//! - one sample per [`Group`]: value = its socket count, locations = its
//!   *user* stack, leaf first, then a synthetic root frame
//!   `"<comm> (pid N)"` so processes form separate towers. The kernel stack
//!   is left out: it is the same few socket syscalls for every group and
//!   would only bury the user code that leaks;
//! - a group without a stack (pre-existing sockets, or a stack the kernel
//!   could not record) gets a synthetic `"[<direction>]"` leaf instead, e.g.
//!   `"[preexisting]"`;
//! - labels: `direction`, `comm`, `pid` (number), `oldest_age` (number, in
//!   seconds) and one `class` label per class, so `-tagfocus=class=idle`
//!   selects exactly the groups with that class;
//! - `duration_nanos` is the trace's duration; `time_nanos` stays unset, as
//!   the report carries no wall-clock start; comments carry the hooks, the
//!   event counts and why the report is incomplete, if it is.
//!
//! The messages are written by hand with `prost` derives: the schema is
//! small and stable, and this avoids protoc in the build.
use std::{
    collections::{HashMap, hash_map::Entry},
    io::Write,
    path::Path,
};

use anyhow::Result;
use flate2::{Compression, write::GzEncoder};
use prost::Message;

use super::model::{Group, ProcessReport, Report};
use crate::{event::Direction, symbolize::Frame};

/// Serializes `report` as a gzip-compressed pprof profile.
pub fn encode(report: &Report) -> Result<Vec<u8>> {
    let profile = Builder::default().build(report);
    let mut gz = GzEncoder::new(Vec::new(), Compression::default());
    gz.write_all(&profile.encode_to_vec())?;
    Ok(gz.finish()?)
}

/// A frame's display name, shared by the pprof and folded encoders so both
/// show the same names: the symbol, else `<module file name>+0x<offset>`,
/// else the bare address `0x<addr>`.
pub fn frame_name(frame: &Frame) -> String {
    match (&frame.symbol, &frame.module, frame.offset) {
        (Some(symbol), _, _) => symbol.clone(),
        (None, Some(module), Some(offset)) => {
            let module = Path::new(module).file_name().map_or_else(
                || module.clone(),
                |name| name.to_string_lossy().into_owned(),
            );
            format!("{module}+{offset:#x}")
        }
        _ => format!("{:#x}", frame.address),
    }
}

/// The synthetic root frame of a process's samples.
pub fn process_frame_name(process: &ProcessReport) -> String {
    format!("{} (pid {})", process.comm, process.pid)
}

/// The synthetic frame for a direction, `[connect]` and so on: the leaf of
/// a group with no user stack here, every group's second frame in folded.
pub fn direction_frame_name(direction: Direction) -> String {
    format!("[{}]", direction.as_str())
}

/// Assembles a [`Profile`], interning strings and deduplicating functions,
/// locations and mappings as profile.proto expects.
#[derive(Default)]
struct Builder {
    profile: Profile,
    strings: HashMap<String, i64>,
    /// (name, filename) -> function id.
    functions: HashMap<(i64, i64), u64>,
    locations: HashMap<LocationKey, u64>,
    /// (pid, module) -> index in `profile.mapping`.
    mappings: HashMap<(u32, String), usize>,
}

/// A location is the same only if it is the same code: the address alone is
/// not enough, as one address means different code in different processes.
#[derive(PartialEq, Eq, Hash)]
struct LocationKey {
    mapping_id: u64,
    address: u64,
    function_id: u64,
    line: i64,
}

impl Builder {
    fn build(mut self, report: &Report) -> Profile {
        // Index 0 must be the empty string.
        self.string("");
        let sockets = self.string("sockets");
        let count = self.string("count");
        self.profile.sample_type = vec![ValueType {
            r#type: sockets,
            unit: count,
        }];
        self.profile.period_type = Some(ValueType {
            r#type: sockets,
            unit: count,
        });
        self.profile.period = 1;
        self.profile.default_sample_type = sockets;
        self.profile.duration_nanos = (report.duration_s * 1e9) as i64;

        let mut comments = vec![
            "leakbpf: open TCP sockets never closed, by the user stack that opened them"
                .to_string(),
            format!("hooks: {}", report.hooks),
            format!(
                "events: {}, lost events: {}, lost stacks: {}",
                report.events, report.lost_events, report.lost_stacks
            ),
        ];
        comments.extend(
            report
                .incomplete
                .iter()
                .map(|why| format!("incomplete: {why}")),
        );
        self.profile.comment = comments.iter().map(|c| self.string(c)).collect();

        // pprof takes the first mapping for the main binary (`File:` in its
        // output), so the executables' mappings go first.
        for process in &report.processes {
            let Some(exe) = &process.exe else { continue };
            for group in &process.groups {
                for frame in group
                    .stack
                    .iter()
                    .chain(&group.request_stack)
                    .filter(|f| f.module.as_ref() == Some(exe))
                {
                    self.mapping(process.pid, exe, frame);
                }
            }
        }

        for process in &report.processes {
            let root = self.synthetic_location(&process_frame_name(process));
            for group in &process.groups {
                // Leaf first; the request site's frames below the dial's.
                let mut location_id: Vec<u64> = group
                    .stack
                    .iter()
                    .chain(&group.request_stack)
                    .map(|frame| self.frame_location(process.pid, frame))
                    .collect();
                if location_id.is_empty() {
                    location_id
                        .push(self.synthetic_location(&direction_frame_name(group.direction)));
                }
                location_id.push(root);
                let label = self.labels(process, group);
                self.profile.sample.push(Sample {
                    location_id,
                    value: vec![i64::try_from(group.count).unwrap_or(i64::MAX)],
                    label,
                });
            }
        }
        self.profile
    }

    fn labels(&mut self, process: &ProcessReport, group: &Group) -> Vec<Label> {
        let mut labels = vec![
            self.str_label("direction", group.direction.as_str()),
            self.str_label("comm", &process.comm),
            Label {
                key: self.string("pid"),
                num: i64::from(process.pid),
                ..Label::default()
            },
            Label {
                key: self.string("oldest_age"),
                num: group.oldest_age_s as i64,
                num_unit: self.string("seconds"),
                ..Label::default()
            },
        ];
        for class in &group.classes {
            labels.push(self.str_label("class", class.name()));
        }
        labels
    }

    fn str_label(&mut self, key: &str, value: &str) -> Label {
        Label {
            key: self.string(key),
            str: self.string(value),
            ..Label::default()
        }
    }

    fn string(&mut self, s: &str) -> i64 {
        if let Some(&index) = self.strings.get(s) {
            return index;
        }
        let index = self.profile.string_table.len() as i64;
        self.profile.string_table.push(s.to_string());
        self.strings.insert(s.to_string(), index);
        index
    }

    fn function(&mut self, name: &str, filename: Option<&str>) -> u64 {
        let name = self.string(name);
        let filename = filename.map_or(0, |f| self.string(f));
        let next_id = self.profile.function.len() as u64 + 1;
        match self.functions.entry((name, filename)) {
            Entry::Occupied(entry) => *entry.get(),
            Entry::Vacant(entry) => {
                entry.insert(next_id);
                self.profile.function.push(Function {
                    id: next_id,
                    name,
                    // Symbols arrive demangled; the raw name is not kept.
                    system_name: name,
                    filename,
                    start_line: 0,
                });
                next_id
            }
        }
    }

    fn location(&mut self, key: LocationKey) -> u64 {
        let next_id = self.profile.location.len() as u64 + 1;
        match self.locations.entry(key) {
            Entry::Occupied(entry) => *entry.get(),
            Entry::Vacant(entry) => {
                let key = entry.key();
                self.profile.location.push(Location {
                    id: next_id,
                    mapping_id: key.mapping_id,
                    address: key.address,
                    line: vec![Line {
                        function_id: key.function_id,
                        line: key.line,
                    }],
                    is_folded: false,
                });
                entry.insert(next_id);
                next_id
            }
        }
    }

    /// A location with no address or mapping, for a frame leakbpf makes up.
    fn synthetic_location(&mut self, name: &str) -> u64 {
        let function_id = self.function(name, None);
        self.location(LocationKey {
            mapping_id: 0,
            address: 0,
            function_id,
            line: 0,
        })
    }

    fn frame_location(&mut self, pid: u32, frame: &Frame) -> u64 {
        let function_id = self.function(&frame_name(frame), frame.file.as_deref());
        let mapping_id = frame
            .module
            .as_deref()
            .map_or(0, |module| self.mapping(pid, module, frame));
        self.location(LocationKey {
            mapping_id,
            address: frame.address,
            function_id,
            line: frame.line.map_or(0, i64::from),
        })
    }

    /// The mapping of `module` in process `pid`. Frames do not carry the
    /// module's load range, so the range is the span of the addresses seen
    /// in it. The frames are already symbolized, hence `has_functions`:
    /// it keeps pprof from re-symbolizing with that made-up range.
    fn mapping(&mut self, pid: u32, module: &str, frame: &Frame) -> u64 {
        let index = if let Some(&index) = self.mappings.get(&(pid, module.to_string())) {
            index
        } else {
            let index = self.profile.mapping.len();
            let filename = self.string(module);
            self.profile.mapping.push(Mapping {
                id: index as u64 + 1,
                memory_start: frame.address,
                memory_limit: frame.address.saturating_add(1),
                filename,
                has_functions: true,
                ..Mapping::default()
            });
            self.mappings.insert((pid, module.to_string()), index);
            index
        };
        let mapping = &mut self.profile.mapping[index];
        mapping.memory_start = mapping.memory_start.min(frame.address);
        mapping.memory_limit = mapping.memory_limit.max(frame.address.saturating_add(1));
        mapping.has_filenames |= frame.file.is_some();
        mapping.has_line_numbers |= frame.line.is_some();
        mapping.id
    }
}

// profile.proto's messages, with its field numbers. Fields leakbpf never
// sets (Profile.doc_url, Line.column) are left out.

#[derive(Clone, PartialEq, Message)]
struct Profile {
    #[prost(message, repeated, tag = "1")]
    sample_type: Vec<ValueType>,
    #[prost(message, repeated, tag = "2")]
    sample: Vec<Sample>,
    #[prost(message, repeated, tag = "3")]
    mapping: Vec<Mapping>,
    #[prost(message, repeated, tag = "4")]
    location: Vec<Location>,
    #[prost(message, repeated, tag = "5")]
    function: Vec<Function>,
    #[prost(string, repeated, tag = "6")]
    string_table: Vec<String>,
    #[prost(int64, tag = "7")]
    drop_frames: i64,
    #[prost(int64, tag = "8")]
    keep_frames: i64,
    #[prost(int64, tag = "9")]
    time_nanos: i64,
    #[prost(int64, tag = "10")]
    duration_nanos: i64,
    #[prost(message, optional, tag = "11")]
    period_type: Option<ValueType>,
    #[prost(int64, tag = "12")]
    period: i64,
    #[prost(int64, repeated, tag = "13")]
    comment: Vec<i64>,
    #[prost(int64, tag = "14")]
    default_sample_type: i64,
}

#[derive(Clone, PartialEq, Message)]
struct ValueType {
    #[prost(int64, tag = "1")]
    r#type: i64,
    #[prost(int64, tag = "2")]
    unit: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Sample {
    /// Leaf first.
    #[prost(uint64, repeated, tag = "1")]
    location_id: Vec<u64>,
    #[prost(int64, repeated, tag = "2")]
    value: Vec<i64>,
    #[prost(message, repeated, tag = "3")]
    label: Vec<Label>,
}

#[derive(Clone, PartialEq, Message)]
struct Label {
    #[prost(int64, tag = "1")]
    key: i64,
    #[prost(int64, tag = "2")]
    str: i64,
    #[prost(int64, tag = "3")]
    num: i64,
    #[prost(int64, tag = "4")]
    num_unit: i64,
}

#[derive(Clone, PartialEq, Message)]
#[expect(
    clippy::struct_excessive_bools,
    reason = "profile.proto's Mapping, field for field"
)]
struct Mapping {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    memory_start: u64,
    #[prost(uint64, tag = "3")]
    memory_limit: u64,
    #[prost(uint64, tag = "4")]
    file_offset: u64,
    #[prost(int64, tag = "5")]
    filename: i64,
    #[prost(int64, tag = "6")]
    build_id: i64,
    #[prost(bool, tag = "7")]
    has_functions: bool,
    #[prost(bool, tag = "8")]
    has_filenames: bool,
    #[prost(bool, tag = "9")]
    has_line_numbers: bool,
    #[prost(bool, tag = "10")]
    has_inline_frames: bool,
}

#[derive(Clone, PartialEq, Message)]
struct Location {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(uint64, tag = "2")]
    mapping_id: u64,
    #[prost(uint64, tag = "3")]
    address: u64,
    #[prost(message, repeated, tag = "4")]
    line: Vec<Line>,
    #[prost(bool, tag = "5")]
    is_folded: bool,
}

#[derive(Clone, PartialEq, Message)]
struct Line {
    #[prost(uint64, tag = "1")]
    function_id: u64,
    #[prost(int64, tag = "2")]
    line: i64,
}

#[derive(Clone, PartialEq, Message)]
struct Function {
    #[prost(uint64, tag = "1")]
    id: u64,
    #[prost(int64, tag = "2")]
    name: i64,
    #[prost(int64, tag = "3")]
    system_name: i64,
    #[prost(int64, tag = "4")]
    filename: i64,
    #[prost(int64, tag = "5")]
    start_line: i64,
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        collections::{BTreeMap, HashSet},
        io::Read,
        process::Command,
    };

    use flate2::read::GzDecoder;

    use super::*;
    use crate::report::model::{Class, REPORT_VERSION};

    fn frame(address: u64, symbol: Option<&str>, module: Option<&str>) -> Frame {
        Frame {
            address,
            symbol: symbol.map(str::to_string),
            offset: symbol.map(|_| 0x10),
            module: module.map(str::to_string),
            file: None,
            line: None,
        }
    }

    fn group(direction: Direction, count: usize, classes: &[Class], stack: Vec<Frame>) -> Group {
        Group {
            direction,
            count,
            opener: None,
            holder_found: true,
            shared: 0,
            oldest_age_s: 90.5,
            newest_age_s: 1.0,
            states: BTreeMap::from([(crate::event::TcpState::Established, count)]),
            classes: classes.to_vec(),
            evidence: vec![],
            hints: vec![],
            remotes: vec![],
            opened_during_trace: count as u64,
            closed_during_trace: 0,
            stack,
            kernel_stack: vec![frame(0xffff_ffff_8100_0000, Some("__sys_connect"), None)],
            request_stack: Vec::new(),
            sockets: vec![],
        }
    }

    /// Two processes, three groups: `server` leaks connects from two call
    /// sites' worth of frames plus pre-existing sockets, `worker` leaks
    /// accepts. Both reach libc's `connect`, which must be one function.
    pub(crate) fn sample_report() -> Report {
        let dial = Frame {
            file: Some("/src/net.c".to_string()),
            line: Some(42),
            ..frame(0x5555_0000_1234, Some("dial"), Some("/usr/bin/server"))
        };
        let main = Frame {
            file: Some("/src/worker.c".to_string()),
            line: Some(7),
            ..frame(0x40_1020, Some("main"), Some("/usr/bin/worker"))
        };
        Report {
            version: REPORT_VERSION,
            hooks: "tracepoint".to_string(),
            duration_s: 10.0,
            events: 12,
            complete: true,
            processes: vec![
                ProcessReport {
                    pid: 100,
                    comm: "server".to_string(),
                    exe: Some("/usr/bin/server".to_string()),
                    open: 5,
                    groups: vec![
                        group(
                            Direction::Connect,
                            3,
                            &[Class::CloseWait, Class::Idle],
                            vec![
                                frame(0x7f00_0000_1000, Some("connect"), Some("/lib/libc.so.6")),
                                dial,
                                // Unresolved, as blazesym leaves it.
                                frame(0x5555_0000_0f00, None, None),
                            ],
                        ),
                        group(Direction::Preexisting, 2, &[], vec![]),
                    ],
                    ..ProcessReport::default()
                },
                ProcessReport {
                    pid: 200,
                    comm: "worker".to_string(),
                    exe: None,
                    open: 1,
                    groups: vec![group(
                        Direction::Accept,
                        1,
                        &[Class::Growing],
                        vec![
                            frame(0x7f11_0000_1000, Some("connect"), Some("/lib/libc.so.6")),
                            main,
                            // A module but no symbol.
                            Frame {
                                offset: Some(0xabc),
                                ..frame(0x4000_0abc, None, Some("/usr/lib/libfoo.so.1"))
                            },
                        ],
                    )],
                    ..ProcessReport::default()
                },
            ],
            ..Report::default()
        }
    }

    fn decode(bytes: &[u8]) -> Profile {
        let mut raw = Vec::new();
        GzDecoder::new(bytes).read_to_end(&mut raw).unwrap();
        Profile::decode(raw.as_slice()).unwrap()
    }

    /// The function names of a sample's locations, leaf first.
    fn stack_names(profile: &Profile, sample: &Sample) -> Vec<String> {
        sample
            .location_id
            .iter()
            .map(|&id| {
                let location = profile.location.iter().find(|l| l.id == id).unwrap();
                assert_eq!(location.line.len(), 1);
                let function = profile
                    .function
                    .iter()
                    .find(|f| f.id == location.line[0].function_id)
                    .unwrap();
                profile.string_table[function.name as usize].clone()
            })
            .collect()
    }

    fn labels(profile: &Profile, sample: &Sample) -> Vec<(String, String)> {
        let s = |i: i64| profile.string_table[i as usize].clone();
        sample
            .label
            .iter()
            .map(|l| {
                let value = if l.str != 0 {
                    s(l.str)
                } else if l.num_unit != 0 {
                    format!("{} {}", l.num, s(l.num_unit))
                } else {
                    l.num.to_string()
                };
                (s(l.key), value)
            })
            .collect()
    }

    #[test]
    #[expect(
        clippy::too_many_lines,
        reason = "one sample report checked field by field"
    )]
    fn round_trip() {
        let profile = decode(&encode(&sample_report()).unwrap());
        let s = |i: i64| profile.string_table[i as usize].as_str();

        assert_eq!(profile.string_table[0], "");
        let unique: HashSet<_> = profile.string_table.iter().collect();
        assert_eq!(unique.len(), profile.string_table.len(), "strings interned");
        assert_eq!(profile.sample_type.len(), 1);
        assert_eq!(s(profile.sample_type[0].r#type), "sockets");
        assert_eq!(s(profile.sample_type[0].unit), "count");
        let period_type = profile.period_type.as_ref().unwrap();
        assert_eq!(
            (s(period_type.r#type), s(period_type.unit)),
            ("sockets", "count")
        );
        assert_eq!(profile.period, 1);
        assert_eq!(s(profile.default_sample_type), "sockets");
        assert_eq!(profile.duration_nanos, 10_000_000_000);
        assert_eq!(s(profile.comment[1]), "hooks: tracepoint");

        let values: Vec<_> = profile.sample.iter().map(|x| x.value.clone()).collect();
        assert_eq!(values, [vec![3], vec![2], vec![1]]);
        let stacks: Vec<_> = profile
            .sample
            .iter()
            .map(|x| stack_names(&profile, x))
            .collect();
        assert_eq!(
            stacks,
            [
                vec!["connect", "dial", "0x555500000f00", "server (pid 100)"],
                vec!["[preexisting]", "server (pid 100)"],
                vec!["connect", "main", "libfoo.so.1+0xabc", "worker (pid 200)"],
            ]
        );

        let label = |k: &str, v: &str| (k.to_string(), v.to_string());
        assert_eq!(
            labels(&profile, &profile.sample[0]),
            [
                label("direction", "connect"),
                label("comm", "server"),
                label("pid", "100"),
                label("oldest_age", "90 seconds"),
                label("class", "close_wait"),
                label("class", "idle"),
            ]
        );
        assert_eq!(
            labels(&profile, &profile.sample[1])[..3],
            [
                label("direction", "preexisting"),
                label("comm", "server"),
                label("pid", "100"),
            ]
        );
        assert_eq!(
            labels(&profile, &profile.sample[2]),
            [
                label("direction", "accept"),
                label("comm", "worker"),
                label("pid", "200"),
                label("oldest_age", "90 seconds"),
                label("class", "growing"),
            ]
        );

        // Deduplicated: both processes' libc `connect` is one function but
        // two locations (different processes, different addresses), and
        // server's root frame is one location shared by its two samples.
        let names: Vec<_> = profile.function.iter().map(|f| s(f.name)).collect();
        assert_eq!(names.iter().filter(|&&n| n == "connect").count(), 1);
        assert_eq!(names.len(), names.iter().collect::<HashSet<_>>().len());
        assert_eq!(
            profile.sample[0].location_id[3],
            profile.sample[1].location_id[1]
        );
        assert_ne!(
            profile.sample[0].location_id[0],
            profile.sample[2].location_id[0]
        );
        assert_eq!(profile.location.len(), 9);

        // Ids are 1.., as pprof requires nonzero unique ids.
        for (i, location) in profile.location.iter().enumerate() {
            assert_eq!(location.id, i as u64 + 1);
        }
        for (i, function) in profile.function.iter().enumerate() {
            assert_eq!(function.id, i as u64 + 1);
        }
        let dial = profile
            .function
            .iter()
            .find(|f| s(f.name) == "dial")
            .unwrap();
        assert_eq!(s(dial.filename), "/src/net.c");
        let dial_location = profile
            .location
            .iter()
            .find(|l| l.line[0].function_id == dial.id)
            .unwrap();
        assert_eq!(dial_location.address, 0x5555_0000_1234);
        assert_eq!(dial_location.line[0].line, 42);

        // One mapping per (process, module), covering its addresses.
        let mappings: Vec<_> = profile
            .mapping
            .iter()
            .map(|m| (s(m.filename), m.has_functions, m.has_line_numbers))
            .collect();
        assert_eq!(
            mappings,
            [
                ("/usr/bin/server", true, true),
                ("/lib/libc.so.6", true, false),
                ("/lib/libc.so.6", true, false),
                ("/usr/bin/worker", true, true),
                ("/usr/lib/libfoo.so.1", true, false),
            ]
        );
        for location in &profile.location {
            if location.mapping_id == 0 {
                continue;
            }
            let mapping = &profile.mapping[location.mapping_id as usize - 1];
            assert!((mapping.memory_start..mapping.memory_limit).contains(&location.address));
        }
    }

    #[test]
    fn empty_report() {
        let profile = decode(&encode(&Report::default()).unwrap());
        assert!(profile.sample.is_empty());
        assert_eq!(profile.string_table[0], "");
    }

    /// pprof itself must accept the profile. Needs Go (Debian's golang-go);
    /// fails rather than skips without it, so a missing tool is noticed.
    #[test]
    #[ignore = "host: runs `go tool pprof` (golang-go); `./x test` runs it"]
    fn go_tool_pprof_reads_it() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sockets.pb.gz");
        std::fs::write(&file, encode(&sample_report()).unwrap()).unwrap();
        let output = Command::new("go")
            .args(["tool", "pprof", "-top", "-sample_index=sockets"])
            .arg(&file)
            .env("HOME", dir.path())
            .env("GOCACHE", dir.path().join("gocache"))
            .env("PPROF_TMPDIR", dir.path())
            .output()
            .expect("`go` must be installed for this test (Debian: apt install golang-go)");
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "go tool pprof failed: {}\n{stdout}\n{stderr}",
            output.status
        );
        assert!(!stderr.contains("failed"), "{stderr}");
        assert!(stdout.contains("File: server"), "{stdout}");
        assert!(stdout.contains("Type: sockets"), "{stdout}");
        assert!(stdout.contains("of 6 total"), "{stdout}");

        // "flat flat% sum% cum cum% name..." rows, by name.
        let rows: HashMap<String, (i64, i64)> = stdout
            .lines()
            .filter_map(|line| {
                let fields: Vec<_> = line.split_whitespace().collect();
                let flat = fields.first()?.parse().ok()?;
                let cum = fields.get(3)?.parse().ok()?;
                Some((fields.get(5..)?.join(" "), (flat, cum)))
            })
            .collect();
        let expected = [
            ("connect", (4, 4)),
            ("[preexisting]", (2, 2)),
            ("dial", (0, 3)),
            ("0x555500000f00", (0, 3)),
            ("main", (0, 1)),
            ("libfoo.so.1+0xabc", (0, 1)),
            ("server (pid 100)", (0, 5)),
            ("worker (pid 200)", (0, 1)),
        ];
        for (name, counts) in expected {
            assert_eq!(rows.get(name), Some(&counts), "{name}:\n{stdout}");
        }
        println!("{stdout}");
    }
}

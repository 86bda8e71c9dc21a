//! Harness for leakbpf's privileged end-to-end tests: it builds the fixture
//! programs (C, Go, Python under `fixtures/`), runs the real `leakbpf` binary
//! (named by `LEAKBPF_BIN`, set by `cargo xtask test`) and real processes on
//! loopback, and reads leakbpf's JSON lines. Anything that keeps a test from
//! running panics with the reason: no test passes by skipping.
use std::{
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, ChildStdout, Command, Stdio},
    sync::{Arc, Mutex, OnceLock, mpsc},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

pub mod agent;

/// How long to wait for anything a test expects to happen (a kernel under
/// software emulation needs longer: `LEAKBPF_TEST_TIMEOUT_S`).
pub static TIMEOUT: std::sync::LazyLock<Duration> = std::sync::LazyLock::new(|| {
    let seconds = std::env::var("LEAKBPF_TEST_TIMEOUT_S")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20);
    Duration::from_secs(seconds)
});

/// The hook set the tests force (`LEAKBPF_HOOKS`, set by the kernel
/// matrix), or `None` for leakbpf's own choice.
pub fn forced_hooks() -> Option<String> {
    std::env::var("LEAKBPF_HOOKS")
        .ok()
        .filter(|h| !h.is_empty())
}

/// The hook set a run must report: the forced one, else the one
/// `leakbpf check` says this kernel gets.
pub fn expected_hooks() -> String {
    forced_hooks().unwrap_or_else(|| {
        let stdout = check_output();
        stdout
            .lines()
            .find_map(|line| line.strip_prefix("hook set"))
            .and_then(|rest| rest.trim_start().split(':').next())
            .map_or_else(
                || panic!("leakbpf check named no hook set:\n{stdout}"),
                str::to_owned,
            )
    })
}

/// What `leakbpf check` prints (it must succeed).
pub fn check_output() -> String {
    let output = Command::new(leakbpf_bin())
        .arg("check")
        .output()
        .expect("running leakbpf check");
    assert!(
        output.status.success(),
        "leakbpf check failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// `--hooks SET` when the matrix forces one.
pub fn hooks_args() -> Vec<String> {
    forced_hooks()
        .map(|h| vec!["--hooks".to_owned(), h])
        .unwrap_or_default()
}

pub fn leakbpf_bin() -> PathBuf {
    let path = std::env::var_os("LEAKBPF_BIN").map_or_else(
        || panic!("LEAKBPF_BIN is not set: run the end-to-end tests through `./x test`"),
        PathBuf::from,
    );
    assert!(
        path.is_file(),
        "LEAKBPF_BIN={} does not exist",
        path.display()
    );
    path
}

pub fn fixture_source(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(name)
}

fn build_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/fixtures");
    std::fs::create_dir_all(&dir).expect("creating target/fixtures");
    dir
}

/// Inside the kernel matrix's VM the tree is read-only: fixtures were built
/// on the host (`LEAKBPF_PREBUILT_FIXTURES=1`) and must already exist.
fn prebuilt(out: &Path) -> bool {
    if std::env::var_os("LEAKBPF_PREBUILT_FIXTURES").is_none() {
        return false;
    }
    assert!(
        out.is_file(),
        "LEAKBPF_PREBUILT_FIXTURES is set but {} was not built on the host",
        out.display()
    );
    true
}

fn run_build(mut command: Command, what: &str) {
    let output = command
        .output()
        .unwrap_or_else(|err| panic!("cannot run the {what} build ({command:?}): {err}"));
    assert!(
        output.status.success(),
        "{what} build failed: {}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The C server, built with frame pointers so its stacks are whole.
pub fn c_server() -> PathBuf {
    c_fixture("server")
}

/// The C fixture `fixtures/NAME.c`, built with frame pointers (whole
/// stacks) into `target/fixtures/NAME`, once per test binary.
pub fn c_fixture(name: &str) -> PathBuf {
    c_fixture_with(name, &[])
}

/// A C fixture that needs extra flags or libraries (`-pthread`, `-luring`).
pub fn c_fixture_linked(name: &str, libs: &[&str]) -> PathBuf {
    c_fixture_with(name, libs)
}

/// The C server that accepts through io_uring (liburing, Debian's
/// `liburing-dev`).
pub fn uring_server() -> PathBuf {
    c_fixture_with("uring_server", &["-luring"])
}

fn c_fixture_with(name: &str, libs: &[&str]) -> PathBuf {
    static BUILT: OnceLock<Mutex<std::collections::HashMap<String, PathBuf>>> = OnceLock::new();
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    built
        .entry(name.to_owned())
        .or_insert_with(|| build_c(name, libs))
        .clone()
}

/// `gcc fixtures/NAME.c LIBS` with frame pointers into `target/fixtures/NAME`.
fn build_c(name: &str, libs: &[&str]) -> PathBuf {
    let out = build_dir().join(name);
    if prebuilt(&out) {
        return out;
    }
    let mut gcc = Command::new("gcc");
    gcc.args(["-O0", "-g", "-fno-omit-frame-pointer", "-o"])
        .arg(&out)
        .arg(fixture_source(&format!("{name}.c")))
        .args(libs);
    run_build(gcc, &format!("C fixture {name} (gcc)"));
    out
}

/// The Go dialer, built with Debian's Go (frame pointers, full symbols).
pub fn go_dialer() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let out = build_dir().join("dialer");
            if prebuilt(&out) {
                return out;
            }
            let mut go = Command::new("go");
            go.args(["build", "-o"])
                .arg(&out)
                .arg(fixture_source("dialer.go"))
                .env("GO111MODULE", "off")
                .env("GOCACHE", build_dir().join("go-cache"))
                .env("HOME", build_dir());
            run_build(go, "Go dialer (go build)");
            out
        })
        .clone()
}

pub fn python(script: &str) -> Command {
    let mut command = Command::new("python3");
    command.arg("-u").arg(fixture_source(script));
    command
}

/// A port nothing listens on (bound, then released).
pub fn unused_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding a probe port");
    listener.local_addr().expect("probe port address").port()
}

/// A running fixture program: it prints `port N` and/or `ready` on stdout
/// and holds its sockets until killed.
pub struct Fixture {
    child: Child,
    lines: mpsc::Receiver<String>,
    name: String,
    /// Processes it forked that outlive it (`child PID` lines).
    children: Vec<u32>,
}

impl Fixture {
    pub fn spawn(mut command: Command) -> Fixture {
        let name = format!("{command:?}");
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap_or_else(|err| panic!("cannot start fixture {name}: {err}"));
        let stdout: ChildStdout = child.stdout.take().expect("fixture stdout");
        let (tx, lines) = mpsc::channel();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Fixture {
            child,
            lines,
            name,
            children: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next line it prints (waits at most [`TIMEOUT`]).
    pub fn read_line(&mut self) -> String {
        self.line()
    }

    fn line(&mut self) -> String {
        self.lines
            .recv_timeout(*TIMEOUT)
            .unwrap_or_else(|_| panic!("fixture {} printed nothing for {TIMEOUT:?}", self.name))
    }

    /// Reads the `port N` line.
    pub fn port(&mut self) -> u16 {
        let line = self.line();
        line.strip_prefix("port ")
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("fixture {} said {line:?}, not `port N`", self.name))
    }

    /// Reads `child PID` lines up to `ready`: the processes the fixture
    /// handed its sockets to. They are killed when the fixture is dropped.
    pub fn ready_with_children(&mut self) -> Vec<u32> {
        let mut children = Vec::new();
        loop {
            let line = self.line();
            if line == "ready" {
                return children;
            }
            let pid = line
                .strip_prefix("child ")
                .and_then(|p| p.parse().ok())
                .unwrap_or_else(|| panic!("fixture {} said {line:?}, not `child PID`", self.name));
            children.push(pid);
            self.children.push(pid);
        }
    }

    /// Writes one line to the fixture's stdin.
    pub fn send_line(&mut self, line: &str) {
        use std::io::Write as _;
        let stdin = self.child.stdin.as_mut().expect("fixture stdin");
        writeln!(stdin, "{line}").expect("writing to the fixture");
        stdin.flush().expect("flushing the fixture's stdin");
    }

    /// Waits (at most [`TIMEOUT`]) for the fixture process itself to exit
    /// and reaps it.
    pub fn wait_exit(&mut self) {
        let start = Instant::now();
        while self
            .child
            .try_wait()
            .expect("waiting for a fixture")
            .is_none()
        {
            assert!(
                start.elapsed() < *TIMEOUT,
                "fixture {} did not exit within {TIMEOUT:?}",
                self.name
            );
            thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits for the `ready` line: its work is done, its sockets are held.
    pub fn ready(&mut self) {
        let line = self.line();
        assert_eq!(line, "ready", "fixture {} is not ready", self.name);
    }

    /// SIGKILL (and to the children it named): the kernel releases every
    /// socket they held, in their context.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        for pid in self.children.drain(..) {
            // SAFETY: plain kill(2); a pid that is gone is fine.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Collects leakbpf's stderr as it comes, and signals once it says it is
/// tracing (its programs are attached).
pub(crate) fn watch_stderr(
    stderr: std::process::ChildStderr,
) -> (
    Arc<Mutex<String>>,
    mpsc::Receiver<()>,
    thread::JoinHandle<()>,
) {
    let text = Arc::new(Mutex::new(String::new()));
    let (ready_tx, ready_rx) = mpsc::channel();
    let sink = Arc::clone(&text);
    let reader = thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("tracing TCP sockets") {
                let _ = ready_tx.send(());
            }
            let mut text = sink
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner);
            text.push_str(&line);
            text.push('\n');
        }
    });
    (text, ready_rx, reader)
}

/// A running `leakbpf events --format json`.
pub struct Leakbpf {
    child: Child,
    events: Arc<Mutex<Vec<Value>>>,
    stdout_reader: Option<thread::JoinHandle<()>>,
    stderr: Arc<Mutex<String>>,
}

/// What a stopped `leakbpf events` printed.
pub struct Stopped {
    pub events: Vec<Value>,
    pub summary: Value,
    pub stderr: String,
}

impl Leakbpf {
    /// Starts `leakbpf events --format json ARGS` and waits until its
    /// programs are attached.
    pub fn events(args: &[&str]) -> Leakbpf {
        let mut child = Command::new(leakbpf_bin())
            .args(["events", "--format", "json"])
            .args(hooks_args())
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting leakbpf");
        let events = Arc::new(Mutex::new(Vec::new()));
        let stdout = child.stdout.take().expect("leakbpf stdout");
        let sink = Arc::clone(&events);
        let stdout_reader = thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line).unwrap_or_else(|err| {
                    panic!("leakbpf printed a non-JSON line {line:?}: {err}")
                });
                sink.lock().unwrap().push(value);
            }
        });
        let (stderr_text, ready_rx, _) = watch_stderr(child.stderr.take().expect("leakbpf stderr"));
        let mut leakbpf = Leakbpf {
            child,
            events,
            stdout_reader: Some(stdout_reader),
            stderr: stderr_text,
        };
        if ready_rx.recv_timeout(*TIMEOUT).is_err() {
            let _ = leakbpf.child.kill();
            let _ = leakbpf.child.wait();
            thread::sleep(Duration::from_millis(100));
            panic!(
                "leakbpf did not start tracing within {TIMEOUT:?}; it said:\n{}",
                leakbpf.stderr.lock().unwrap()
            );
        }
        leakbpf
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits until `done` holds on the events so far; panics with `what`
    /// and the events seen if it does not within [`TIMEOUT`].
    pub fn wait_for(&self, what: &str, done: impl Fn(&[Value]) -> bool) {
        let start = Instant::now();
        loop {
            if done(&self.events.lock().unwrap()) {
                return;
            }
            if start.elapsed() > *TIMEOUT {
                let events = self.events.lock().unwrap();
                panic!(
                    "timed out waiting for {what}; {} events seen:\n{}",
                    events.len(),
                    events
                        .iter()
                        .map(Value::to_string)
                        .collect::<Vec<_>>()
                        .join("\n")
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn snapshot(&self) -> Vec<Value> {
        self.events.lock().unwrap().clone()
    }

    /// SIGSTOP/SIGCONT: freezes the consumer so the ring fills up.
    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our own child.
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
    }

    /// SIGINT, then collect everything it printed.
    pub fn stop(mut self) -> Stopped {
        self.signal(libc::SIGINT);
        let status = self.child.wait().expect("waiting for leakbpf");
        if let Some(reader) = self.stdout_reader.take() {
            reader.join().expect("stdout reader");
        }
        thread::sleep(Duration::from_millis(50));
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(status.success(), "leakbpf exited with {status}:\n{stderr}");
        let mut events = std::mem::take(&mut *self.events.lock().unwrap());
        let summary = events
            .pop()
            .filter(|last| last["event"] == "summary")
            .unwrap_or_else(|| panic!("leakbpf printed no summary line; stderr:\n{stderr}"));
        Stopped {
            events,
            summary,
            stderr,
        }
    }
}

impl Drop for Leakbpf {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Events of one kind (`open`, `close`, ...) from one pid.
pub fn of<'a>(events: &'a [Value], kind: &str, pid: u32) -> Vec<&'a Value> {
    events
        .iter()
        .filter(|e| e["event"] == kind && e["pid"] == pid)
        .collect()
}

/// Open events from `pid` in one direction (`connect`, `accept`).
pub fn opens<'a>(events: &'a [Value], pid: u32, direction: &str) -> Vec<&'a Value> {
    of(events, "open", pid)
        .into_iter()
        .filter(|e| e["direction"] == direction)
        .collect()
}

/// Symbol names of a frame list (`user_stack` / `kernel_stack`).
pub fn symbols(stack: &Value) -> Vec<String> {
    stack
        .as_array()
        .map(|frames| {
            frames
                .iter()
                .filter_map(|f| f["symbol"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

/// A Go fixture `fixtures/NAME.go`, built like [`go_dialer`] (Debian's Go,
/// GOPATH mode, frame pointers, full symbols) into `target/fixtures/NAME`.
pub fn go_binary(name: &str) -> PathBuf {
    go_build(name, false)
}

/// Like [`go_binary`], linked with `-s -w`: no symbol table, no DWARF;
/// only Go's own line table (.gopclntab) is left. Named `NAME-stripped`.
pub fn go_binary_stripped(name: &str) -> PathBuf {
    go_build(name, true)
}

/// `program ARGS` for a fixture that talks to loopback only: no proxy from
/// the environment may get in the way.
pub fn command(program: impl AsRef<std::ffi::OsStr>, args: &[&str]) -> Command {
    let mut command = Command::new(program);
    command.args(args);
    for var in [
        "HTTP_PROXY",
        "http_proxy",
        "HTTPS_PROXY",
        "https_proxy",
        "ALL_PROXY",
        "NO_PROXY",
    ] {
        command.env_remove(var);
    }
    command
}

/// A Go toolchain the fixtures are built with: Debian's default `go`
/// (1.19), or a versioned one from bookworm-backports (`1.23`:
/// /usr/lib/go-1.23/bin/go, installed by `./x setup`).
pub fn go_toolchain(version: &str) -> PathBuf {
    if version == "1.19" {
        return PathBuf::from("go");
    }
    let go = PathBuf::from(format!("/usr/lib/go-{version}/bin/go"));
    assert!(
        go.is_file(),
        "Go {version} is not installed at {} (./x setup installs golang-{version}-go from bookworm-backports)",
        go.display()
    );
    go
}

/// A Go fixture `fixtures/NAME.go` built with Go `version` (see
/// [`go_toolchain`]), stripped (`-s -w`) or not, into
/// `target/fixtures/NAME-goVERSION[-stripped]`.
pub fn go_binary_with(name: &str, version: &str, stripped: bool) -> PathBuf {
    let mut out_name = format!("{name}-go{version}");
    if stripped {
        out_name.push_str("-stripped");
    }
    build_go_fixture(name, &go_toolchain(version), &out_name, version, stripped)
}

fn go_build(name: &str, stripped: bool) -> PathBuf {
    let out_name = if stripped {
        format!("{name}-stripped")
    } else {
        name.to_owned()
    };
    build_go_fixture(name, Path::new("go"), &out_name, "default", stripped)
}

/// Builds `fixtures/NAME.go` with `go` (GOPATH mode, the toolchain's own
/// build cache `cache`) into `target/fixtures/OUT_NAME`, once per test run.
fn build_go_fixture(name: &str, go: &Path, out_name: &str, cache: &str, stripped: bool) -> PathBuf {
    static BUILT: OnceLock<Mutex<std::collections::HashSet<PathBuf>>> = OnceLock::new();
    let out = build_dir().join(out_name);
    let mut built = BUILT
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if built.contains(&out) || prebuilt(&out) {
        return out;
    }
    let mut command = Command::new(go);
    command.arg("build");
    if stripped {
        command.arg("-ldflags=-s -w");
    }
    command
        .arg("-o")
        .arg(&out)
        .arg(fixture_source(&format!("{name}.go")))
        .env("GO111MODULE", "off")
        .env("GOTOOLCHAIN", "local")
        .env("GOCACHE", build_dir().join(format!("go-cache-{cache}")))
        .env("HOME", build_dir());
    run_build(command, &format!("Go fixture {out_name} (go build)"));
    built.insert(out.clone());
    out
}

/// `go tool pprof ARGS` with the same Go environment as the fixture builds.
pub fn go_tool_pprof(args: &[&str]) -> std::process::Output {
    Command::new("go")
        .args(["tool", "pprof"])
        .args(args)
        .env("GO111MODULE", "off")
        .env("GOCACHE", build_dir().join("go-cache"))
        .env("HOME", build_dir())
        .env("PPROF_TMPDIR", build_dir())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|err| panic!("cannot run `go tool pprof` (is golang-go installed?): {err}"))
}

/// A running `leakbpf trace`: started with [`trace_json`] (or
/// [`TraceRun::start`] for other formats), stopped with SIGINT by
/// [`TraceRun::stop`] or left to end by its `--duration`
/// ([`TraceRun::wait`]).
pub struct TraceRun {
    child: Child,
    stdout_reader: Option<thread::JoinHandle<Vec<u8>>>,
    stderr: Arc<Mutex<String>>,
    stderr_reader: Option<thread::JoinHandle<()>>,
}

/// What a finished `leakbpf trace` printed.
pub struct TraceOutput {
    pub stdout: Vec<u8>,
    pub stderr: String,
}

impl TraceOutput {
    pub fn text(&self) -> String {
        String::from_utf8(self.stdout.clone())
            .unwrap_or_else(|err| panic!("leakbpf trace printed non-UTF-8 output: {err}"))
    }

    /// The one JSON document of `--format json`.
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.stdout).unwrap_or_else(|err| {
            panic!(
                "leakbpf trace did not print one JSON document ({err}); stdout:\n{}\nstderr:\n{}",
                String::from_utf8_lossy(&self.stdout),
                self.stderr
            )
        })
    }
}

/// Starts `leakbpf trace --format json ARGS` and waits until it traces.
pub fn trace_json(args: &[&str]) -> TraceRun {
    let mut all = vec!["--format", "json"];
    all.extend_from_slice(args);
    TraceRun::start(&all)
}

impl TraceRun {
    /// Starts `leakbpf trace ARGS` and waits for its "tracing TCP sockets"
    /// line: the programs are attached and the pre-existing scan is done.
    pub fn start(args: &[&str]) -> TraceRun {
        let mut command = Command::new(leakbpf_bin());
        command.arg("trace").args(hooks_args()).args(args);
        TraceRun::start_command(command)
    }

    /// Starts `command`, which must end up running `leakbpf trace` (a
    /// wrapper that sets up namespaces first, for example), and waits for
    /// its "tracing TCP sockets" line.
    pub fn start_command(mut command: Command) -> TraceRun {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting leakbpf trace");
        let mut stdout = child.stdout.take().expect("leakbpf stdout");
        let stdout_reader = thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = std::io::Read::read_to_end(&mut stdout, &mut bytes);
            bytes
        });
        let (stderr_text, ready_rx, stderr_reader) =
            watch_stderr(child.stderr.take().expect("leakbpf stderr"));
        let mut run = TraceRun {
            child,
            stdout_reader: Some(stdout_reader),
            stderr: stderr_text,
            stderr_reader: Some(stderr_reader),
        };
        if ready_rx.recv_timeout(*TIMEOUT).is_err() {
            let _ = run.child.kill();
            let _ = run.child.wait();
            if let Some(reader) = run.stderr_reader.take() {
                let _ = reader.join();
            }
            panic!(
                "leakbpf trace did not start tracing within {TIMEOUT:?}; it said:\n{}",
                run.stderr.lock().unwrap()
            );
        }
        run
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGINT, then everything it printed (it must exit 0).
    pub fn stop_raw(self) -> TraceOutput {
        self.stop_with(libc::SIGINT)
    }

    /// `signal`, then everything it printed (it must exit 0).
    pub fn stop_with(self, signal: i32) -> TraceOutput {
        // SAFETY: plain kill(2) on our own (unreaped) child.
        let rc = unsafe { libc::kill(self.pid() as i32, signal) };
        assert_eq!(rc, 0, "kill({}, {signal}) failed", self.pid());
        self.wait_raw()
    }

    /// Waits (at most [`TIMEOUT`]) for it to end by itself (`--duration`);
    /// it must exit 0.
    pub fn wait_raw(mut self) -> TraceOutput {
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("waiting for leakbpf trace") {
                break status;
            }
            if start.elapsed() > *TIMEOUT {
                let _ = self.child.kill();
                let _ = self.child.wait();
                if let Some(reader) = self.stderr_reader.take() {
                    let _ = reader.join();
                }
                panic!(
                    "leakbpf trace did not exit within {TIMEOUT:?}; it said:\n{}",
                    self.stderr.lock().unwrap()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        let stdout = self
            .stdout_reader
            .take()
            .expect("stdout reader")
            .join()
            .expect("stdout reader");
        if let Some(reader) = self.stderr_reader.take() {
            reader.join().expect("stderr reader");
        }
        let stderr = self.stderr.lock().unwrap().clone();
        assert!(
            status.success(),
            "leakbpf trace exited with {status}:\n{stderr}"
        );
        TraceOutput { stdout, stderr }
    }

    /// SIGINT, then the JSON report.
    pub fn stop(self) -> Value {
        self.stop_raw().json()
    }

    /// Waits for `--duration` to end, then the JSON report.
    pub fn wait(self) -> Value {
        self.wait_raw().json()
    }
}

impl Drop for TraceRun {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The report's entry for `pid`, if it has one.
pub fn process(report: &Value, pid: u32) -> Option<&Value> {
    report["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("report without processes: {report}"))
        .iter()
        .find(|p| p["pid"] == pid)
}

/// The groups of `pid` (none if the process is absent).
pub fn groups(report: &Value, pid: u32) -> Vec<&Value> {
    process(report, pid)
        .and_then(|p| p["groups"].as_array())
        .map(|groups| groups.iter().collect())
        .unwrap_or_default()
}

/// The groups of `pid` in one direction (`connect`, `accept`, `preexisting`).
pub fn groups_in<'a>(report: &'a Value, pid: u32, direction: &str) -> Vec<&'a Value> {
    groups(report, pid)
        .into_iter()
        .filter(|g| g["direction"] == direction)
        .collect()
}

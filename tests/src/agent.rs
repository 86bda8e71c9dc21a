//! A running `leakbpf agent`, spoken to over HTTP with curl (the tool the
//! acceptance names), its JSON log lines collected from stdout.
use std::{
    io::{BufRead as _, BufReader},
    process::{Child, Command, ExitStatus, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;

use crate::{Fixture, TIMEOUT, hooks_args, leakbpf_bin, python, unused_port, watch_stderr};

pub struct Agent {
    child: Child,
    pub port: u16,
    log: Arc<Mutex<Vec<Value>>>,
    stderr: Arc<Mutex<String>>,
}

impl Agent {
    /// Starts it on a free loopback port and waits until it is attached
    /// and has published its first evaluation (`/healthz` says ok).
    pub fn start(args: &[&str]) -> Agent {
        let port = unused_port();
        let mut command = Command::new(leakbpf_bin());
        command
            .arg("agent")
            .args(["--listen", &format!("127.0.0.1:{port}")])
            .args(hooks_args())
            .args(args);
        Agent::start_command(command, port)
    }

    /// Starts `command`, which must end up running `leakbpf agent` listening
    /// on 127.0.0.1:`port` (a wrapper that drops privileges first, for
    /// example), and waits like [`Agent::start`].
    pub fn start_command(mut command: Command, port: u16) -> Agent {
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("starting leakbpf agent ({command:?}): {err}"));
        let (stderr, ready, _) = watch_stderr(child.stderr.take().expect("agent stderr"));
        let log = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&log);
        let stdout = child.stdout.take().expect("agent stdout");
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let value: Value = serde_json::from_str(&line)
                    .unwrap_or_else(|err| panic!("agent log line is not JSON ({err}): {line}"));
                sink.lock().unwrap().push(value);
            }
        });
        let mut agent = Agent {
            child,
            port,
            log,
            stderr,
        };
        if ready.recv_timeout(*TIMEOUT).is_err() {
            let _ = agent.child.kill();
            panic!("leakbpf agent did not start:\n{}", agent.stderr());
        }
        agent.wait_for("its first evaluation", || {
            agent
                .try_get("/healthz")
                .is_some_and(|body| body == b"ok\n")
        });
        agent
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// The body of a GET that succeeded (2xx), or `None`.
    pub fn try_get(&self, path: &str) -> Option<Vec<u8>> {
        let output = Command::new("curl")
            .args(["-sf", "--max-time", "5", &self.url(path)])
            .output()
            .expect("running curl (Debian's curl package)");
        output.status.success().then_some(output.stdout)
    }

    pub fn get(&self, path: &str) -> Vec<u8> {
        self.try_get(path)
            .unwrap_or_else(|| panic!("GET {path} failed; agent stderr:\n{}", self.stderr()))
    }

    pub fn metrics(&self) -> String {
        String::from_utf8(self.get("/metrics")).expect("/metrics is UTF-8")
    }

    pub fn leaks(&self, query: &str) -> Value {
        let body = self.get(&format!("/leaks{query}"));
        serde_json::from_slice(&body).expect("/leaks is JSON")
    }

    /// Polls `/leaks{query}` until `done` holds; returns it and how long that took.
    pub fn wait_leaks(
        &self,
        query: &str,
        within: Duration,
        what: &str,
        done: impl Fn(&Value) -> bool,
    ) -> (Value, Duration) {
        let start = Instant::now();
        loop {
            let report = self.leaks(query);
            if done(&report) {
                return (report, start.elapsed());
            }
            assert!(
                start.elapsed() < within,
                "{what}: not within {within:?}; last /leaks{query}:\n{report:#}\nagent stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    pub fn wait_for(&self, what: &str, done: impl Fn() -> bool) {
        let start = Instant::now();
        while !done() {
            assert!(
                start.elapsed() < *TIMEOUT,
                "leakbpf agent: {what} did not happen within {TIMEOUT:?}; stderr:\n{}",
                self.stderr()
            );
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// The JSON lines it logged so far.
    pub fn log(&self) -> Vec<Value> {
        self.log.lock().unwrap().clone()
    }

    pub fn signal(&self, signal: i32) {
        // SAFETY: plain kill(2) on our child.
        unsafe { libc::kill(self.child.id() as i32, signal) };
    }

    /// SIGTERM, then waits; returns how it exited and how long it took.
    pub fn terminate(mut self) -> (ExitStatus, Duration) {
        let start = Instant::now();
        self.signal(libc::SIGTERM);
        loop {
            if let Some(status) = self.child.try_wait().expect("waiting for the agent") {
                return (status, start.elapsed());
            }
            assert!(
                start.elapsed() < *TIMEOUT,
                "the agent did not exit after SIGTERM"
            );
            thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of the one sample of `metrics` named `name` whose labels
/// include every `key="value"` of `labels`.
pub fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics.lines().find_map(|line| {
        let rest = line.strip_prefix(name)?;
        let (label_text, value) = match rest.strip_prefix('{') {
            Some(rest) => {
                let (labels, value) = rest.split_once("} ")?;
                (labels, value)
            }
            None => ("", rest.strip_prefix(' ')?),
        };
        labels
            .iter()
            .all(|(k, v)| label_text.split(',').any(|l| l == format!("{k}=\"{v}\"")))
            .then(|| value.trim().parse().ok())?
    })
}

/// `agent_leaker.py serve HOST`: accepts and closes at once (the client's
/// sockets go to CLOSE_WAIT); its port.
pub fn leak_server(host: &str) -> (Fixture, u16) {
    let mut server = Fixture::spawn({
        let mut c = python("agent_leaker.py");
        c.args(["serve", host]);
        c
    });
    let port = server.port();
    server.ready();
    (server, port)
}

/// `agent_leaker.py client HOST PORT [--nofile N]`, ready for commands.
pub fn leak_client(host: &str, port: u16, nofile: Option<u32>) -> Fixture {
    let mut client = Fixture::spawn({
        let mut c = python("agent_leaker.py");
        c.args(["client", host, &port.to_string()]);
        if let Some(n) = nofile {
            c.args(["--nofile", &n.to_string()]);
        }
        c
    });
    client.ready();
    client
}

/// Has `client` open and keep `n` more sockets; returns how many it keeps.
pub fn open_more(client: &mut Fixture, n: usize) -> usize {
    client.send_line(&format!("open {n}"));
    let line = client.read_line();
    line.strip_prefix("open ")
        .and_then(|total| total.parse().ok())
        .unwrap_or_else(|| panic!("the client said {line:?}, not `open TOTAL`"))
}

//! Shared by the process-level benches: running the fake gateway in a child process, and reading
//! this process's memory and CPU from /proc.

#![allow(dead_code)]

pub mod flood;
pub mod scale;

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The fake gateway in a child process (this same binary, run with `--serve`).
pub struct FakeProcess {
    child: Child,
    pub port: u16,
}

impl FakeProcess {
    /// Starts `--serve <port> <args…>` and waits until the port accepts connections.
    pub fn start(args: &[String]) -> FakeProcess {
        let port = free_port();
        let child = Command::new(std::env::current_exe().expect("own path"))
            .arg("--serve")
            .arg(port.to_string())
            .args(args)
            .stdin(Stdio::null())
            .spawn()
            .expect("fake gateway process starts");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "fake gateway did not listen");
            std::thread::sleep(Duration::from_millis(20));
        }
        FakeProcess { child, port }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn gateway_url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    pub fn api_base(&self) -> String {
        format!("http://127.0.0.1:{}/api/v10", self.port)
    }
}

impl Drop for FakeProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Resident memory of this process, in bytes.
pub fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

/// CPU time (user + system) this process has used.
pub fn cpu_time() -> Duration {
    cpu_time_of("self")
}

/// CPU time (user + system) the process `pid` (a number, or `self`) has used so far.
pub fn cpu_time_of(pid: &str) -> Duration {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map_or("", |(_, rest)| rest)
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // utime and stime are fields 14 and 15 of the whole line: 11 and 12 after the ')'.
    let total = ticks(11) + ticks(12);
    Duration::from_millis(total * 1000 / clock_ticks())
}

fn clock_ticks() -> u64 {
    // sysconf(_SC_CLK_TCK) is 100 on every Linux this runs on; getconf says so without libc.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(100)
}

/// Median and the spread (min, max) of samples.
pub fn median(samples: &mut [f64]) -> (f64, f64, f64) {
    samples.sort_by(|a, b| a.total_cmp(b));
    let n = samples.len();
    let median = if n % 2 == 1 {
        samples[n / 2]
    } else {
        (samples[n / 2 - 1] + samples[n / 2]) / 2.0
    };
    (median, samples[0], samples[n - 1])
}

/// A comma-separated list from the environment, or `default`.
pub fn env_list(name: &str, default: &str) -> Vec<String> {
    std::env::var(name)
        .unwrap_or_else(|_| default.to_owned())
        .split(',')
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

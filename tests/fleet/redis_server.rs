//! A real `redis-server` for the fleet tests: started on a free loopback port in a temporary
//! directory, stopped (and its directory removed) when dropped. Nothing is mocked.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub struct RedisServer {
    child: Option<Child>,
    pub port: u16,
    dir: PathBuf,
    /// Arguments after the common ones (a TLS port, `--replicaof`, sentinel mode).
    extra: Vec<String>,
    /// The TLS port, when started with one.
    pub tls_port: Option<u16>,
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

static NEXT: AtomicU32 = AtomicU32::new(0);

impl RedisServer {
    /// Starts a server. Panics (never skips) when `redis-server` is not installed: the README's
    /// test command (`bash .ci/run`) installs it.
    pub fn start() -> Self {
        Self::start_with(Vec::new(), None)
    }

    /// A server that also serves TLS on a port of its own, with `cert`/`key` (PEM files in its
    /// directory, written from the given texts). The plain port stays, for the test to look.
    pub fn start_tls(cert_pem: &str, key_pem: &str) -> Self {
        let tls_port = free_port();
        let dir = Self::new_dir();
        std::fs::write(dir.join("cert.pem"), cert_pem).unwrap();
        std::fs::write(dir.join("key.pem"), key_pem).unwrap();
        let extra = vec![
            "--tls-port".into(),
            tls_port.to_string(),
            "--tls-cert-file".into(),
            dir.join("cert.pem").display().to_string(),
            "--tls-key-file".into(),
            dir.join("key.pem").display().to_string(),
            "--tls-auth-clients".into(),
            "no".into(),
        ];
        Self::start_in(dir, extra, Some(tls_port))
    }

    /// A replica of `primary`.
    pub fn start_replica_of(primary: &RedisServer) -> Self {
        Self::start_with(
            vec![
                "--replicaof".into(),
                "127.0.0.1".into(),
                primary.port.to_string(),
            ],
            None,
        )
    }

    /// A sentinel (`redis-server <conf> --sentinel`) monitoring `primary` as `name`, with a quorum
    /// of one, that finds it down after `down_after_ms`.
    pub fn start_sentinel(primary: &RedisServer, name: &str, down_after_ms: u64) -> Self {
        let dir = Self::new_dir();
        // Sentinel rewrites its config file, so each gets its own.
        let conf = dir.join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "sentinel monitor {name} 127.0.0.1 {port} 1\n\
                 sentinel down-after-milliseconds {name} {down_after_ms}\n\
                 sentinel failover-timeout {name} 2000\n\
                 sentinel parallel-syncs {name} 1\n",
                port = primary.port
            ),
        )
        .unwrap();
        Self::start_in(
            dir,
            vec![conf.display().to_string(), "--sentinel".into()],
            None,
        )
    }

    fn new_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "shardline-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn start_with(extra: Vec<String>, tls_port: Option<u16>) -> Self {
        Self::start_in(Self::new_dir(), extra, tls_port)
    }

    fn start_in(dir: PathBuf, extra: Vec<String>, tls_port: Option<u16>) -> Self {
        let port = free_port();
        let mut server = Self {
            child: None,
            port,
            dir,
            extra,
            tls_port,
        };
        server.spawn();
        server
    }

    fn spawn(&mut self) {
        // A sentinel's config file comes first, before every other argument.
        let sentinel = self.extra.iter().any(|a| a == "--sentinel");
        let mut command = Command::new("redis-server");
        if sentinel {
            command.args(&self.extra);
        }
        command
            .args([
                "--port",
                &self.port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "no",
                "--dir",
            ])
            .arg(&self.dir);
        if !sentinel {
            command.args(&self.extra);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): it is needed by the fleet tests; \
                     `bash .ci/run` installs it (Debian package redis-server)"
                )
            });
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.answers_ping() {
            assert!(
                Instant::now() < deadline,
                "redis-server did not start on port {}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    /// The TLS port's URL, by the name its certificate carries.
    pub fn tls_url(&self) -> String {
        format!(
            "rediss://localhost:{}/",
            self.tls_port.expect("started with TLS")
        )
    }

    fn answers_ping(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_millis(500)));
        let mut buf = [0u8; 7];
        stream.write_all(b"PING\r\n").is_ok()
            && stream.read_exact(&mut buf).is_ok()
            && &buf == b"+PONG\r\n"
    }

    /// Kills the server (SIGKILL): Redis is gone, as in a crash.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-CONT", &child.id().to_string()])
                .status();
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Stops (SIGSTOP) or continues (SIGCONT) the server: unreachable while stopped, with its
    /// data and its clock (key expiry) intact.
    pub fn pause(&self, paused: bool) {
        let pid = self.child.as_ref().expect("running").id().to_string();
        let signal = if paused { "-STOP" } else { "-CONT" };
        let status = Command::new("kill").args([signal, &pid]).status().unwrap();
        assert!(status.success());
    }

    /// Starts it again on the same port (empty: nothing was saved).
    pub fn restart(&mut self) {
        self.kill();
        self.spawn();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

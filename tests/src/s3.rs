//! A real S3 server for the storage tests: moto's server mode (S3 over HTTP on 127.0.0.1, installed by
//! scripts/deps.sh), one per test that needs it, stopped on drop. Reads and bucket creation go through boto3,
//! a client independent of the `object_store` crate the agent writes with.
//!
//! The agent reaches the server through a TCP relay on [`S3Server::port`], which [`S3Server::stop`] takes down
//! (new connections refused, open ones reset: an outage as a client sees it) and [`S3Server::restart`] brings
//! back, while the server keeps its objects, as a real store does across an outage. The test's own reads go to
//! the server directly.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

pub struct S3Server {
    /// Where clients under test connect: the relay.
    pub port: u16,
    /// Where the server itself listens.
    backend: u16,
    child: Child,
    relay: Option<Relay>,
    hold: Hold,
}

/// Forwards connections from one port to another until stopped.
struct Relay {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

/// The server's answers can be held back (the request reached the server, which acted on it; the client waits).
#[derive(Clone, Default)]
struct Hold {
    on: Arc<AtomicBool>,
    /// Answers waiting to be passed on.
    waiting: Arc<AtomicU64>,
}

/// Copies `from` to `to`; the server's answers (`hold` given) wait while the hold is on.
fn pipe(mut from: TcpStream, mut to: TcpStream, hold: Option<Hold>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if let Some(h) = &hold
            && h.on.load(Ordering::Relaxed)
        {
            h.waiting.fetch_add(1, Ordering::Relaxed);
            while h.on.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
            h.waiting.fetch_sub(1, Ordering::Relaxed);
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = to.shutdown(Shutdown::Write);
}

impl Relay {
    fn start(port: u16, backend: u16, hold: Hold) -> Relay {
        let listener = TcpListener::bind(("127.0.0.1", port)).expect("the relay's port is free");
        listener.set_nonblocking(true).expect("non-blocking accept");
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut open: Vec<TcpStream> = Vec::new();
            while !stopping.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((client, _)) => {
                        let _ = client.set_nonblocking(false);
                        let Ok(server) = TcpStream::connect(("127.0.0.1", backend)) else {
                            continue;
                        };
                        for (from, to, hold) in [
                            (&client, &server, None),
                            (&server, &client, Some(hold.clone())),
                        ] {
                            let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) else {
                                continue;
                            };
                            std::thread::spawn(move || pipe(from, to, hold));
                        }
                        open.extend([client, server]);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            for c in open {
                let _ = c.shutdown(Shutdown::Both);
            }
        });
        Relay { stop, thread }
    }

    fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        let _ = self.thread.join();
    }
}

const CLIENT: &str = "import boto3,sys\ns3=boto3.client('s3',endpoint_url=sys.argv[1],aws_access_key_id='sonde',aws_secret_access_key='sonde-secret',region_name='us-east-1')\n";

impl S3Server {
    pub fn start() -> S3Server {
        let (port, backend) = (crate::free_port(), crate::free_port());
        let child = Self::spawn(backend);
        let hold = Hold::default();
        let server = S3Server {
            port,
            backend,
            child,
            relay: Some(Relay::start(port, backend, hold.clone())),
            hold,
        };
        server.wait_listening();
        server
    }

    /// An outage: connections to [`S3Server::port`] are refused and open ones reset. The objects stay.
    pub fn stop(&mut self) {
        if let Some(r) = self.relay.take() {
            r.stop();
        }
    }

    /// The end of the outage: the store answers on the same port again, with what it had.
    pub fn restart(&mut self) {
        self.stop();
        self.relay = Some(Relay::start(self.port, self.backend, self.hold.clone()));
    }

    /// From now on the server acts on requests but its answers wait (a put lands; its client does not know).
    pub fn hold_answers(&self) {
        self.hold.on.store(true, Ordering::Relaxed);
    }

    /// Answers held back now: a client is mid-request, its request already carried out.
    pub fn answers_held(&self) -> u64 {
        self.hold.waiting.load(Ordering::Relaxed)
    }

    pub fn release_answers(&self) {
        self.hold.on.store(false, Ordering::Relaxed);
    }

    fn spawn(port: u16) -> Child {
        Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("python3 -m moto.server (scripts/deps.sh installs moto[server])")
    }

    fn wait_listening(&self) {
        for _ in 0..100 {
            if TcpStream::connect(("127.0.0.1", self.backend)).is_ok() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!(
            "the S3 server did not listen on {} within 10 s",
            self.backend
        );
    }

    /// Where clients under test reach the store (through the relay).
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Where the test reads: the server itself, up during outages.
    fn direct(&self) -> String {
        format!("http://127.0.0.1:{}", self.backend)
    }

    /// What a client of this server needs, as the usual AWS_* environment.
    pub fn env(&self) -> Vec<(String, String)> {
        [
            ("AWS_ENDPOINT", self.endpoint()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", "sonde".into()),
            ("AWS_SECRET_ACCESS_KEY", "sonde-secret".into()),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    /// Runs `code` with a boto3 client `s3` of the server itself. Tried three times: these are reads and an
    /// idempotent bucket creation, and moto's development server now and then drops a connection under load.
    fn python(&self, code: &str, args: &[&str]) -> Vec<u8> {
        let mut last = String::new();
        for _ in 0..3 {
            let out = Command::new("python3")
                .args(["-c", &format!("{CLIENT}{code}"), &self.direct()])
                .args(args)
                .output()
                .expect("python3 with boto3");
            if out.status.success() {
                return out.stdout;
            }
            last = String::from_utf8_lossy(&out.stderr).into_owned();
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("boto3, three times: {last}");
    }

    pub fn create_bucket(&self, bucket: &str) {
        self.python("s3.create_bucket(Bucket=sys.argv[2])", &[bucket]);
    }

    pub fn keys(&self, bucket: &str) -> Vec<String> {
        let out = self.python(
            "for o in s3.list_objects_v2(Bucket=sys.argv[2]).get('Contents', []): print(o['Key'])",
            &[bucket],
        );
        String::from_utf8_lossy(&out)
            .lines()
            .map(String::from)
            .collect()
    }

    pub fn get(&self, bucket: &str, key: &str) -> Vec<u8> {
        self.python(
            "sys.stdout.buffer.write(s3.get_object(Bucket=sys.argv[2], Key=sys.argv[3])['Body'].read())",
            &[bucket, key],
        )
    }
}

/// A reader of a running job's chunks, as a user's tool would be: it polls the store's listing under a prefix
/// every 250 ms and reads each new chunk as it appears (boto3, independent of the agent's client).
pub struct LiveReader {
    child: Child,
    out: tempfile::NamedTempFile,
}

/// A chunk as the live reader first saw it.
#[derive(Clone, Debug, serde::Deserialize)]
pub struct SeenChunk {
    pub key: String,
    /// CLOCK_MONOTONIC when it was first listed: the clock of the kernel's event timestamps (`ts_ns`).
    pub seen_ns: u64,
    pub lines: u64,
    pub first_ts_ns: Option<u64>,
    pub last_ts_ns: Option<u64>,
}

impl SeenChunk {
    /// From the capture of its newest event to the reader seeing it.
    pub fn latency(&self) -> Option<Duration> {
        self.last_ts_ns
            .map(|ts| Duration::from_nanos(self.seen_ns.saturating_sub(ts)))
    }

    /// From the capture of its oldest event to the reader seeing it (the chunk's age limit included).
    pub fn oldest_latency(&self) -> Option<Duration> {
        self.first_ts_ns
            .map(|ts| Duration::from_nanos(self.seen_ns.saturating_sub(ts)))
    }
}

const READER: &str = r#"
import gzip, json, re, time
out = open(sys.argv[4], 'a')
seen = set()
while True:
    try:
        for o in s3.list_objects_v2(Bucket=sys.argv[2], Prefix=sys.argv[3]).get('Contents', []):
            k = o['Key']
            if k in seen or not re.search(r'/events/\d+\.ndjson\.gz$', k):
                continue
            now = time.monotonic_ns()
            lines = gzip.decompress(s3.get_object(Bucket=sys.argv[2], Key=k)['Body'].read()).splitlines()
            ts = [json.loads(l).get('ts_ns') for l in (lines[:1] + lines[-1:])]
            out.write(json.dumps({'key': k, 'seen_ns': now, 'lines': len(lines),
                                  'first_ts_ns': ts[0] if ts else None, 'last_ts_ns': ts[-1] if ts else None}) + chr(10))
            out.flush()
            seen.add(k)
    except Exception as e:
        print(e, file=sys.stderr)
    time.sleep(0.25)
"#;

impl LiveReader {
    /// What it saw, in the order it saw it; stops it.
    pub fn finish(mut self) -> Vec<SeenChunk> {
        let _ = self.child.kill();
        let _ = self.child.wait();
        std::fs::read_to_string(self.out.path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect()
    }
}

impl S3Server {
    /// Starts a [`LiveReader`] of the chunks under `prefix` in `bucket`.
    pub fn live_reader(&self, bucket: &str, prefix: &str) -> LiveReader {
        let out = tempfile::NamedTempFile::new().expect("a temporary file");
        let child = Command::new("python3")
            .args([
                "-c",
                &format!("{CLIENT}{READER}"),
                &self.direct(),
                bucket,
                prefix,
            ])
            .arg(out.path())
            .stdout(Stdio::null())
            .spawn()
            .expect("python3 with boto3");
        LiveReader { child, out }
    }
}

impl Drop for LiveReader {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.stop();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

//! HTTPS on the results server's listener (`--tls-cert`, `--tls-key`): readers' bearer tokens and agents'
//! projected tokens never cross the network in clear. The files are cert-manager's (a Secret's `tls.crt` and
//! `tls.key`, mounted): the certificate is re-read when they change (looked at, at most every [`RELOAD_EVERY`],
//! when a client connects), so a rotated certificate is served without a restart; a bad file at a reload keeps
//! the one served so far, and says so. Handshakes run beside the accept loop, each bounded in time, so a client
//! that never finishes its handshake holds up nobody else.

use std::collections::HashMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant, SystemTime};

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::{ClientHello, ResolvesServerCert};
use tokio_rustls::rustls::sign::CertifiedKey;
use tokio_rustls::rustls::{self, ServerConfig};
use tokio_rustls::server::TlsStream;

/// How often, at most, the files are looked at again (when a client connects).
pub const RELOAD_EVERY: Duration = Duration::from_secs(30);
/// A client has this long to finish its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Handshakes under way at once; past it, new connections are closed at once (clients retry).
const MAX_HANDSHAKES: usize = 256;
/// Handshakes under way from one client address at once; more from it are closed at once. A browser opens a
/// handful of connections, an agent one: a client that opens hundreds and never speaks is holding slots.
const HANDSHAKES_PER_CLIENT: usize = 8;

/// The certificate chain (PEM, the server's own first: cert-manager's `tls.crt`) and its private key (PEM:
/// `tls.key`).
#[derive(Clone, Debug)]
pub struct CertFiles {
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl CertFiles {
    /// From `--tls-cert` and `--tls-key`: both (HTTPS) or neither (plain HTTP).
    pub fn from_args(
        cert: Option<PathBuf>,
        key: Option<PathBuf>,
    ) -> Result<Option<CertFiles>, String> {
        match (cert, key) {
            (Some(cert), Some(key)) => Ok(Some(CertFiles { cert, key })),
            (None, None) => Ok(None),
            (Some(cert), None) => Err(format!(
                "--tls-cert ({}) is given without --tls-key (SONDE_TLS_KEY): HTTPS needs the certificate's \
                 private key too",
                cert.display()
            )),
            (None, Some(key)) => Err(format!(
                "--tls-key ({}) is given without --tls-cert (SONDE_TLS_CERT): HTTPS needs the certificate too",
                key.display()
            )),
        }
    }
}

/// What identifies a version of a file: a Secret's update swaps a symlink to new files (another inode), an
/// edit in place changes the time or the size.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    dev: u64,
    ino: u64,
}

fn stamp(path: &Path) -> io::Result<Stamp> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path)?;
    Ok(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        dev: m.dev(),
        ino: m.ino(),
    })
}

/// The crypto every TLS piece of the server uses (explicitly: more than one may be compiled in).
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::aws_lc_rs::default_provider())
}

/// Reads and checks the certificate and key; the error names the file at fault.
fn load(files: &CertFiles, provider: &CryptoProvider) -> Result<CertifiedKey, String> {
    let read =
        |path: &Path| std::fs::read(path).map_err(|e| format!("reading {}: {e}", path.display()));
    let pem = read(&files.cert)?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("{}: not a PEM certificate chain: {e}", files.cert.display()))?;
    if chain.is_empty() {
        return Err(format!(
            "{}: no certificate in it (a PEM `CERTIFICATE` block)",
            files.cert.display()
        ));
    }
    let key = PrivateKeyDer::from_pem_slice(&read(&files.key)?)
        .map_err(|e| format!("{}: no PEM private key in it: {e}", files.key.display()))?;
    let key = provider
        .key_provider
        .load_private_key(key)
        .map_err(|e| format!("{}: {e}", files.key.display()))?;
    let certified = CertifiedKey::new(chain, key);
    match certified.keys_match() {
        Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {
            Ok(certified)
        }
        Err(rustls::Error::InconsistentKeys(_)) => Err(format!(
            "the private key in {} is not the key of the certificate in {}",
            files.key.display(),
            files.cert.display()
        )),
        Err(e) => Err(format!("{}: {e}", files.cert.display())),
    }
}

/// The served certificate, read again from its files when they changed (rustls asks for it on each handshake).
pub struct ReloadingCert {
    files: CertFiles,
    provider: Arc<CryptoProvider>,
    every: Duration,
    state: Mutex<State>,
}

struct State {
    current: Arc<CertifiedKey>,
    /// The files' stamps when last read, good or bad (a bad version is warned about once).
    stamps: Option<(Stamp, Stamp)>,
    checked: Instant,
}

impl fmt::Debug for ReloadingCert {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReloadingCert")
            .field("files", &self.files)
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl ReloadingCert {
    /// Reads the files now: a missing or bad one is an error naming it (the server does not start).
    pub fn load(files: CertFiles, every: Duration) -> Result<ReloadingCert, String> {
        let provider = provider();
        let stamps = stamp(&files.cert).ok().zip(stamp(&files.key).ok());
        let current = Arc::new(load(&files, &provider)?);
        Ok(ReloadingCert {
            files,
            provider,
            every,
            state: Mutex::new(State {
                current,
                stamps,
                checked: Instant::now(),
            }),
        })
    }

    /// The certificate to serve, after looking at the files if the last look is `every` old.
    pub fn current(&self) -> Arc<CertifiedKey> {
        let mut state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
        if state.checked.elapsed() >= self.every {
            state.checked = Instant::now();
            self.reload_if_changed(&mut state);
        }
        state.current.clone()
    }

    fn reload_if_changed(&self, state: &mut State) {
        let (cert, key) = match (stamp(&self.files.cert), stamp(&self.files.key)) {
            (Ok(cert), Ok(key)) => (cert, key),
            (Err(e), _) | (_, Err(e)) => {
                tracing::warn!(
                    cert = %self.files.cert.display(),
                    key = %self.files.key.display(),
                    error = %e,
                    "the TLS certificate's files cannot be read: serving the certificate read before"
                );
                return;
            }
        };
        if state.stamps == Some((cert, key)) {
            return;
        }
        // Stamped before reading: files replaced while being read are read again at the next look.
        state.stamps = Some((cert, key));
        match load(&self.files, &self.provider) {
            Ok(new) => {
                state.current = Arc::new(new);
                tracing::info!(cert = %self.files.cert.display(), "serving the TLS certificate read again");
            }
            Err(e) => tracing::warn!(
                error = %e,
                "the TLS certificate's files changed but cannot be used: serving the certificate read before"
            ),
        }
    }
}

impl ResolvesServerCert for ReloadingCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

/// The server's TLS configuration: HTTP/1.1 (what the server speaks), no client certificates (clients
/// authenticate with their bearer token).
pub fn server_config(cert: Arc<ReloadingCert>) -> Result<Arc<ServerConfig>, String> {
    let mut config = ServerConfig::builder_with_provider(cert.provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_cert_resolver(cert);
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// Connections with their handshake done, for `axum::serve`. Handshakes run in their own tasks (at most
/// [`MAX_HANDSHAKES`] at once and [`HANDSHAKES_PER_CLIENT`] from one address, each [`HANDSHAKE_TIMEOUT`] at
/// most), so one slow client delays no other.
/// Dropping it (when the server shuts down) stops accepting.
pub struct TlsListener {
    done: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local: SocketAddr,
    accepting: tokio::task::JoinHandle<()>,
}

impl TlsListener {
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> io::Result<TlsListener> {
        let local = tcp.local_addr()?;
        let (tx, done) = mpsc::channel(64);
        let accepting = tokio::spawn(accept(tcp, tokio_rustls::TlsAcceptor::from(config), tx));
        Ok(TlsListener {
            done,
            local,
            accepting,
        })
    }
}

impl Drop for TlsListener {
    fn drop(&mut self) {
        self.accepting.abort();
    }
}

async fn accept(
    tcp: TcpListener,
    acceptor: tokio_rustls::TlsAcceptor,
    done: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
) {
    let handshakes = Arc::new(Semaphore::new(MAX_HANDSHAKES));
    let per_client: Arc<Mutex<HashMap<IpAddr, usize>>> = Arc::default();
    loop {
        // Accepting never waits for a handshake slot: a connection past the limits is closed at once, so
        // clients that open connections and never speak cannot leave everyone else in the listen backlog.
        let (conn, peer) = match tcp.accept().await {
            Ok(c) => c,
            Err(e) => {
                // As axum does: a connection that went away is nothing; anything else (out of file
                // descriptors) is waited out.
                if !matches!(
                    e.kind(),
                    io::ErrorKind::ConnectionRefused
                        | io::ErrorKind::ConnectionAborted
                        | io::ErrorKind::ConnectionReset
                ) {
                    tracing::error!(error = %e, "accepting a connection");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                continue;
            }
        };
        crate::routes::hold_little_unsent(&conn);
        let Some(client) = Handshaking::start(&per_client, peer.ip()) else {
            tracing::debug!(%peer, "closed: {HANDSHAKES_PER_CLIENT} TLS handshakes of this client under way");
            continue;
        };
        let Ok(permit) = handshakes.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "closed: {MAX_HANDSHAKES} TLS handshakes under way");
            continue;
        };
        let (acceptor, done) = (acceptor.clone(), done.clone());
        tokio::spawn(async move {
            let handshake = tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(conn)).await;
            drop((permit, client));
            match handshake {
                Ok(Ok(tls)) => {
                    let _ = done.send((tls, peer)).await;
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        });
    }
}

/// One handshake under way from a client address, counted until dropped.
struct Handshaking {
    ip: IpAddr,
    per_client: Arc<Mutex<HashMap<IpAddr, usize>>>,
}

impl Handshaking {
    /// Counts one more handshake from `ip`, or None when it has [`HANDSHAKES_PER_CLIENT`] under way.
    fn start(per_client: &Arc<Mutex<HashMap<IpAddr, usize>>>, ip: IpAddr) -> Option<Handshaking> {
        let mut m = per_client.lock().unwrap_or_else(PoisonError::into_inner);
        let n = m.entry(ip).or_default();
        if *n >= HANDSHAKES_PER_CLIENT {
            return None;
        }
        *n += 1;
        Some(Handshaking {
            ip,
            per_client: per_client.clone(),
        })
    }
}

impl Drop for Handshaking {
    fn drop(&mut self) {
        let mut m = self
            .per_client
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(n) = m.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.ip);
            }
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.done.recv().await {
            Some(conn) => conn,
            // The accept loop ended (only when dropped): nothing more will come.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok(self.local)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A CA and a certificate it signed for `localhost` and 127.0.0.1, made with the openssl command:
    /// `ca.crt`, `tls.crt`, `tls.key` in `dir` (as cert-manager mounts them), and `name`-prefixed copies.
    pub(crate) fn make_certs(dir: &Path, name: &str) {
        sonde_telemetry::test_certs(dir, name, "DNS:localhost,IP:127.0.0.1");
    }

    /// Puts `from` as `to` the way a Secret's update does: a new file moved over the old name.
    fn replace(dir: &Path, from: &str, to: &str) {
        let tmp = dir.join(format!("{to}.new"));
        std::fs::copy(dir.join(from), &tmp).unwrap();
        std::fs::rename(tmp, dir.join(to)).unwrap();
    }

    fn files(dir: &Path) -> CertFiles {
        CertFiles {
            cert: dir.join("tls.crt"),
            key: dir.join("tls.key"),
        }
    }

    fn leaf(dir: &Path, name: &str) -> CertificateDer<'static> {
        CertificateDer::from_pem_file(dir.join(name)).unwrap()
    }

    /// The app as main.rs serves it with a certificate, on a real socket.
    async fn serve_tls(
        cert: Arc<ReloadingCert>,
    ) -> (
        SocketAddr,
        tokio::sync::oneshot::Sender<()>,
        tokio::task::JoinHandle<io::Result<()>>,
    ) {
        let fake = Arc::new(crate::auth::tests::Fake::default());
        let ctx = Arc::new(crate::Context {
            client: kube::Client::new(axum::Router::new(), "default"),
            auth: crate::auth::Auth::new(Arc::new(fake), Duration::from_secs(30)),
            stores: crate::store::Stores::parse("file:///nonexistent".into(), "", 1 << 20).unwrap(),
            intake: None,
            requests: crate::request_histogram(),
            stopping: tokio::sync::watch::channel(false).1,
        });
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let config = server_config(cert).unwrap();
        let server = tokio::spawn(crate::routes::serve(
            listener,
            Some(config),
            ctx,
            crate::routes::Listener::Readers,
            async {
                let _ = stopped.await;
            },
        ));
        (addr, stop, server)
    }

    /// One request over HTTPS, trusting `ca`: the server's certificate and the answer.
    pub(crate) async fn https(
        addr: SocketAddr,
        ca: &Path,
        request: &str,
    ) -> Result<(CertificateDer<'static>, String), String> {
        let mut roots = rustls::RootCertStore::empty();
        roots
            .add(CertificateDer::from_pem_file(ca).unwrap())
            .unwrap();
        let config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let tcp = TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
        let mut conn = tokio_rustls::TlsConnector::from(Arc::new(config))
            .connect(name, tcp)
            .await
            .map_err(|e| e.to_string())?;
        let cert = conn.get_ref().1.peer_certificates().unwrap()[0].clone();
        conn.write_all(request.as_bytes()).await.unwrap();
        let mut answer = String::new();
        conn.read_to_string(&mut answer)
            .await
            .map_err(|e| e.to_string())?;
        Ok((cert, answer))
    }

    /// One client address holds at most HANDSHAKES_PER_CLIENT handshakes; others are not held up by it, and
    /// each ended handshake gives its place back.
    #[test]
    fn one_client_holds_at_most_its_handshakes() {
        let per_client = Arc::default();
        let (a, b): (IpAddr, IpAddr) = ("10.0.0.1".parse().unwrap(), "10.0.0.2".parse().unwrap());
        let mut held: Vec<Handshaking> = (0..HANDSHAKES_PER_CLIENT)
            .map(|_| Handshaking::start(&per_client, a).unwrap())
            .collect();
        assert!(Handshaking::start(&per_client, a).is_none());
        let other = Handshaking::start(&per_client, b).unwrap();
        held.pop();
        assert!(Handshaking::start(&per_client, a).is_some());
        drop((held, other));
        assert!(
            per_client.lock().unwrap().is_empty(),
            "counts go with their handshakes"
        );
    }

    /// Served over HTTPS: the page, the API (which needs the TCP peer: 401 for an unknown token, not 500) and a
    /// `Secure` login cookie; plain HTTP to the port gets no answer; a rotated certificate is served to the
    /// next client; a graceful stop ends the server.
    #[tokio::test]
    async fn the_served_app_answers_https_only_with_the_certificate_of_the_day() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_certs(d, "");
        make_certs(d, "b-");
        let cert = Arc::new(ReloadingCert::load(files(d), Duration::ZERO).unwrap());
        let (addr, stop, server) = serve_tls(cert).await;
        let ca = d.join("ca.crt");
        let get = |path: &str, token: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nhost: localhost\r\nauthorization: Bearer {token}\r\n\
                 connection: close\r\n\r\n"
            )
        };
        let (served, page) = https(addr, &ca, &get("/", "-")).await.unwrap();
        assert_eq!(served, leaf(d, "tls.crt"));
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        let (_, api) = https(addr, &ca, &get("/api/v1/namespaces/a/tracejobs", "random"))
            .await
            .unwrap();
        assert!(api.starts_with("HTTP/1.1 401"), "{api}");
        let body = r#"{"token":"good-a"}"#;
        let login = format!(
            "POST /login HTTP/1.1\r\nhost: localhost\r\ncontent-type: application/json\r\n\
             content-length: {}\r\nconnection: close\r\n\r\n{body}",
            body.len()
        );
        let (_, login) = https(addr, &ca, &login).await.unwrap();
        assert!(login.starts_with("HTTP/1.1 200"), "{login}");
        assert!(
            login.contains("HttpOnly; SameSite=Strict; Max-Age=") && login.contains("; Secure\r\n"),
            "{login}"
        );

        // Plain HTTP to the TLS port: no HTTP answer.
        let mut plain = TcpStream::connect(addr).await.unwrap();
        plain.write_all(get("/", "-").as_bytes()).await.unwrap();
        let mut answer = Vec::new();
        let _ = plain.read_to_end(&mut answer).await;
        assert!(
            !answer.starts_with(b"HTTP/"),
            "{}",
            String::from_utf8_lossy(&answer)
        );

        // Rotated as a Secret is: the next client gets the new certificate.
        replace(d, "b-tls.crt", "tls.crt");
        replace(d, "b-tls.key", "tls.key");
        let (served, page) = https(addr, &d.join("b-ca.crt"), &get("/", "-"))
            .await
            .unwrap();
        assert_eq!(served, leaf(d, "b-tls.crt"));
        assert!(page.starts_with("HTTP/1.1 200"), "{page}");
        // The old CA does not vouch for it.
        let e = https(addr, &ca, &get("/", "-")).await.unwrap_err();
        assert!(e.contains("UnknownIssuer"), "{e}");

        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(10), server)
            .await
            .expect("the server stops")
            .unwrap()
            .unwrap();
    }

    #[test]
    fn both_files_or_neither() {
        assert!(CertFiles::from_args(None, None).unwrap().is_none());
        let e = CertFiles::from_args(Some("/c".into()), None).unwrap_err();
        assert!(e.contains("without --tls-key (SONDE_TLS_KEY)"), "{e}");
        let e = CertFiles::from_args(None, Some("/k".into())).unwrap_err();
        assert!(e.contains("without --tls-cert (SONDE_TLS_CERT)"), "{e}");
    }

    /// A missing, empty or mismatched file at start is refused, naming the file.
    #[test]
    fn a_bad_file_at_start_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let e = ReloadingCert::load(files(d), RELOAD_EVERY).unwrap_err();
        assert!(
            e.contains(&format!("{}", d.join("tls.crt").display())),
            "{e}"
        );
        make_certs(d, "");
        make_certs(d, "other-");
        std::fs::write(d.join("empty"), "").unwrap();
        let bad = |cert: &str, key: &str| {
            ReloadingCert::load(
                CertFiles {
                    cert: d.join(cert),
                    key: d.join(key),
                },
                RELOAD_EVERY,
            )
            .unwrap_err()
        };
        let e = bad("empty", "tls.key");
        assert!(e.contains("empty: no certificate"), "{e}");
        let e = bad("tls.crt", "empty");
        assert!(e.contains("empty: no PEM private key"), "{e}");
        let e = bad("tls.crt", "nope.key");
        assert!(e.contains("nope.key"), "{e}");
        let e = bad("tls.crt", "other-tls.key");
        assert!(
            e.contains("other-tls.key is not the key of the certificate in"),
            "{e}"
        );
        assert!(ReloadingCert::load(files(d), RELOAD_EVERY).is_ok());
    }

    /// A replaced certificate is served once the files are looked at again (not before `every`); a bad
    /// replacement keeps the one served.
    #[test]
    fn a_rotated_certificate_is_read_again_and_a_bad_one_is_not_taken() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        make_certs(d, "");
        make_certs(d, "b-");
        let (first, second) = (leaf(d, "tls.crt"), leaf(d, "b-tls.crt"));
        assert_ne!(first, second);
        std::fs::copy(d.join("tls.crt"), d.join("a-tls.crt")).unwrap();
        std::fs::copy(d.join("tls.key"), d.join("a-tls.key")).unwrap();
        let slow = ReloadingCert::load(files(d), RELOAD_EVERY).unwrap();
        let quick = ReloadingCert::load(files(d), Duration::ZERO).unwrap();
        assert_eq!(quick.current().end_entity_cert().unwrap(), &first);
        replace(d, "b-tls.crt", "tls.crt");
        // The key is not yet replaced: the pair does not match, the first stays.
        assert_eq!(quick.current().end_entity_cert().unwrap(), &first);
        replace(d, "b-tls.key", "tls.key");
        assert_eq!(quick.current().end_entity_cert().unwrap(), &second);
        assert_eq!(slow.current().end_entity_cert().unwrap(), &first);
        std::fs::write(d.join("tls.crt"), "garbage").unwrap();
        assert_eq!(quick.current().end_entity_cert().unwrap(), &second);
        std::fs::remove_file(d.join("tls.crt")).unwrap();
        assert_eq!(quick.current().end_entity_cert().unwrap(), &second);
        replace(d, "a-tls.crt", "tls.crt");
        replace(d, "a-tls.key", "tls.key");
        assert_eq!(quick.current().end_entity_cert().unwrap(), &first);
    }
}

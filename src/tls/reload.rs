//! The server certificate, reloadable while the gateway runs.
//!
//! The one `ServerConfig` (and so the one `TlsAcceptor`) never changes: its
//! certificate resolver is a [`ServerCert`], which hands every handshake the
//! pair it holds at that moment. A reload reads both files, checks that the
//! key matches the certificate, and swaps the pair: handshakes from then on
//! get the new one, while connections already up are untouched (a TLS session
//! never looks at its certificate again). A pair that cannot be used is
//! refused with an error log, and the old one stays.
//!
//! Reloads happen when asked through a [`ReloadHandle`] (`main` asks on
//! SIGHUP; tests ask directly), and when the files change: `watch` compares
//! their modification time, size and inode every few seconds, which also
//! follows the symlink swaps of Kubernetes secret volumes.

use std::fmt::Write as _;
use std::fs::Metadata;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError, RwLock};
use std::time::{Duration, SystemTime};

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, Interval, MissedTickBehavior};

use super::{PairError, TlsError, load_pair};

/// How often the certificate files are looked at for changes, by default.
pub const POLL_INTERVAL: Duration = Duration::from_secs(5);

/// Reload requests waiting for the gateway to pick them up.
const QUEUED_REQUESTS: usize = 8;

/// The certificate the gateway presents, swapped in place by a reload.
#[derive(Debug)]
pub struct ServerCert {
    cert: PathBuf,
    key: PathBuf,
    /// The pair every new handshake gets. A std `RwLock`: handshakes hold
    /// the read side only to clone the `Arc`, never across an `.await`.
    current: RwLock<Arc<CertifiedKey>>,
    /// What the two files looked like when last read, to notice changes.
    seen: Mutex<[Option<Stamp>; 2]>,
}

/// Enough of a file's metadata to notice that it was rewritten or replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

impl Stamp {
    fn of(path: &Path) -> Option<Self> {
        // `metadata` follows symlinks: a swapped `..data` link shows as a change.
        std::fs::metadata(path).ok().map(|meta: Metadata| Self {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        })
    }
}

impl ServerCert {
    /// Reads the pair; fails with every problem found, each naming its file.
    pub fn load(cert: &Path, key: &Path) -> Result<Arc<Self>, PairError> {
        let seen = [Stamp::of(cert), Stamp::of(key)];
        let pair = load_pair(cert, key)?;
        Ok(Arc::new(Self {
            cert: cert.to_owned(),
            key: key.to_owned(),
            current: RwLock::new(Arc::new(pair)),
            seen: Mutex::new(seen),
        }))
    }

    /// The pair new handshakes get.
    pub fn current(&self) -> Arc<CertifiedKey> {
        Arc::clone(&self.current.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// The SHA-256 fingerprint of the leaf certificate in use, as the usual
    /// colon-separated hex (what `openssl x509 -fingerprint -sha256` prints).
    pub fn fingerprint(&self) -> String {
        fingerprint(&self.current())
    }

    /// Re-reads both files and, if they make a usable pair, serves it from
    /// the next handshake on. Otherwise logs why and keeps the old pair.
    /// Blocks on file reads: call it off the async threads.
    pub fn reload(&self) -> Result<Reloaded, TlsError> {
        let seen = [Stamp::of(&self.cert), Stamp::of(&self.key)];
        // Remembered even if the pair is refused: one error per change of
        // the files, not one per poll.
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) = seen;
        match load_pair(&self.cert, &self.key) {
            Ok(pair) => {
                let fingerprint = fingerprint(&pair);
                *self.current.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(pair);
                tracing::info!(
                    cert = %self.cert.display(),
                    key = %self.key.display(),
                    sha256 = %fingerprint,
                    "server certificate reloaded: new connections get the new one"
                );
                Ok(Reloaded::Replaced { fingerprint })
            }
            Err(problems) => {
                let kept = self.fingerprint();
                for (_, error) in problems.iter() {
                    tracing::error!(%error, sha256 = %kept, "new server certificate refused; keeping the one in use");
                }
                Err(problems.into())
            }
        }
    }

    /// Whether either file looks different from when it was last read.
    fn changed(&self) -> bool {
        let now = [Stamp::of(&self.cert), Stamp::of(&self.key)];
        *self.seen.lock().unwrap_or_else(PoisonError::into_inner) != now
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current())
    }
}

fn fingerprint(pair: &CertifiedKey) -> String {
    let leaf = pair.cert.first().map_or(&[][..], |cert| cert.as_ref());
    let digest = ring::digest::digest(&ring::digest::SHA256, leaf);
    let mut text = String::with_capacity(95);
    for (i, byte) in digest.as_ref().iter().enumerate() {
        if i > 0 {
            text.push(':');
        }
        let _ = write!(text, "{byte:02X}");
    }
    text
}

/// What a reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reloaded {
    /// New handshakes get the new pair; the SHA-256 fingerprint of its leaf.
    Replaced { fingerprint: String },
    /// The gateway serves plain HTTP: there is nothing to reload.
    NoTls,
}

/// Why a reload did not happen.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The new files do not make a usable pair; the old pair is still served.
    #[error("new server certificate refused, the old one is kept: {0}")]
    Refused(TlsError),
    /// The gateway this handle belongs to is not running (any more).
    #[error("the gateway is not running")]
    Stopped,
}

type Reply = oneshot::Sender<Result<Reloaded, ReloadError>>;

/// A pair of ends: the [`ReloadHandle`] for whoever asks for reloads, and
/// the [`ReloadRequests`] for [`crate::run_with`]. Requests made before the
/// gateway starts wait for it.
pub fn reload_channel() -> (ReloadHandle, ReloadRequests) {
    let (sender, receiver) = mpsc::channel(QUEUED_REQUESTS);
    (ReloadHandle(sender), ReloadRequests(receiver))
}

/// Asks a running gateway to re-read its certificate and key.
#[derive(Debug, Clone)]
pub struct ReloadHandle(mpsc::Sender<Reply>);

impl ReloadHandle {
    /// Reloads and reports the outcome (also logged by the gateway).
    pub async fn reload(&self) -> Result<Reloaded, ReloadError> {
        let (reply, outcome) = oneshot::channel();
        self.0.send(reply).await.map_err(|_| ReloadError::Stopped)?;
        outcome.await.unwrap_or(Err(ReloadError::Stopped))
    }
}

/// The gateway's end of [`reload_channel`].
#[derive(Debug)]
pub struct ReloadRequests(mpsc::Receiver<Reply>);

/// Serves reload requests and, every `poll`, reloads if the files changed.
/// Runs until the task is aborted (or has nothing left to do).
pub(crate) async fn watch(
    cert: Option<Arc<ServerCert>>,
    mut requests: Option<ReloadRequests>,
    poll: Option<Duration>,
) {
    let mut ticks = cert.as_ref().and(poll).map(|poll| {
        let mut ticks = tokio::time::interval_at(Instant::now() + poll, poll);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        ticks
    });
    while requests.is_some() || ticks.is_some() {
        tokio::select! {
            request = next_request(&mut requests) => match request {
                Some(reply) => {
                    let outcome = match &cert {
                        Some(cert) => reload_off_thread(cert, false).await.unwrap_or(Err(ReloadError::Stopped)),
                        None => {
                            tracing::info!("reload asked for, but there is no [server.tls]: nothing to reload");
                            Ok(Reloaded::NoTls)
                        }
                    };
                    let _ = reply.send(outcome);
                }
                // Every handle is gone; keep watching the files.
                None => requests = None,
            },
            () = next_tick(&mut ticks) => {
                if let Some(cert) = &cert {
                    // Logged by `reload`; nobody else is waiting for the outcome.
                    let _ = reload_off_thread(cert, true).await;
                }
            }
        }
    }
}

/// Runs a reload (only if the files changed, with `if_changed`) on the
/// blocking pool; `None` when there was nothing to do.
async fn reload_off_thread(
    cert: &Arc<ServerCert>,
    if_changed: bool,
) -> Option<Result<Reloaded, ReloadError>> {
    let cert = Arc::clone(cert);
    let work = move || {
        if if_changed && !cert.changed() {
            return None;
        }
        if if_changed {
            tracing::info!(cert = %cert.cert.display(), key = %cert.key.display(), "server certificate files changed: reloading");
        }
        Some(cert.reload().map_err(ReloadError::Refused))
    };
    // A join error means the runtime is shutting down.
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or(Some(Err(ReloadError::Stopped)))
}

async fn next_request(requests: &mut Option<ReloadRequests>) -> Option<Reply> {
    match requests {
        Some(requests) => requests.0.recv().await,
        None => std::future::pending().await,
    }
}

async fn next_tick(ticks: &mut Option<Interval>) {
    match ticks {
        Some(ticks) => {
            ticks.tick().await;
        }
        None => std::future::pending().await,
    }
}

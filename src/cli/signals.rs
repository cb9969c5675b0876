//! Signal handling for the gateway, the demo and the mock upstream.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

use chorus::tls::{ReloadError, ReloadHandle};

/// The signals the process acts on: SIGTERM and SIGINT drain (a second one
/// cuts what is left at once), SIGHUP reloads the server certificate.
/// Registered before readiness is announced, since until a handler is
/// registered a signal ends the process at once.
pub(crate) struct Signals {
    pub(crate) terminate: Option<Signal>,
    pub(crate) interrupt: Option<Signal>,
    pub(crate) hangup: Option<Signal>,
}

impl Signals {
    /// Starts listening for all three.
    pub(crate) fn listen() -> Self {
        Self {
            terminate: listen_for(SignalKind::terminate(), "SIGTERM"),
            interrupt: listen_for(SignalKind::interrupt(), "SIGINT"),
            hangup: listen_for(SignalKind::hangup(), "SIGHUP"),
        }
    }

    /// Resolves on SIGTERM or SIGINT.
    pub(crate) async fn shutdown(mut terminate: Option<Signal>, mut interrupt: Option<Signal>) {
        either(&mut terminate, &mut interrupt).await;
    }

    /// Cancels `drain` on the first SIGTERM or SIGINT, and `hurry` on the
    /// second: an operator pressing Ctrl-C again wants out now.
    pub(crate) async fn drain_then_hurry(
        mut terminate: Option<Signal>,
        mut interrupt: Option<Signal>,
        drain: CancellationToken,
        hurry: CancellationToken,
    ) {
        for token in [drain, hurry] {
            either(&mut terminate, &mut interrupt).await;
            token.cancel();
        }
    }
}

async fn either(terminate: &mut Option<Signal>, interrupt: &mut Option<Signal>) {
    tokio::select! {
        () = received(terminate) => {}
        () = received(interrupt) => {}
    }
}

/// Starts listening for one signal; logs it if that is not possible.
pub(crate) fn listen_for(kind: SignalKind, name: &str) -> Option<Signal> {
    let registered = signal(kind);
    if let Err(error) = &registered {
        tracing::warn!(%error, "cannot listen for {name}");
    }
    registered.ok()
}

/// Resolves when `signal` arrives; never, if it is not listened for.
async fn received(signal: &mut Option<Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}

/// Reloads the server certificate on every SIGHUP (the gateway logs how it
/// went), instead of SIGHUP's default of ending the process.
pub(crate) async fn reload_on_sighup(hangups: Option<Signal>, reload: ReloadHandle) {
    let Some(mut hangups) = hangups else {
        tracing::warn!("certificate reload on SIGHUP is off");
        return;
    };
    while hangups.recv().await.is_some() {
        tracing::info!("SIGHUP: reloading the server certificate");
        if let Err(ReloadError::Stopped) = reload.reload().await {
            return;
        }
    }
}

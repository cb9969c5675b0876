//! The gateway's log lines, captured in memory for a test to read.

use std::io::Write;
use std::sync::{Arc, Mutex, Once};

use tracing::subscriber::DefaultGuard;
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;

/// Everything a subscriber writes, kept in memory.
#[derive(Clone, Default)]
pub struct Captured(Arc<Mutex<Vec<u8>>>);

impl Captured {
    /// What was written so far.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }

    /// Captures this thread's logs (all of a gateway's on a current-thread
    /// runtime, and no other test's) at every level, held back as the
    /// binary holds them, until the guard is dropped.
    pub fn this_thread() -> (Self, DefaultGuard) {
        // tracing caches whether a log line is wanted, process-wide, when
        // the line is first reached; with one subscriber registered, it asks
        // the reaching thread's, which for another test's thread would be
        // none, and the line would be lost to every capture after. A global
        // subscriber that keeps nothing makes every thread's answer yes.
        static BASELINE: Once = Once::new();
        BASELINE.call_once(|| {
            let _ = tracing::subscriber::set_global_default(tracing_subscriber::registry());
        });
        let captured = Self::default();
        let subscriber = tracing_subscriber::registry()
            .with(chorus::logging::dependency_cap())
            .with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(false)
                    .with_writer(captured.clone()),
            );
        (captured, tracing::subscriber::set_default(subscriber))
    }
}

impl Write for Captured {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;

    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

//! What the gateway's process sets up for itself at start: its open-files
//! limit, and jemalloc's purging of freed memory.

/// Has jemalloc give freed memory back to the system from a background
/// thread, over its decay time (10 s). Without it, pages are given back only
/// in the course of later allocations: 25 s after a burst of 5,000 distinct
/// streams, an idle gateway still held 207 MB; with it, 54 MB (README,
/// Allocator).
pub(crate) fn return_memory_in_the_background() {
    let enabled = tikv_jemalloc_ctl::max_background_threads::write(1)
        .and_then(|()| tikv_jemalloc_ctl::background_thread::write(true));
    if let Err(error) = enabled {
        tracing::debug!(%error, "jemalloc's background thread is not available");
    }
}

/// Raises the soft limit on open files to the hard one, as Go's runtime
/// does (and nginx's `worker_rlimit_nofile` is set for): every client takes
/// a descriptor and every upstream connection another, and services are
/// often started with a soft limit of 1,024 (systemd's default) under a far
/// higher hard one, which would refuse clients long before
/// `server.max_connections`.
pub(crate) fn raise_open_files_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    if let Err(error) = setrlimit(Resource::Nofile, raised) {
        // Still served, with fewer connections: the warning below says so.
        eprintln!("chorus: cannot raise the open files limit: {error}");
    }
}

/// Warns when the open-files limit cannot even hold `max_connections`
/// clients: past it, accepting fails with "too many open files" and new
/// connections wait in the backlog until descriptors are free again.
pub(crate) fn warn_if_few_open_files(max_connections: usize) {
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile);
    // Room for the listeners, the log, and a few upstream connections.
    let needed = max_connections as u64 + 64;
    if let Some(current) = limit.current
        && current < needed
    {
        tracing::warn!(
            open_files = current,
            max_connections,
            "the open files limit is below server.max_connections: clients past it wait in the \
             accept backlog until others close (raise it with `ulimit -n`, systemd's LimitNOFILE or docker run --ulimit nofile)"
        );
    }
}

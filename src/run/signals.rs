//! SIGINT and SIGTERM: the first stops the run gracefully (no new work, children's
//! process groups terminated, report printed), a second exits at once.

use std::sync::atomic::{AtomicU8, Ordering};

use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::watch;

use crate::output::exit;

/// The exit code of the first signal received, 0 while none has arrived.
static RECEIVED: AtomicU8 = AtomicU8::new(0);

/// The exit code the run must end with because of a signal, if one arrived.
pub fn interrupted_exit_code() -> Option<u8> {
    match RECEIVED.load(Ordering::SeqCst) {
        0 => None,
        code => Some(code),
    }
}

/// Listens for SIGINT/SIGTERM and flips `cancel` on the first one.
pub fn listen(cancel: watch::Sender<bool>) -> std::io::Result<()> {
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    tokio::spawn(async move {
        loop {
            let (code, name) = tokio::select! {
                _ = interrupt.recv() => (exit::INTERRUPTED, "SIGINT"),
                _ = terminate.recv() => (exit::TERMINATED, "SIGTERM"),
            };
            if RECEIVED
                .compare_exchange(0, code, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
            {
                tracing::warn!(
                    signal = name,
                    "stopping: no new images start, running copies are terminated; a second signal exits at once"
                );
                let _ = cancel.send(true);
            } else {
                tracing::warn!(signal = name, "second signal: exiting now");
                crate::process::kill_all_groups();
                crate::registry::private_config::remove_all_now();
                std::process::exit(i32::from(RECEIVED.load(Ordering::SeqCst)));
            }
        }
    });
    Ok(())
}

//! Whatever a run starts (processes, temporary directories) is owned by a guard
//! that tears it down when dropped: on success, on error, while unwinding from a panic,
//! and, through the signal handler, on Ctrl-C or SIGTERM.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};

type Action = Box<dyn FnOnce() + Send>;

static ACTIONS: Mutex<BTreeMap<u64, Action>> = Mutex::new(BTreeMap::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(0);
static INTERRUPTED: AtomicBool = AtomicBool::new(false);
/// Teardowns running outside the registry (registered after an interruption).
static TEARING_DOWN: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
/// The exit status after a signal: 130 (interrupted) unless a command that waits for
/// signals (`--hold`) says the signal is its normal end.
static SIGNAL_EXIT_CODE: std::sync::atomic::AtomicI32 = std::sync::atomic::AtomicI32::new(130);

fn actions() -> MutexGuard<'static, BTreeMap<u64, Action>> {
    ACTIONS.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs its action once: when dropped, or from `run_all` if the process is stopping.
pub struct Guard {
    id: u64,
}

impl Guard {
    pub fn new(action: impl FnOnce() + Send + 'static) -> Self {
        let id = NEXT_ID.fetch_add(1, Ordering::SeqCst);
        let mut registered = actions();
        if INTERRUPTED.load(Ordering::SeqCst) {
            // The run is stopping: whatever is started now is torn down on the spot.
            TEARING_DOWN.fetch_add(1, Ordering::SeqCst);
            drop(registered);
            action();
            TEARING_DOWN.fetch_sub(1, Ordering::SeqCst);
            NEXT_ID.fetch_add(1, Ordering::SeqCst);
        } else {
            registered.insert(id, Box::new(action));
        }
        Self { id }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        let action = actions().remove(&self.id);
        if let Some(action) = action {
            action();
        }
    }
}

/// Tears down everything still registered, newest first.
pub fn run_all() {
    let pending = std::mem::take(&mut *actions());
    for (_, action) in pending.into_iter().rev() {
        action();
    }
}

/// Whether a signal asked the run to stop. What fails after that (a server killed by
/// the teardown) is a consequence of the interruption, not a result to report.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// From now on a signal is the expected end: tear down and exit with `code`.
pub fn exit_on_signal_with(code: i32) {
    SIGNAL_EXIT_CODE.store(code, Ordering::SeqCst);
}

/// On SIGINT or SIGTERM: tear down, then exit (with 130, as shells expect, by default).
pub fn install_signal_handler() {
    let installed = ctrlc::set_handler(|| {
        // Under the registry's lock: every later registration sees the flag.
        INTERRUPTED.store(true, Ordering::SeqCst);
        drop(actions());
        eprintln!("interrupted: tearing down what was started");
        run_all();
        // The main thread may still be starting things for a moment; each is torn down
        // as it registers. Exit once that has settled.
        let mut seen = NEXT_ID.load(Ordering::SeqCst);
        loop {
            std::thread::sleep(std::time::Duration::from_millis(200));
            let now = NEXT_ID.load(Ordering::SeqCst);
            if now == seen && TEARING_DOWN.load(Ordering::SeqCst) == 0 {
                break;
            }
            seen = now;
        }
        std::process::exit(SIGNAL_EXIT_CODE.load(Ordering::SeqCst));
    });
    if let Err(err) = installed {
        eprintln!("warning: cannot watch Ctrl-C ({err}); an interrupted run may leave processes behind");
    }
}

/// A fresh directory under the system temporary directory, removed with the guard.
pub struct TempDir {
    path: PathBuf,
    _guard: Guard,
}

impl TempDir {
    pub fn new(label: &str) -> std::io::Result<Self> {
        let unique = NEXT_ID.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("xtask-{label}-{}-{unique}", std::process::id()));
        std::fs::create_dir_all(&path)?;
        let owned = path.clone();
        let guard = Guard::new(move || {
            let _ = std::fs::remove_dir_all(&owned);
        });
        Ok(Self { path, _guard: guard })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;

    #[test]
    fn a_dropped_guard_runs_its_action_once() {
        let ran = Arc::new(AtomicU64::new(0));
        let counter = ran.clone();
        let guard = Guard::new(move || {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        let id = guard.id;
        drop(guard);
        assert_eq!(ran.load(Ordering::SeqCst), 1);
        // Not `run_all()` to prove it: that would tear down what tests running beside
        // this one have started (their PostgreSQL servers, say).
        assert!(!actions().contains_key(&id), "a dropped guard is still registered");
    }

    #[test]
    fn temp_dirs_are_removed_when_dropped() {
        let dir = TempDir::new("unit").unwrap();
        let path = dir.path().to_path_buf();
        std::fs::write(path.join("file"), "x").unwrap();
        drop(dir);
        assert!(!path.exists());
    }
}

//! The threads a session or a batch runs its passes on: a rayon pool that survives `fork`.
//!
//! A forked child has none of its parent's threads, so a pool inherited through `fork`
//! (Python's `multiprocessing` on Linux, a pre-loading web server) would wait forever for
//! workers that are not there. The first use in a new process therefore starts the pool
//! again. The parent's copy is left alone in the child: dropping it would signal threads that
//! do not exist, under locks they may have held when the process was copied.

use crate::error::{Error, Result};
use rayon::ThreadPool;
use std::sync::{Arc, Mutex};

pub struct Threads {
    /// As asked (0: rayon's default, `RAYON_NUM_THREADS` or one per core), for a restart.
    asked: usize,
    n_threads: usize,
    name: &'static str,
    /// The pool and the process that started it. Locked only to look at or swap the pool,
    /// never while a pass runs, so a fork in another thread's pass cannot leave it held.
    pool: Mutex<(u32, Arc<ThreadPool>)>,
}

impl Threads {
    /// `n_threads` workers named `{name}-{i}` (0: rayon's default number).
    pub fn new(n_threads: usize, name: &'static str) -> Result<Threads> {
        let pool = start(n_threads, name)?;
        Ok(Threads {
            asked: n_threads,
            n_threads: pool.current_num_threads(),
            name,
            pool: Mutex::new((std::process::id(), pool)),
        })
    }

    pub fn n_threads(&self) -> usize {
        self.n_threads
    }

    /// Runs `f` on the pool, which is started again first in a process forked since the
    /// last use (an error only if the new threads cannot be started).
    pub fn install<R: Send>(&self, f: impl FnOnce() -> R + Send) -> Result<R> {
        Ok(self.pool()?.install(f))
    }

    /// This process's pool, started here if the one held was started in a parent.
    fn pool(&self) -> Result<Arc<ThreadPool>> {
        let mut held = self.pool.lock().unwrap_or_else(|e| e.into_inner());
        let pid = std::process::id();
        if held.0 != pid {
            let fresh = start(self.asked, self.name)?;
            // The parent's pool: its threads live in the parent only (see the module note).
            std::mem::forget(std::mem::replace(&mut held.1, fresh));
            held.0 = pid;
        }
        Ok(held.1.clone())
    }
}

/// Runs `f` on the process's shared threads (as many as rayon's global pool would have:
/// `RAYON_NUM_THREADS`, else one per core): the work outside a session
/// (quantizing, converting old files at load). rayon's own global pool is not used for it,
/// since it cannot be started again in a forked child. If those threads cannot be started,
/// `f` runs where it is called.
pub fn install_shared<R: Send>(f: impl FnOnce() -> R + Send) -> R {
    static SHARED: std::sync::OnceLock<Option<Threads>> = std::sync::OnceLock::new();
    let shared = SHARED.get_or_init(|| Threads::new(0, "llama-rs-work").ok());
    match shared.as_ref().and_then(|t| t.pool().ok()) {
        Some(pool) => pool.install(f),
        None => f(),
    }
}

fn start(n_threads: usize, name: &'static str) -> Result<Arc<ThreadPool>> {
    rayon::ThreadPoolBuilder::new()
        .num_threads(n_threads)
        .thread_name(move |i| format!("{name}-{i}"))
        .build()
        .map(Arc::new)
        .map_err(|e| Error::Invalid(format!("cannot start {n_threads} threads: {e}")))
}

#[cfg(all(test, target_os = "linux"))]
mod tests {
    use super::*;
    use rayon::prelude::*;

    /// Whether `check` returns true in a forked child, which must end within 60 s.
    fn in_forked_child(check: impl FnOnce() -> bool) -> bool {
        // SAFETY: the child runs `check` and leaves with _exit, touching nothing of the test
        // harness's other threads.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            let ok = std::panic::catch_unwind(std::panic::AssertUnwindSafe(check)).unwrap_or(false);
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        let mut status = 0;
        // SAFETY (both calls): the child started above, by its pid.
        while unsafe { libc::waitpid(pid, &mut status, libc::WNOHANG) } != pid {
            if std::time::Instant::now() > deadline {
                unsafe { libc::kill(pid, libc::SIGKILL) };
                panic!("the forked child's work did not end in 60 s");
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0
    }

    /// A pool used in a forked child is started there: the child's pass ends instead of
    /// waiting for the parent's workers (with a plain rayon pool this child never ends).
    #[test]
    fn a_forked_child_runs_on_threads_of_its_own() {
        let threads = Threads::new(2, "llama-rs-test").unwrap();
        let sum = |t: &Threads| t.install(|| (0..1000u64).into_par_iter().sum::<u64>());
        assert_eq!(sum(&threads).unwrap(), 499500);
        assert!(in_forked_child(|| sum(&threads).ok() == Some(499500)));
        assert_eq!(
            sum(&threads).unwrap(),
            499500,
            "the parent's pool still works"
        );
    }

    /// The same for the work outside sessions (quantizing here), which rayon's global pool
    /// would have run.
    #[test]
    fn a_forked_child_converts_on_shared_threads_of_its_own() {
        use crate::quant::GgmlType;
        let cols = 256;
        let data: Vec<u8> = (0..64 * cols)
            .flat_map(|i| ((i % 97) as f32 / 13.0 - 3.0).to_le_bytes())
            .collect();
        let convert = || crate::quantize::convert(&data, GgmlType::F32, GgmlType::Q8_0, cols);
        let want = convert();
        assert!(in_forked_child(|| convert() == want));
    }
}

//! A small thread pool for decode-sized kernels, whose workers spin briefly between jobs.
//!
//! A decode step calls a matrix-vector kernel about 120 times, a few tens of microseconds
//! apart. With rayon, the helper thread falls asleep between calls and each call pays a futex
//! wake-up and a context switch (about 20% of decode time in `perf`). Here workers spin for a
//! short while after each job (as llama.cpp's threads do) and only then park, so back-to-back
//! kernels start at once while an idle process still sleeps.

use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering::SeqCst};
use std::sync::{Condvar, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// How long an idle worker spins before it parks.
const SPIN: Duration = Duration::from_micros(300);

/// One parallel call: `n` tasks claimed one at a time by whoever is free.
struct Job {
    /// Lifetime-erased `&(dyn Fn(usize) + Sync)`; valid while the job is published.
    f: *const (dyn Fn(usize) + Sync),
    n: usize,
    next: AtomicUsize,
    done: AtomicUsize,
    /// Set when a task panicked (on any thread); the caller panics in turn once all are done.
    panicked: AtomicBool,
}

struct Pool {
    workers: usize,
    job: AtomicPtr<Job>,
    generation: AtomicUsize,
    /// Workers between "about to read `job`" and "done with it": the caller waits for zero
    /// before its job (on its stack) goes away.
    active: AtomicUsize,
    parked: Mutex<usize>,
    wake: Condvar,
    /// One caller at a time (the model runs on one thread; tests may not).
    caller: Mutex<()>,
}

// SAFETY: the raw pointers inside are only dereferenced under the protocol described in `run`.
unsafe impl Sync for Pool {}
unsafe impl Send for Pool {}

fn pool() -> &'static Pool {
    static POOL: OnceLock<&'static Pool> = OnceLock::new();
    POOL.get_or_init(|| {
        let workers = rayon::current_num_threads().saturating_sub(1);
        let pool: &'static Pool = Box::leak(Box::new(Pool {
            workers,
            job: AtomicPtr::new(std::ptr::null_mut()),
            generation: AtomicUsize::new(0),
            active: AtomicUsize::new(0),
            parked: Mutex::new(0),
            wake: Condvar::new(),
            caller: Mutex::new(()),
        }));
        for i in 0..workers {
            std::thread::Builder::new()
                .name(format!("switchyard-spin-{i}"))
                .spawn(move || pool.work())
                .expect("spawn a kernel thread");
        }
        pool
    })
}

impl Job {
    /// Claim and run tasks until none are left.
    fn drain(&self) {
        loop {
            let t = self.next.fetch_add(1, SeqCst);
            if t >= self.n {
                return;
            }
            // SAFETY: `f` outlives the job's publication (see `run`).
            let f = unsafe { &*self.f };
            // A panicking task must still count as done, or the caller would wait forever.
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(t))).is_err() {
                self.panicked.store(true, SeqCst);
            }
            self.done.fetch_add(1, SeqCst);
        }
    }
}

impl Pool {
    fn work(&self) {
        let mut seen = self.generation.load(SeqCst);
        loop {
            let mut idle = Instant::now();
            let mut spins = 0u32;
            loop {
                let g = self.generation.load(SeqCst);
                if g != seen {
                    seen = g;
                    self.active.fetch_add(1, SeqCst);
                    let job = self.job.load(SeqCst);
                    if !job.is_null() {
                        // SAFETY: the caller keeps the job alive until `active` is back to zero.
                        unsafe { (*job).drain() };
                    }
                    self.active.fetch_sub(1, SeqCst);
                    idle = Instant::now();
                    continue;
                }
                std::hint::spin_loop();
                spins += 1;
                if spins.is_multiple_of(256) && idle.elapsed() > SPIN {
                    break;
                }
            }
            let mut parked = self.parked.lock().expect("pool lock");
            if self.generation.load(SeqCst) != seen {
                continue;
            }
            *parked += 1;
            parked = self.wake.wait(parked).expect("pool lock");
            *parked -= 1;
        }
    }

    fn run(&self, n: usize, f: &(dyn Fn(usize) + Sync)) {
        let _one = self.caller.lock().unwrap_or_else(|e| e.into_inner());
        // SAFETY: erasing the lifetime is sound because this function does not return before
        // every worker is done with the job: after `done == n` it unpublishes the job and
        // waits for `active == 0`; a worker increments `active` before it reads `job`.
        let f: *const (dyn Fn(usize) + Sync) = unsafe { std::mem::transmute(f) };
        let job = Job {
            f,
            n,
            next: AtomicUsize::new(0),
            done: AtomicUsize::new(0),
            panicked: AtomicBool::new(false),
        };
        self.job.store(&job as *const Job as *mut Job, SeqCst);
        self.generation.fetch_add(1, SeqCst);
        if *self.parked.lock().expect("pool lock") > 0 {
            self.wake.notify_all();
        }
        job.drain();
        while job.done.load(SeqCst) < n {
            std::hint::spin_loop();
        }
        self.job.store(std::ptr::null_mut(), SeqCst);
        while self.active.load(SeqCst) > 0 {
            std::hint::spin_loop();
        }
        assert!(
            !job.panicked.load(SeqCst),
            "a parallel kernel task panicked"
        );
    }
}

/// Run `f(0..n)` on the calling thread and the pool's workers (as many threads as rayon's
/// pool has). Tasks should be of similar, small size.
pub fn run(n: usize, f: &(dyn Fn(usize) + Sync)) {
    let p = pool();
    if p.workers == 0 || n <= 1 {
        (0..n).for_each(f);
        return;
    }
    p.run(n, f);
}

/// `f(i, piece)` for each `chunk`-long piece of `out` (the last may be shorter), in parallel.
pub fn for_each_chunk<T: Send>(out: &mut [T], chunk: usize, f: &(dyn Fn(usize, &mut [T]) + Sync)) {
    let pieces: Vec<Mutex<&mut [T]>> = out.chunks_mut(chunk).map(Mutex::new).collect();
    run(pieces.len(), &|i| {
        f(i, &mut pieces[i].lock().expect("one task per piece"));
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_task_runs_once_across_many_calls_and_callers() {
        let handles: Vec<_> = (0..3)
            .map(|c| {
                std::thread::spawn(move || {
                    for round in 0..200 {
                        let n = 1 + (round * 7 + c) % 37;
                        let hits: Vec<AtomicUsize> = (0..n).map(|_| AtomicUsize::new(0)).collect();
                        run(n, &|t| {
                            hits[t].fetch_add(1, SeqCst);
                        });
                        assert!(hits.iter().all(|h| h.load(SeqCst) == 1), "round {round}");
                        if round % 50 == 0 {
                            // Let the workers park, so that waking them is exercised too.
                            std::thread::sleep(Duration::from_millis(2));
                        }
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
    }

    #[test]
    fn a_panicking_task_fails_the_call_instead_of_hanging_it() {
        let r = std::panic::catch_unwind(|| {
            run(16, &|t| {
                if t == 11 {
                    panic!("task {t}");
                }
            })
        });
        assert!(r.is_err());
        // The pool still works afterwards.
        let hits = AtomicUsize::new(0);
        run(16, &|_| {
            hits.fetch_add(1, SeqCst);
        });
        assert_eq!(hits.load(SeqCst), 16);
    }
}

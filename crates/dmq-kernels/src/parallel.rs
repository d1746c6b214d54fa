//! Splitting a row-major `[M, N]` output over threads (`std::thread::scope`).
//!
//! The output is cut into tasks: bands of columns when there are enough of them (each
//! weight panel is then read by one thread only, and the GEMM driver streams the
//! activations past each panel anyway), else bands of rows. There are up to
//! [`TASKS_PER_THREAD`] tasks per thread, taken from a shared counter, so a thread that is
//! slowed down (the CPU is shared) does fewer of them. Row bands write their slice of the
//! output directly; column bands write a private buffer that is copied into place after
//! the join. Results never depend on the split: every output element is computed by the
//! same sequence of operations.

use std::ops::Range;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

/// Tasks per thread (dynamic load balancing on a shared CPU).
const TASKS_PER_THREAD: usize = 4;

/// A window of a row-major output: element `(m, n)` lives at `(m − row0)·ld + (n − col0)`.
pub(crate) struct OutView<'a, T> {
    data: &'a mut [T],
    row0: usize,
    col0: usize,
    ld: usize,
}

impl<T> OutView<'_, T> {
    /// The element at absolute row `m`, column `n`.
    #[inline]
    pub(crate) fn at(&mut self, m: usize, n: usize) -> &mut T {
        &mut self.data[(m - self.row0) * self.ld + (n - self.col0)]
    }

    /// The `len` elements of absolute row `m` from column `n0` on.
    #[inline]
    pub(crate) fn row_mut(&mut self, m: usize, n0: usize, len: usize) -> &mut [T] {
        let start = (m - self.row0) * self.ld + (n0 - self.col0);
        &mut self.data[start..start + len]
    }
}

/// A part's job: fill rows × cols of the view.
pub(crate) type PartFn<'f, T> = dyn Fn(Range<usize>, Range<usize>, &mut OutView<'_, T>) + Sync + 'f;

/// Runs `f` over a partition of the `[m, n]` output (row bands aligned to `m_align`, or
/// column bands aligned to `n_align`) on at most `threads` threads and returns the output.
pub(crate) fn for_each_part<T: Copy + Default + Send>(
    m: usize,
    n: usize,
    threads: usize,
    m_align: usize,
    n_align: usize,
    f: &PartFn<'_, T>,
) -> Vec<T> {
    let mut out = vec![T::default(); m * n];
    if m == 0 || n == 0 {
        return out;
    }
    let threads = threads.max(1);
    let m_units = m.div_ceil(m_align);
    let n_units = n.div_ceil(n_align);
    if threads == 1 || (m_units < 2 && n_units < 2) {
        let mut view = OutView {
            data: &mut out,
            row0: 0,
            col0: 0,
            ld: n,
        };
        f(0..m, 0..n, &mut view);
        return out;
    }
    let next = AtomicUsize::new(0);
    if n_units >= 2 * threads || n_units >= m_units {
        let tasks = n_units.min(TASKS_PER_THREAD * threads);
        let band = n_units.div_ceil(tasks) * n_align;
        let bands: Vec<Range<usize>> = (0..n).step_by(band).map(|c| c..(c + band).min(n)).collect();
        let parts: Vec<Vec<(Range<usize>, Vec<T>)>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads.min(bands.len()))
                .map(|_| {
                    s.spawn(|| {
                        let mut done = Vec::new();
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(cols) = bands.get(i) else { break };
                            let width = cols.len();
                            let mut local = vec![T::default(); m * width];
                            let mut view = OutView {
                                data: &mut local,
                                row0: 0,
                                col0: cols.start,
                                ld: width,
                            };
                            f(0..m, cols.clone(), &mut view);
                            done.push((cols.clone(), local));
                        }
                        done
                    })
                })
                .collect();
            handles.into_iter().map(join).collect()
        });
        for (cols, local) in parts.into_iter().flatten() {
            let width = cols.len();
            for r in 0..m {
                out[r * n + cols.start..r * n + cols.end]
                    .copy_from_slice(&local[r * width..(r + 1) * width]);
            }
        }
    } else {
        let tasks = m_units.min(TASKS_PER_THREAD * threads);
        let band = m_units.div_ceil(tasks) * m_align;
        let slots: Vec<Mutex<Option<&mut [T]>>> = out
            .chunks_mut(band * n)
            .map(|c| Mutex::new(Some(c)))
            .collect();
        std::thread::scope(|s| {
            let handles: Vec<_> = (0..threads.min(slots.len()))
                .map(|_| {
                    s.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(slot) = slots.get(i) else { break };
                            let taken = slot.lock().map(|mut g| g.take()).unwrap_or(None);
                            let Some(chunk) = taken else { continue };
                            let r0 = i * band;
                            let r1 = (r0 + band).min(m);
                            let mut view = OutView {
                                data: chunk,
                                row0: r0,
                                col0: 0,
                                ld: n,
                            };
                            f(r0..r1, 0..n, &mut view);
                        }
                    })
                })
                .collect();
            handles.into_iter().for_each(join);
        });
    }
    out
}

/// Joins a scoped thread, re-raising its panic (an internal bug, never user input).
fn join<R>(h: std::thread::ScopedJoinHandle<'_, R>) -> R {
    match h.join() {
        Ok(r) => r,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Threads worth using for `macs` multiply-adds: one per `min_macs`, at most `max`.
pub(crate) fn threads_for(macs: usize, min_macs: usize, max: usize) -> usize {
    (macs / min_macs.max(1)).clamp(1, max.max(1))
}

/// The number of hardware threads (1 if unknown), queried once: on Linux,
/// `available_parallelism` reads cgroup files, which costs tens of microseconds per call.
pub fn available_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *THREADS.get_or_init(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    })
}

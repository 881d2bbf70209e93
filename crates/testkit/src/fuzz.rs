//! A fixed-budget mutation fuzzer for the parsers of outside input, run from `cargo test` on
//! stable Rust.
//!
//! Each target is a function from bytes to "a value or an error". [`Fuzz::run`] feeds it,
//! in order: every file of its regression corpus (`tests/fixtures/fuzz/<target>/`, the
//! inputs that once failed, kept so they never fail again), its seeds (valid inputs of the
//! format), then `TESSERA_FUZZ_INPUTS` (default 2000) mutations of the seeds, drawn from a
//! generator seeded by `TESSERA_FUZZ_SEED` (default fixed, so a run is repeatable). Each
//! input must return within [`Fuzz::max_time`] without panicking and without allocating more
//! than [`Fuzz::max_memory`] at once; a failing input is written to
//! `target/fuzz-failures/<target>/<hash>` (copy it into the corpus once fixed) and the test
//! fails listing them all.
//!
//! Why not cargo-fuzz or AFL: both need a nightly compiler or LLVM plugins and a second
//! instrumented build of every dependency; this runs in the build `cargo test` already has.
//! It is not coverage-guided: the mutators (bit flips, interesting integers, cut, repeat,
//! splice, dictionary tokens, numbers swapped for extreme ones) work from seeds that already
//! reach deep into each format.
//!
//! Memory is measured by [`CountingAlloc`], which the fuzz test binary installs as its global
//! allocator; a single allocation over the limit is refused outright (the process then aborts
//! with "memory allocation of N bytes failed", and the input is left in
//! `target/fuzz-failures/<target>/in-flight`), so a length field claiming 4 GiB cannot take
//! the machine down with it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::hash_map::DefaultHasher;
use std::hash::{Hash, Hasher};
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// Counts the bytes the process holds and the most it held since the last reset; refuses
/// any single allocation above the armed cap. Install it in the fuzz test binary:
/// `#[global_allocator] static ALLOC: CountingAlloc = CountingAlloc;`.
pub struct CountingAlloc;

static HELD: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);
/// 0: no cap. Set only while a fuzz input runs.
static CAP: AtomicUsize = AtomicUsize::new(0);
static INSTALLED: AtomicBool = AtomicBool::new(false);

impl CountingAlloc {
    fn grew(by: usize) {
        let now = HELD.fetch_add(by, Ordering::Relaxed) + by;
        PEAK.fetch_max(now, Ordering::Relaxed);
    }

    fn refused(size: usize) -> bool {
        let cap = CAP.load(Ordering::Relaxed);
        cap != 0 && size > cap
    }
}

// SAFETY: every call is forwarded to the system allocator with the same layout; the
// counters are plain atomics and never allocate.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        INSTALLED.store(true, Ordering::Relaxed);
        if Self::refused(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if Self::refused(layout.size()) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.alloc_zeroed(layout) };
        if !p.is_null() {
            Self::grew(layout.size());
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        HELD.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() && Self::refused(new_size) {
            return std::ptr::null_mut();
        }
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                Self::grew(new_size - layout.size());
            } else {
                HELD.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

/// Fuzz targets share the process's allocator counters, so they run one at a time.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());
/// Failing inputs saved (and listed) per run.
const MAX_FAILURES_SAVED: usize = 20;
/// Where the last caught panic happened (`file:line`), set by the run's panic hook.
static PANICKED_AT: Mutex<String> = Mutex::new(String::new());

/// One fuzz target: its name (the corpus folder), seeds, dictionary and limits. The target
/// function returns whether the input was accepted (parsed to a value rather than refused
/// with an error): every seed must be, or the target is not reaching what it should test.
pub struct Fuzz {
    name: String,
    /// Valid inputs: each must be accepted.
    seeds: Vec<Vec<u8>>,
    /// Inputs the target must refuse cleanly (hostile or damaged files): mutated like the
    /// seeds, since their neighbourhood is where parsers break.
    bad_seeds: Vec<Vec<u8>>,
    dictionary: Vec<Vec<u8>>,
    /// The longest one input may take.
    pub max_time: Duration,
    /// The most bytes one input may hold at once, above what the process held before it.
    pub max_memory: usize,
    /// Mutations to try (after the corpus and the seeds).
    pub inputs: usize,
    /// Mutated inputs are cut to this length.
    pub max_len: usize,
}

/// What a run tried and found; [`Fuzz::run`] has already failed the test if `failures`
/// is not empty.
#[derive(Debug)]
pub struct Report {
    pub inputs: usize,
    /// Inputs the target accepted (the rest it refused with an error).
    pub accepted: usize,
    pub corpus: usize,
    pub failures: Vec<String>,
    /// Failures past the first [`MAX_FAILURES_SAVED`], counted only.
    pub failures_not_saved: usize,
    pub slowest: Duration,
    pub peak_bytes: usize,
}

impl Fuzz {
    /// A target named `name` (letters, digits, `-`, `_`), fed mutations of `seeds`.
    pub fn new(name: &str, seeds: Vec<Vec<u8>>) -> Self {
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'),
            "fuzz target name {name:?}"
        );
        assert!(!seeds.is_empty(), "fuzz target {name} has no seeds");
        let inputs = std::env::var("TESSERA_FUZZ_INPUTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(2000);
        Self {
            name: name.to_owned(),
            max_len: seeds.iter().map(Vec::len).max().unwrap_or(0) * 2 + 64,
            seeds,
            bad_seeds: Vec::new(),
            dictionary: Vec::new(),
            max_time: Duration::from_secs(1),
            max_memory: 256 << 20,
            inputs,
        }
    }

    /// Inputs to mutate that are refused as they are (see [`Fuzz::bad_seeds`]).
    pub fn bad_seeds(mut self, inputs: Vec<Vec<u8>>) -> Self {
        self.max_len = self
            .max_len
            .max(inputs.iter().map(Vec::len).max().unwrap_or(0) * 2 + 64);
        self.bad_seeds = inputs;
        self
    }

    /// Tokens of the format that random bytes rarely spell (`"`, `-Infinity`, an opcode).
    pub fn dictionary<T: AsRef<[u8]>>(mut self, tokens: &[T]) -> Self {
        self.dictionary = tokens.iter().map(|t| t.as_ref().to_vec()).collect();
        self
    }

    /// Scales the number of mutations (for targets that are slow per input).
    pub fn inputs_scaled(mut self, factor: f64) -> Self {
        self.inputs = ((self.inputs as f64) * factor).ceil() as usize;
        self
    }

    pub fn max_memory(mut self, bytes: usize) -> Self {
        self.max_memory = bytes;
        self
    }

    pub fn max_time(mut self, limit: Duration) -> Self {
        self.max_time = limit;
        self
    }

    /// Feeds `target` the corpus, the seeds and the mutations, then prints one line of
    /// figures (`fuzz NAME: ...`, which `scripts/chaos_check.sh` collects) and fails the test
    /// if any input failed.
    pub fn run(self, target: impl Fn(&[u8]) -> bool) -> Report {
        let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
        let corpus = self.corpus();
        let mut rng = StdRng::seed_from_u64(fuzz_seed() ^ hash(self.name.as_bytes()));
        let mut report = Report {
            inputs: 0,
            accepted: 0,
            corpus: corpus.len(),
            failures: Vec::new(),
            failures_not_saved: 0,
            slowest: Duration::ZERO,
            peak_bytes: 0,
        };
        let in_flight = self.failure_dir().join("in-flight");
        // Thousands of caught panics would each print a backtrace note; the hook keeps
        // where each happened for the report instead, and the usual hook is back before
        // the verdict.
        let usual_hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(|info| {
            let at = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            *PANICKED_AT.lock().unwrap_or_else(|e| e.into_inner()) = at;
        }));
        let started = Instant::now();
        let mutated = (0..self.inputs).map(|_| self.mutate(&mut rng));
        let seeds = self.seeds.iter().cloned().map(|s| (true, s));
        let bad_seeds = self.bad_seeds.iter().cloned().map(|s| (false, s));
        let all = corpus
            .into_iter()
            .map(|c| (false, c))
            .chain(seeds)
            .chain(bad_seeds)
            .chain(mutated.map(|m| (false, m)));
        for (is_seed, input) in all {
            report.inputs += 1;
            // Left behind only if the process dies on this input (an abort, a refused
            // allocation, a hang killed from outside).
            let _ = std::fs::create_dir_all(self.failure_dir());
            let _ = std::fs::write(&in_flight, &input);
            let outcome = self.one(&target, &input, &mut report);
            let problem = match outcome {
                Err(problem) => Some(problem),
                Ok(false) if is_seed => {
                    Some("a seed was refused: the target does not reach what it should test".into())
                }
                Ok(accepted) => {
                    report.accepted += usize::from(accepted);
                    None
                }
            };
            if let Some(problem) = problem {
                // The first few are saved and listed; a target failing everywhere says so
                // in its count without filling the disk.
                if report.failures.len() < MAX_FAILURES_SAVED {
                    let path = self.failure_dir().join(format!("{:016x}", hash(&input)));
                    let _ = std::fs::write(&path, &input);
                    report
                        .failures
                        .push(format!("{problem} (input saved as {})", path.display()));
                } else {
                    report.failures_not_saved += 1;
                }
            }
        }
        let _ = std::fs::remove_file(&in_flight);
        std::panic::set_hook(usual_hook);
        println!(
            "fuzz {}: {} inputs ({} corpus, {} seeds, {} bad seeds; {} accepted), {} failures, slowest {:.1} ms, peak {:.1} MiB, {:.1} s",
            self.name,
            report.inputs,
            report.corpus,
            self.seeds.len(),
            self.bad_seeds.len(),
            report.accepted,
            report.failures.len() + report.failures_not_saved,
            report.slowest.as_secs_f64() * 1e3,
            report.peak_bytes as f64 / (1 << 20) as f64,
            started.elapsed().as_secs_f64(),
        );
        assert!(
            report.failures.is_empty(),
            "fuzz target {} failed on {} input(s):\n{}",
            self.name,
            report.failures.len() + report.failures_not_saved,
            report.failures.join("\n")
        );
        report
    }

    /// Runs one input: whether the target accepted it, or the problem if it failed.
    fn one(
        &self,
        target: &impl Fn(&[u8]) -> bool,
        input: &[u8],
        report: &mut Report,
    ) -> Result<bool, String> {
        let before = HELD.load(Ordering::Relaxed);
        PEAK.store(before, Ordering::Relaxed);
        CAP.store(self.max_memory, Ordering::Relaxed);
        let start = Instant::now();
        let outcome = catch_unwind(AssertUnwindSafe(|| target(input)));
        let took = start.elapsed();
        CAP.store(0, Ordering::Relaxed);
        let peak = PEAK.load(Ordering::Relaxed).saturating_sub(before);
        assert!(
            INSTALLED.load(Ordering::Relaxed),
            "the fuzz test binary must install tessera_testkit::fuzz::CountingAlloc as its \
             #[global_allocator]: without it memory cannot be measured"
        );
        report.slowest = report.slowest.max(took);
        report.peak_bytes = report.peak_bytes.max(peak);
        let accepted = match outcome {
            Ok(accepted) => accepted,
            Err(panic) => {
                let msg = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_default();
                let at =
                    std::mem::take(&mut *PANICKED_AT.lock().unwrap_or_else(|e| e.into_inner()));
                return Err(format!("panicked at {at}: {msg}"));
            }
        };
        if took > self.max_time {
            return Err(format!(
                "took {:.0} ms (limit {:.0} ms)",
                took.as_secs_f64() * 1e3,
                self.max_time.as_secs_f64() * 1e3
            ));
        }
        if peak > self.max_memory {
            return Err(format!(
                "held {} MiB at once (limit {} MiB)",
                peak >> 20,
                self.max_memory >> 20
            ));
        }
        Ok(accepted)
    }

    fn failure_dir(&self) -> PathBuf {
        let target = std::env::var_os("CARGO_TARGET_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                // The workspace's target folder: testkit is at crates/testkit.
                PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target")
            });
        let target = target.canonicalize().unwrap_or(target);
        target.join("fuzz-failures").join(&self.name)
    }

    /// `tests/fixtures/fuzz/<name>/*`, sorted; none yet is an empty corpus.
    fn corpus(&self) -> Vec<Vec<u8>> {
        let dir = crate::fixtures_dir().join("fuzz").join(&self.name);
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return Vec::new();
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.is_file())
            .collect();
        paths.sort();
        paths
            .iter()
            .map(|p| std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
            .collect()
    }

    /// A seed with one to eight mutations stacked on it.
    fn mutate(&self, rng: &mut StdRng) -> Vec<u8> {
        let pick_from = rng.random_range(0..self.seeds.len() + self.bad_seeds.len());
        let mut data = match pick_from.checked_sub(self.seeds.len()) {
            Some(bad) => self.bad_seeds[bad].clone(),
            None => self.seeds[pick_from].clone(),
        };
        for _ in 0..rng.random_range(1..=8) {
            self.mutate_once(rng, &mut data);
        }
        data.truncate(self.max_len);
        data
    }

    fn mutate_once(&self, rng: &mut StdRng, data: &mut Vec<u8>) {
        if data.is_empty() {
            data.push(rng.random());
            return;
        }
        let at = rng.random_range(0..data.len());
        match rng.random_range(0..10) {
            0 => data[at] ^= 1 << rng.random_range(0..8),
            1 => data[at] = *pick(rng, &[0u8, 1, 0x7f, 0x80, 0xff, b'0', b'9', b'"', b'\\']),
            2 => {
                // An interesting integer, little- or big-endian, over 2, 4 or 8 bytes.
                let v: u64 = *pick(
                    rng,
                    &[
                        0,
                        1,
                        0x7f,
                        0xff,
                        0xffff,
                        50_000,
                        0x7fff_ffff,
                        0xffff_ffff,
                        u64::MAX,
                    ],
                );
                let width = *pick(rng, &[2usize, 4, 8]);
                let bytes = if rng.random() {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                let bytes: Vec<u8> = if rng.random() {
                    bytes[..width].to_vec()
                } else {
                    bytes[8 - width..].to_vec()
                };
                let end = (at + width).min(data.len());
                data.splice(at..end, bytes);
            }
            3 => {
                let end = (at + rng.random_range(1..=64)).min(data.len());
                data.drain(at..end);
            }
            4 => {
                // Repeat a short run many times: deep nesting, long lists.
                let end = (at + rng.random_range(1..=16)).min(data.len());
                let run = data[at..end].to_vec();
                let times = *pick(rng, &[2usize, 16, 256, 4096]);
                let repeated: Vec<u8> = run
                    .iter()
                    .copied()
                    .cycle()
                    .take(run.len() * times)
                    .collect();
                data.splice(at..at, repeated);
            }
            5 => data.truncate(at),
            6 => {
                let other = &self.seeds[rng.random_range(0..self.seeds.len())];
                if !other.is_empty() {
                    let from = rng.random_range(0..other.len());
                    let end = (from + rng.random_range(1..=256)).min(other.len());
                    data.splice(at..at, other[from..end].iter().copied());
                }
            }
            7 if !self.dictionary.is_empty() => {
                let token = pick(rng, &self.dictionary).clone();
                if rng.random() {
                    data.splice(at..at, token);
                } else {
                    let end = (at + token.len()).min(data.len());
                    data.splice(at..end, token);
                }
            }
            8 => {
                // Swap a decimal number for an extreme one.
                if let Some((start, end)) = digits_around(data, at) {
                    let huge = pick(rng, &EXTREME_NUMBERS);
                    data.splice(start..end, huge.iter().copied());
                } else {
                    data.insert(at, rng.random());
                }
            }
            _ => {
                let n = rng.random_range(1..=16);
                let bytes: Vec<u8> = (0..n).map(|_| rng.random()).collect();
                data.splice(at..at, bytes);
            }
        }
    }
}

/// Numbers that break parsers: zero, negative, past u32 and u64, past f64, NaN.
const EXTREME_NUMBERS: [&[u8]; 9] = [
    b"0",
    b"-1",
    b"4294967296",
    b"18446744073709551616",
    b"1e308",
    b"1e999",
    b"-0.0",
    b"99999999999999999999999",
    b"NaN",
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// The run of ASCII digits at or after `at` (within 32 bytes), if any.
fn digits_around(data: &[u8], at: usize) -> Option<(usize, usize)> {
    let start = (at..data.len().min(at + 32)).find(|&i| data[i].is_ascii_digit())?;
    let end = (start..data.len())
        .find(|&i| !data[i].is_ascii_digit())
        .unwrap_or(data.len());
    Some((start, end))
}

fn fuzz_seed() -> u64 {
    std::env::var("TESSERA_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0x7e55e7a)
}

fn hash(bytes: &[u8]) -> u64 {
    let mut h = DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_within_the_length_cap_and_vary() {
        let fuzz = Fuzz::new("unit", vec![b"{\"a\": 12, \"b\": [1, 2]}".to_vec()])
            .dictionary(&["-Infinity", "\""]);
        let mut rng = StdRng::seed_from_u64(1);
        let outs: Vec<Vec<u8>> = (0..500).map(|_| fuzz.mutate(&mut rng)).collect();
        assert!(outs.iter().all(|o| o.len() <= fuzz.max_len));
        let distinct: std::collections::HashSet<_> = outs.iter().collect();
        assert!(
            distinct.len() > 400,
            "only {} distinct mutations",
            distinct.len()
        );
    }

    #[test]
    fn digits_are_found_after_a_position() {
        assert_eq!(digits_around(b"ab 123 c", 0), Some((3, 6)));
        assert_eq!(digits_around(b"abc", 0), None);
    }
}

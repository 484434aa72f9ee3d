//! Reading resident memory (RSS) and the in-line peak.
//!
//! Fast path (Linux): `/proc/self/statm` opened once and read with `pread`; the peak since a
//! reset comes from writing `5` to `/proc/self/clear_refs` (resets VmHWM to the current RSS)
//! and reading `getrusage(RUSAGE_THREAD).ru_maxrss` (the process's peak; see `RUSAGE_WHO`). Portable path: `sysinfo`, no exact peak.
//!
//! `ru_maxrss` never reads below the kernel's `signal->maxrss`, which the reset does not touch:
//! the peak of the image this process replaced at `exec` (for a process spawned with
//! fork/vfork + exec, its parent's: a Jupyter kernel started by a 300 MiB server reads 300 MiB
//! for ever) and of threads that have exited. So `ru_maxrss` is trusted only when it is no
//! higher than the RSS read at either end of the line (the common case: no transient peak);
//! above that, the peak is read from `VmHWM` in `/proc/self/status`, the same counter without
//! the floor (about 10 µs a read instead of 1, paid by lines with a transient peak, and by every
//! line while the process stays below such a floor).
//!
//! Nothing here allocates or panics after construction: these run inside the trace callback.

use std::fs::File;
#[cfg(target_os = "linux")]
use std::fs::OpenOptions;
use std::sync::atomic::{AtomicU64, Ordering};

/// Which way of reading RSS the caller asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReaderKind {
    /// procfs where available, else portable.
    Auto,
    /// `/proc/self/statm` (Linux only); an error elsewhere.
    Procfs,
    /// `sysinfo`, as on non-Linux systems. No exact in-line peak.
    Portable,
}

impl ReaderKind {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Self::Auto),
            "procfs" => Ok(Self::Procfs),
            "portable" => Ok(Self::Portable),
            other => Err(format!(
                "unknown rss reader {other:?}: expected 'auto', 'procfs' or 'portable'"
            )),
        }
    }
}

#[allow(clippy::large_enum_variant)] // one per trace, never moved on the hot path
enum Source {
    #[cfg(target_os = "linux")]
    Procfs { statm: File, page_size: u64 },
    Portable {
        system: sysinfo::System,
        pid: sysinfo::Pid,
    },
}

/// ru_maxrss may exceed the RSS read just before or after by this much without a transient
/// peak (the kernel's RSS counters are batched per CPU).
const FLOOR_SLACK: u64 = 256 << 10;

/// The highest RSS of an interval that started at `start` and ended at `end` (statm), given the
/// kernel's peak mark `peak`. A mark no more than `FLOOR_SLACK` above both ends is within the
/// per-CPU batching of the counter it comes from (a line that keeps 4 MiB read a mark 0.1 MiB
/// above its end, a line that frees one 0.1 MiB above its start): that is not a transient the
/// kernel can resolve, and the interval's high is its higher end. A line's Peak then equals its
/// Increment when it only grew, and is 0 when it only shrank.
#[inline]
fn high_of(peak: Option<u64>, start: u64, end: u64) -> u64 {
    let ends = start.max(end);
    match peak {
        Some(p) if p > ends + FLOOR_SLACK => p,
        Some(_) => ends,
        None => end,
    }
}

/// Whose usage `getrusage` reads. On Linux, `RUSAGE_THREAD` gives the same `ru_maxrss` as
/// `RUSAGE_SELF` (both are the process's `signal->maxrss` raised to the mm's high-water mark; the
/// memory is per process either way) without summing the CPU times of every thread under the
/// signal lock: about 200 ns a call instead of 350 on this machine kind.
#[cfg(target_os = "linux")]
const RUSAGE_WHO: libc::c_int = libc::RUSAGE_THREAD;
#[cfg(all(unix, not(target_os = "linux")))]
const RUSAGE_WHO: libc::c_int = libc::RUSAGE_SELF;

/// The most memory `lift_above_floor` keeps resident in one process.
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
const MAX_BALLAST: usize = 64 << 20;

/// The memory `lift_above_floor` keeps resident in this process (bytes).
static BALLAST: AtomicU64 = AtomicU64::new(0);

/// The memory held resident by `lift_above_floor` so far (bytes): the plugin's own, which it
/// takes out of what a test's setup added and left behind when it was made during the test.
pub fn ballast() -> u64 {
    BALLAST.load(Ordering::Relaxed)
}

/// A reader of the current process's RSS, with an optional exact peak since the last reset.
/// (The statm and status buffers are used on Linux only.)
#[cfg_attr(not(target_os = "linux"), allow(dead_code))]
pub struct RssReader {
    source: Source,
    /// `/proc/self/clear_refs`, open for writing, when the kernel lets us reset the peak.
    clear_refs: Option<File>,
    /// Why there is no exact peak, for the table header.
    pub peak_unavailable: Option<String>,
    /// The process this reader reads (a forked child must not use the parent's fds).
    pub pid: u32,
    buf: [u8; 128],
    /// Set by `high_since_reset` when the kernel's peak mark is above the RSS just read, so
    /// the next interval needs a reset.
    reset_due: bool,
    /// The statm text of the last read, and the resident pages in it: a read that returns the
    /// same text (most lines: RSS moves in pages, not per line) skips the parse.
    last: [u8; 128],
    last_len: usize,
    last_pages: u64,
    /// `/proc/self/status` (for `VmHWM`) and a buffer for it, set up with `clear_refs`.
    status: Option<File>,
    status_buf: Box<[u8]>,
    /// The last RSS read, and the RSS when the peak was last reset (bytes).
    last_rss: u64,
    rss_at_reset: u64,
}

impl RssReader {
    /// Opens the reader. `want_peak`: try to set up the exact in-line peak.
    pub fn open(kind: ReaderKind, want_peak: bool) -> Result<Self, String> {
        let pid = std::process::id();
        let source = match kind {
            ReaderKind::Portable => Self::portable()?,
            ReaderKind::Procfs => Self::procfs()?,
            ReaderKind::Auto => Self::procfs().or_else(|_| Self::portable())?,
        };
        let mut reader = RssReader {
            source,
            clear_refs: None,
            peak_unavailable: None,
            pid,
            buf: [0; 128],
            reset_due: true,
            last: [0; 128],
            last_len: usize::MAX,
            last_pages: 0,
            status: None,
            status_buf: Box::new([]),
            last_rss: 0,
            rss_at_reset: 0,
        };
        if reader.current().is_none() {
            let hint = if cfg!(target_os = "linux") {
                " (is /proc mounted?)"
            } else {
                ""
            };
            return Err(format!(
                "could not read the resident set size of this process{hint}"
            ));
        }
        if !want_peak {
            reader.peak_unavailable = Some("in-line peak turned off".into());
        } else if matches!(reader.source, Source::Portable { .. }) {
            reader.peak_unavailable =
                Some("exact in-line peak needs Linux procfs; Peak falls back to Increment".into());
        } else {
            match open_clear_refs() {
                Ok(f) => {
                    reader.clear_refs = Some(f);
                    reader.open_status();
                    if !reader.reset_peak_keeping_mark() || reader.peak_since_reset().is_none() {
                        reader.clear_refs = None;
                        reader.peak_unavailable = Some(
                            "/proc/self/clear_refs cannot reset the peak here; Peak falls back to Increment"
                                .into(),
                        );
                    } else if !reset_really_works(&mut reader) {
                        reader.clear_refs = None;
                        reader.peak_unavailable = Some(
                            "writing to /proc/self/clear_refs does not reset the peak here (masked?); \
                             Peak falls back to Increment"
                                .into(),
                        );
                    } else {
                        reader.lift_above_floor();
                    }
                }
                Err(why) => {
                    reader.peak_unavailable = Some(format!("{why}; Peak falls back to Increment"));
                }
            }
        }
        Ok(reader)
    }

    /// When `ru_maxrss` is held up by an inherited floor a little above our RSS (an xdist worker
    /// or a tox child is often 2 to 20 MiB below its parent's peak), every line would need the
    /// slow `VmHWM` read. Instead, keep enough touched memory resident, once per process, that
    /// RSS stays above the floor: then `clear_refs` resets the peak to a value above it and the
    /// fast path is exact again. At most `MAX_BALLAST` in all; a larger floor keeps the slow
    /// path. The memory shows in Mem usage (it is RSS of this process), never in Increment or
    /// Peak.
    fn lift_above_floor(&mut self) {
        #[cfg(target_os = "linux")]
        {
            use std::sync::Mutex;
            static HELD: Mutex<usize> = Mutex::new(0);
            self.reset_peak_keeping_mark();
            let (Some(rss), Some(ru)) = (self.current(), self.maxrss()) else {
                return;
            };
            if ru <= rss + FLOOR_SLACK {
                return;
            }
            let Ok(mut held) = HELD.lock() else { return };
            let need = usize::try_from(ru - rss)
                .unwrap_or(usize::MAX)
                .saturating_add(1 << 20);
            if held.saturating_add(need) > MAX_BALLAST {
                return;
            }
            // never unmapped: it must stay resident for the life of the process
            if touched_mapping(need).is_none() {
                return;
            }
            *held += need;
            BALLAST.store(*held as u64, Ordering::Relaxed);
            self.reset_peak();
        }
    }

    /// Opens `/proc/self/status`, for `VmHWM` (see the module docs).
    fn open_status(&mut self) {
        #[cfg(target_os = "linux")]
        if let Ok(f) = File::open("/proc/self/status") {
            self.status = Some(f);
            self.status_buf = vec![0u8; 4096].into_boxed_slice();
        }
    }

    #[cfg(target_os = "linux")]
    fn procfs() -> Result<Source, String> {
        let statm = File::open("/proc/self/statm")
            .map_err(|e| format!("cannot open /proc/self/statm: {e}"))?;
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page_size = if page_size > 0 {
            page_size as u64
        } else {
            4096
        };
        Ok(Source::Procfs { statm, page_size })
    }

    #[cfg(not(target_os = "linux"))]
    fn procfs() -> Result<Source, String> {
        Err("the procfs reader needs Linux".into())
    }

    fn portable() -> Result<Source, String> {
        let pid = sysinfo::get_current_pid().map_err(|e| format!("sysinfo: {e}"))?;
        Ok(Source::Portable {
            system: sysinfo::System::new().map_err(|e| format!("sysinfo: {e}"))?,
            pid,
        })
    }

    /// The name of the source, for the table header.
    pub fn describe(&self) -> &'static str {
        match self.source {
            #[cfg(target_os = "linux")]
            Source::Procfs { .. } => "procfs",
            Source::Portable { .. } => "portable",
        }
    }

    /// Whether `reset_peak` + `peak_since_reset` give the exact peak.
    pub fn exact_peak(&self) -> bool {
        self.clear_refs.is_some()
    }

    /// Current RSS in bytes, or `None` when the read failed.
    #[inline]
    pub fn current(&mut self) -> Option<u64> {
        match &mut self.source {
            #[cfg(target_os = "linux")]
            Source::Procfs { statm, page_size } => {
                use std::os::unix::io::AsRawFd;
                // SAFETY: the fd stays open as long as `statm`; the buffer is ours and
                // `pread` writes at most `len` bytes into it.
                let n = unsafe {
                    libc::pread(
                        statm.as_raw_fd(),
                        self.buf.as_mut_ptr().cast(),
                        self.buf.len(),
                        0,
                    )
                };
                let n = usize::try_from(n).ok()?;
                let text = self.buf.get(..n)?;
                if n != self.last_len || text != &self.last[..n] {
                    self.last_pages = parse_statm_resident(text)?;
                    self.last[..n].copy_from_slice(text);
                    self.last_len = n;
                }
                let rss = self.last_pages * *page_size;
                self.last_rss = rss;
                Some(rss)
            }
            Source::Portable { system, pid } => {
                use sysinfo::{ProcessRefreshKind, ProcessesToUpdate};
                system.refresh_processes_specifics(
                    ProcessesToUpdate::Some(&[*pid]),
                    false,
                    ProcessRefreshKind::nothing().with_memory(),
                );
                system.process(*pid).map(|p| p.memory())
            }
        }
    }

    /// `reset_peak`, first keeping the mark it erases in `MARKS_BEFORE_RESETS`: every reset
    /// outside a traced line (the probe at open, the start of each trace) goes through here, so
    /// that `process_peak` knows the process's real peak. (A reset inside a trace erases a mark
    /// the trace has just read into its table.) One `getrusage`, and a `/proc/self/status` read
    /// only when `ru_maxrss` is above the marks kept.
    pub fn reset_peak_keeping_mark(&mut self) -> bool {
        // ru_maxrss (1 µs) is never below VmHWM: when it is not above the marks kept, neither
        // is VmHWM, and the status read (10 µs) is skipped
        let kept = MARKS_BEFORE_RESETS.load(Ordering::Relaxed);
        if self.clear_refs.is_some() && self.maxrss().is_none_or(|ru| ru > kept) {
            if let Some(hwm) = self.vm_hwm().or_else(status_vm_hwm) {
                MARKS_BEFORE_RESETS.fetch_max(hwm, Ordering::Relaxed);
            }
        }
        self.reset_peak()
    }

    /// Resets the kernel's peak RSS (VmHWM) to the current RSS. False when it failed.
    #[inline]
    pub fn reset_peak(&mut self) -> bool {
        self.reset_due = false;
        #[cfg(target_os = "linux")]
        if let Some(f) = &self.clear_refs {
            use std::os::unix::io::AsRawFd;
            self.rss_at_reset = self.last_rss;
            // SAFETY: the fd stays open as long as `f`; one byte from a static buffer.
            return unsafe { libc::pwrite(f.as_raw_fd(), b"5".as_ptr().cast(), 1, 0) } == 1;
        }
        false
    }

    /// The highest RSS since the last reset, given `rss`, the RSS just read (the result is at
    /// least `rss`). Notes whether the next interval needs a reset: when the kernel's mark is
    /// not above `rss`, it cannot raise any later reading above what that line already counts
    /// (a line's peak starts at the RSS where it started), so the write to `clear_refs` is
    /// skipped. ru_maxrss comes from the kernel's approximate per-CPU counters and can be a
    /// few pages below statm's resident count, hence `<=`, not `==`.
    #[inline]
    pub fn high_since_reset(&mut self, rss: u64) -> u64 {
        let peak = self.peak_since_reset();
        self.reset_due = !matches!(peak, Some(p) if p <= rss);
        high_of(peak, self.rss_at_reset, rss)
    }

    /// Resets the peak if the last `high_since_reset` found the mark above the RSS; a skipped
    /// reset still starts a new interval at the current RSS, as a real one would.
    #[inline]
    pub fn reset_peak_if_due(&mut self) {
        if self.reset_due {
            self.reset_peak();
        } else {
            self.rss_at_reset = self.last_rss;
        }
    }

    /// Peak RSS in bytes since the last `reset_peak`: getrusage's ru_maxrss when it is no
    /// higher than the RSS at the ends of the line, else `VmHWM` (see the module docs).
    #[inline]
    pub fn peak_since_reset(&mut self) -> Option<u64> {
        let ru = self.maxrss()?;
        if ru <= self.rss_at_reset.max(self.last_rss) + FLOOR_SLACK {
            return Some(ru);
        }
        // A transient peak, or ru_maxrss at a floor from outside this image: VmHWM tells.
        Some(self.vm_hwm().unwrap_or(ru))
    }

    /// `VmHWM` from `/proc/self/status`, in bytes.
    fn vm_hwm(&mut self) -> Option<u64> {
        #[cfg(target_os = "linux")]
        if let Some(f) = &self.status {
            use std::os::unix::fs::FileExt;
            let n = f.read_at(&mut self.status_buf, 0).ok()?;
            return parse_status_kib(&self.status_buf[..n], b"VmHWM:").map(|kib| kib * 1024);
        }
        None
    }

    /// getrusage's ru_maxrss in bytes (KiB on Linux).
    #[inline]
    fn maxrss(&self) -> Option<u64> {
        #[cfg(unix)]
        {
            let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
            // SAFETY: getrusage writes a full rusage into the pointer on success.
            let rc = unsafe { libc::getrusage(RUSAGE_WHO, usage.as_mut_ptr()) };
            if rc != 0 {
                return None;
            }
            // SAFETY: rc == 0, so the struct was filled in.
            let maxrss = unsafe { usage.assume_init() }.ru_maxrss;
            u64::try_from(maxrss).ok().map(|kib| kib * 1024)
        }
        #[cfg(not(unix))]
        {
            None
        }
    }
}

/// A private anonymous mapping of `len` bytes, every page written (so resident).
#[cfg(target_os = "linux")]
fn touched_mapping(len: usize) -> Option<*mut libc::c_void> {
    // SAFETY: a fresh private anonymous mapping, written only within its length.
    unsafe {
        let p = libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        );
        if p == libc::MAP_FAILED {
            return None;
        }
        std::ptr::write_bytes(p.cast::<u8>(), 1, len);
        Some(p)
    }
}

/// Whether a write to clear_refs really resets the peak (a container may mask the file with
/// one that accepts writes and does nothing). Checked once per process: touch and free 4 MiB,
/// reset, and see the peak come back down.
#[cfg(target_os = "linux")]
fn reset_really_works(reader: &mut RssReader) -> bool {
    use std::sync::OnceLock;
    static WORKS: OnceLock<bool> = OnceLock::new();
    *WORKS.get_or_init(|| {
        const PROBE: usize = 4 << 20;
        // a few tries: another thread allocating between the reset and the read spoils one
        (0..3).any(|_| {
            let Some(p) = touched_mapping(PROBE) else {
                return true; // cannot check: trust the write
            };
            // SAFETY: `p` is a mapping of PROBE bytes made by `touched_mapping`.
            unsafe { libc::munmap(p, PROBE) };
            let reset = reader.reset_peak();
            let peak = reader.vm_hwm().or_else(|| reader.peak_since_reset());
            match (reader.current(), peak) {
                (Some(rss), Some(peak)) => reset && peak < rss + (PROBE as u64) / 2,
                _ => false,
            }
        })
    })
}

#[cfg(not(target_os = "linux"))]
fn reset_really_works(_reader: &mut RssReader) -> bool {
    false
}

#[cfg(target_os = "linux")]
fn open_clear_refs() -> Result<File, String> {
    OpenOptions::new()
        .write(true)
        .open("/proc/self/clear_refs")
        .map_err(|e| format!("/proc/self/clear_refs is not writable ({e})"))
}

#[cfg(not(target_os = "linux"))]
fn open_clear_refs() -> Result<File, String> {
    Err("no /proc/self/clear_refs on this platform".into())
}

/// The highest mark `reset_peak_keeping_mark` erased (bytes; 0 before any).
static MARKS_BEFORE_RESETS: AtomicU64 = AtomicU64::new(0);

/// Records a high seen by a trace (its in-line peaks were erased by later resets).
pub fn note_high(bytes: u64) {
    MARKS_BEFORE_RESETS.fetch_max(bytes, Ordering::Relaxed);
}

/// `VmHWM` of this process now, read afresh (bytes).
fn status_vm_hwm() -> Option<u64> {
    let buf = std::fs::read("/proc/self/status").ok()?;
    parse_status_kib(&buf, b"VmHWM:").map(|kib| kib * 1024)
}

/// The process's real peak RSS so far (bytes): its `VmHWM` now or the highest mark a reset
/// outside a traced line erased, whichever is higher. (Highs inside traced lines are in the
/// tables: with them, the run's peak.) `None` without procfs.
pub fn process_peak() -> Option<u64> {
    let now = status_vm_hwm()?;
    Some(now.max(MARKS_BEFORE_RESETS.load(Ordering::Relaxed)))
}

/// The value (KiB) of the `/proc/self/status` field starting with `key` (e.g. `b"VmHWM:"`).
pub fn parse_status_kib(buf: &[u8], key: &[u8]) -> Option<u64> {
    let line = buf.split(|&b| b == b'\n').find(|l| l.starts_with(key))?;
    let digits = line[key.len()..]
        .iter()
        .skip_while(|b| b.is_ascii_whitespace())
        .take_while(|b| b.is_ascii_digit());
    let mut value: u64 = 0;
    let mut any = false;
    for &b in digits {
        value = value.checked_mul(10)?.checked_add(u64::from(b - b'0'))?;
        any = true;
    }
    any.then_some(value)
}

/// The second field of `/proc/self/statm`: resident pages.
#[inline]
pub fn parse_statm_resident(buf: &[u8]) -> Option<u64> {
    let start = buf.iter().position(|&b| b == b' ')? + 1;
    let field = buf.get(start..)?;
    let len = field
        .iter()
        .position(|&b| b == b' ' || b == b'\n')
        .unwrap_or(field.len());
    // 1 to 19 digits: never overflows a u64, so no checked arithmetic per digit.
    if !(1..=19).contains(&len) {
        return None;
    }
    let mut value: u64 = 0;
    for &b in &field[..len] {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            return None;
        }
        value = value * 10 + u64::from(digit);
    }
    Some(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn statm_parsing() {
        assert_eq!(
            parse_statm_resident(b"5000 1234 300 1 0 900 0\n"),
            Some(1234)
        );
        assert_eq!(parse_statm_resident(b"5000"), None);
        assert_eq!(parse_statm_resident(b"5000 12a4 3"), None);
        assert_eq!(parse_statm_resident(b""), None);
        assert_eq!(parse_statm_resident(b"1  2"), None);
        assert_eq!(parse_statm_resident(b"1 2"), Some(2));
        assert_eq!(parse_statm_resident(b"1 2\n"), Some(2));
        assert_eq!(parse_statm_resident(b"1 99999999999999999999 3"), None);
    }

    #[test]
    fn status_parsing() {
        let status =
            b"Name:\tpython3\nVmPeak:\t  30000 kB\nVmHWM:\t   13584 kB\nVmRSS:\t 13584 kB\n";
        assert_eq!(parse_status_kib(status, b"VmHWM:"), Some(13584));
        assert_eq!(parse_status_kib(status, b"VmRSS:"), Some(13584));
        assert_eq!(parse_status_kib(status, b"VmSwap:"), None);
        assert_eq!(parse_status_kib(b"VmHWM:\t kB\n", b"VmHWM:"), None);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn peak_after_a_reset_is_near_the_current_rss() {
        // Fails when ru_maxrss is floored by the parent's peak (cargo is bigger than this
        // test binary) and the floor is not detected.
        let mut r = RssReader::open(ReaderKind::Procfs, true).unwrap();
        if !r.exact_peak() {
            return;
        }
        for _ in 0..3 {
            assert!(r.reset_peak());
            let now = r.current().unwrap();
            let peak = r.peak_since_reset().unwrap();
            assert!(peak < now + (4 << 20), "peak {peak} vs rss {now}");
        }
    }

    #[test]
    fn a_mark_within_the_counters_batching_is_not_a_peak() {
        const M: u64 = 1 << 20;
        // kept 4 MiB, the mark 100 KiB above the end: the end
        assert_eq!(
            high_of(Some(104 * M + 100 * 1024), 100 * M, 104 * M),
            104 * M
        );
        // freed 4 MiB, the mark a little above the start: the start
        assert_eq!(high_of(Some(104 * M + 4096), 104 * M, 100 * M), 104 * M);
        // the mark below both ends (approximate counters): the higher end
        assert_eq!(high_of(Some(99 * M), 100 * M, 101 * M), 101 * M);
        // a transient of 1 MiB above the end: the mark
        assert_eq!(high_of(Some(105 * M), 100 * M, 104 * M), 105 * M);
        // just past the slack: the mark
        let just_past = 104 * M + FLOOR_SLACK + 1;
        assert_eq!(high_of(Some(just_past), 100 * M, 104 * M), just_past);
        // no mark (no exact peak): the end
        assert_eq!(high_of(None, 100 * M, 98 * M), 98 * M);
    }

    #[test]
    fn reader_kinds() {
        assert_eq!(ReaderKind::parse("auto"), Ok(ReaderKind::Auto));
        assert!(ReaderKind::parse("psutil")
            .unwrap_err()
            .contains("portable"));
    }

    #[test]
    fn readers_agree_roughly() {
        let mut fast = RssReader::open(ReaderKind::Auto, true).unwrap();
        let mut slow = RssReader::open(ReaderKind::Portable, true).unwrap();
        assert!(!slow.exact_peak());
        let a = fast.current().unwrap();
        let b = slow.current().unwrap();
        let diff = a.abs_diff(b);
        assert!(diff < 16 << 20, "procfs {a} vs sysinfo {b}");
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn peak_reset_sees_a_transient_allocation() {
        let mut r = RssReader::open(ReaderKind::Procfs, true).unwrap();
        if !r.exact_peak() {
            eprintln!("clear_refs unavailable: {:?}", r.peak_unavailable);
            return;
        }
        assert!(r.reset_peak());
        let before = r.current().unwrap();
        {
            let v = vec![1u8; 64 << 20];
            std::hint::black_box(&v);
        }
        let peak = r.peak_since_reset().unwrap();
        assert!(peak >= before + (60 << 20), "peak {peak} before {before}");
    }
}

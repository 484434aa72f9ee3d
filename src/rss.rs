//! Reading resident memory (RSS) and the in-line peak.
//!
//! Fast path (Linux): `/proc/self/statm` opened once and read with `pread`; the peak since a
//! reset comes from writing `5` to `/proc/self/clear_refs` (resets VmHWM to the current RSS)
//! and reading `getrusage(RUSAGE_SELF).ru_maxrss`. Portable path: `sysinfo`, no exact peak.
//!
//! Nothing here allocates or panics after construction: these run inside the trace callback.

use std::fs::File;
#[cfg(target_os = "linux")]
use std::fs::OpenOptions;

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
    Procfs {
        statm: File,
        page_size: u64,
    },
    Portable {
        system: sysinfo::System,
        pid: sysinfo::Pid,
    },
}

/// A reader of the current process's RSS, with an optional exact peak since the last reset.
pub struct RssReader {
    source: Source,
    /// `/proc/self/clear_refs`, open for writing, when the kernel lets us reset the peak.
    clear_refs: Option<File>,
    /// Why there is no exact peak, for the table header.
    pub peak_unavailable: Option<String>,
    /// The process this reader reads (a forked child must not use the parent's fds).
    pub pid: u32,
    /// Set by `high_since_reset` when the kernel's peak mark is above the RSS just read, so
    /// the next interval needs a reset.
    reset_due: bool,
    buf: [u8; 128],
    /// The statm text of the last read, and the resident pages in it: a read that returns the
    /// same text (most lines: RSS moves in pages, not per line) skips the parse.
    last: [u8; 128],
    last_len: usize,
    last_pages: u64,
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
            reset_due: true,
            buf: [0; 128],
            last: [0; 128],
            last_len: usize::MAX,
            last_pages: 0,
        };
        if reader.current().is_none() {
            return Err("could not read the resident set size of this process".into());
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
                    if !reader.reset_peak() || reader.peak_since_reset().is_none() {
                        reader.clear_refs = None;
                        reader.peak_unavailable = Some(
                            "/proc/self/clear_refs cannot reset the peak here; Peak falls back to Increment"
                                .into(),
                        );
                    }
                }
                Err(why) => {
                    reader.peak_unavailable =
                        Some(format!("{why}; Peak falls back to Increment"));
                }
            }
        }
        Ok(reader)
    }

    #[cfg(target_os = "linux")]
    fn procfs() -> Result<Source, String> {
        let statm = File::open("/proc/self/statm")
            .map_err(|e| format!("cannot open /proc/self/statm: {e}"))?;
        // SAFETY: sysconf has no preconditions.
        let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let page_size = if page_size > 0 { page_size as u64 } else { 4096 };
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
                if n == self.last_len && text == &self.last[..n] {
                    return Some(self.last_pages * *page_size);
                }
                let pages = parse_statm_resident(text)?;
                self.last[..n].copy_from_slice(text);
                self.last_len = n;
                self.last_pages = pages;
                Some(pages * *page_size)
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

    /// Resets the kernel's peak RSS (VmHWM) to the current RSS. False when it failed.
    #[inline]
    pub fn reset_peak(&mut self) -> bool {
        self.reset_due = false;
        #[cfg(target_os = "linux")]
        if let Some(f) = &self.clear_refs {
            use std::os::unix::io::AsRawFd;
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
        peak.map_or(rss, |p| p.max(rss))
    }

    /// Resets the peak if the last `high_since_reset` found the mark above the RSS.
    #[inline]
    pub fn reset_peak_if_due(&mut self) {
        if self.reset_due {
            self.reset_peak();
        }
    }

    /// Peak RSS in bytes since the last `reset_peak` (getrusage's ru_maxrss, in KiB on Linux).
    #[inline]
    pub fn peak_since_reset(&self) -> Option<u64> {
        #[cfg(unix)]
        {
            let mut usage = std::mem::MaybeUninit::<libc::rusage>::uninit();
            // SAFETY: getrusage writes a full rusage into the pointer on success.
            let rc = unsafe { libc::getrusage(libc::RUSAGE_SELF, usage.as_mut_ptr()) };
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
        assert_eq!(parse_statm_resident(b"5000 1234 300 1 0 900 0\n"), Some(1234));
        assert_eq!(parse_statm_resident(b"5000"), None);
        assert_eq!(parse_statm_resident(b"5000 12a4 3"), None);
        assert_eq!(parse_statm_resident(b""), None);
        assert_eq!(parse_statm_resident(b"1  2"), None);
        assert_eq!(parse_statm_resident(b"1 2"), Some(2));
        assert_eq!(parse_statm_resident(b"1 2\n"), Some(2));
        assert_eq!(parse_statm_resident(b"1 99999999999999999999 3"), None);
    }

    #[test]
    fn reader_kinds() {
        assert_eq!(ReaderKind::parse("auto"), Ok(ReaderKind::Auto));
        assert!(ReaderKind::parse("psutil").unwrap_err().contains("portable"));
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

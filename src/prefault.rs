//! A forked child maps again the file-backed pages its parent had mapped.
//!
//! `fork` copies the page-table entries of anonymous memory but not, for most file-backed
//! mappings (code and read-only data of Python, numpy, pandas ...), those of the files: the
//! child faults each page in again the first time it runs that code. A test body run in a fork
//! (`isolate = "fork"`) would then see its RSS grow by every page of code it runs (7 MiB on a
//! one-line pandas test here) and pay a fault per 16 pages. This maps, in the child, the pages
//! of file-backed mappings that are present in the parent (from the parent's
//! `/proc/PID/pagemap`), with `madvise(MADV_POPULATE_READ)`, before the body starts: RSS in the
//! child then starts where the parent's was, and the body's numbers are those it would have
//! had in the parent.

#[cfg(target_os = "linux")]
mod imp {
    use std::fs::File;
    use std::io::{BufRead, BufReader};
    use std::os::unix::fs::FileExt;

    /// `MADV_POPULATE_READ` (Linux 5.14).
    const MADV_POPULATE_READ: libc::c_int = 22;
    const PRESENT: u64 = 1 << 63;

    /// One mapping of `/proc/self/maps`: its range, and whether it is backed by a file.
    fn file_mappings() -> Option<Vec<(usize, usize)>> {
        let maps = File::open("/proc/self/maps").ok()?;
        let mut out = Vec::new();
        for line in BufReader::new(maps).lines() {
            let line = line.ok()?;
            let mut fields = line.split_ascii_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            let _offset = fields.next()?;
            let _dev = fields.next()?;
            let inode = fields.next()?;
            if inode == "0" || !perms.starts_with('r') {
                continue;
            }
            let (start, end) = range.split_once('-')?;
            let start = usize::from_str_radix(start, 16).ok()?;
            let end = usize::from_str_radix(end, 16).ok()?;
            out.push((start, end));
        }
        Some(out)
    }

    /// Pages mapped; `None` when it cannot be done here (no pagemap access, an old kernel).
    pub fn like_parent() -> Option<u64> {
        // SAFETY: no preconditions.
        let ppid = unsafe { libc::getppid() };
        let pagemap = File::open(format!("/proc/{ppid}/pagemap")).ok()?;
        // SAFETY: no preconditions.
        let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) }).ok()?;
        let mut entries = vec![0u8; 8 * 4096];
        let mut mapped = 0u64;
        for (start, end) in file_mappings()? {
            let mut addr = start;
            while addr < end {
                let pages = ((end - addr) / page).min(entries.len() / 8);
                let buf = &mut entries[..pages * 8];
                let n = pagemap.read_at(buf, (addr / page * 8) as u64).ok()?;
                let pages = n / 8;
                if pages == 0 {
                    break;
                }
                let mut run_start: Option<usize> = None;
                for i in 0..=pages {
                    let present = i < pages && {
                        let e = u64::from_le_bytes(buf[i * 8..i * 8 + 8].try_into().ok()?);
                        e & PRESENT != 0
                    };
                    match (present, run_start) {
                        (true, None) => run_start = Some(i),
                        (false, Some(s)) => {
                            let from = addr + s * page;
                            let len = (i - s) * page;
                            // SAFETY: the range lies in a mapping of this process; populating
                            // it only maps its pages, as reading them would.
                            let rc = unsafe {
                                libc::madvise(from as *mut libc::c_void, len, MADV_POPULATE_READ)
                            };
                            if rc != 0 {
                                let err = std::io::Error::last_os_error().raw_os_error();
                                if err == Some(libc::EINVAL) {
                                    return None; // a kernel before 5.14
                                }
                                // EFAULT and the like: a page that went away; go on
                            } else {
                                mapped += (i - s) as u64;
                            }
                            run_start = None;
                        }
                        _ => {}
                    }
                }
                addr += pages * page;
            }
        }
        Some(mapped)
    }
}

/// In a forked child: maps the file-backed pages the parent has mapped; how many, or `None`
/// when that cannot be done here.
pub fn like_parent() -> Option<u64> {
    #[cfg(target_os = "linux")]
    {
        imp::like_parent()
    }
    #[cfg(not(target_os = "linux"))]
    {
        None
    }
}

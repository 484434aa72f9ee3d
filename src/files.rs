//! Every file pytest-memline reads or writes goes through here (the baseline, the JSON and
//! Markdown reports, the HTML report to come), so that one set of rules holds for all:
//!
//! - A path is ours to write only if nothing is there or a regular file is: a directory, a
//!   device, a FIFO or a socket is refused with a message, never replaced or moved. A symlink is
//!   written through (its target is updated, the link stays); a dangling one is refused.
//! - Writes are atomic (a temporary file beside the target, synced, then renamed over it); the
//!   new file keeps the old one's permissions, or gets the user's umask when it is new.
//!   Temporaries left by writers that died (`kill -9`) are removed by the next write.
//! - Reads refuse what is not a regular file (a FIFO would block forever, `/dev/zero` never
//!   ends) and files over a size cap.
//! - A backup never overwrites an earlier one: `NAME.bak`, then `NAME.bak.1`, `NAME.bak.2`...
//! - Writers of one file are serialised by a lock on its directory (no lock file left beside
//!   it); where a directory cannot be locked (NFS), by `NAME.lock`.
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Write};
use std::path::{Path, PathBuf};

/// What `read_capped` reads at most by default: a baseline of 100,000 tests is ~100 MiB.
pub const MAX_READ: u64 = 512 << 20;

/// What kind of thing is at a path that is not a regular file.
pub fn kind_of(meta: &fs::Metadata) -> &'static str {
    let t = meta.file_type();
    if t.is_dir() {
        return "a directory";
    }
    #[cfg(unix)]
    {
        use std::os::unix::fs::FileTypeExt;
        if t.is_char_device() {
            return "a character device";
        }
        if t.is_block_device() {
            return "a block device";
        }
        if t.is_fifo() {
            return "a FIFO (named pipe)";
        }
        if t.is_socket() {
            return "a socket";
        }
    }
    "not a regular file"
}

/// The file to write for `path`: `path` itself when nothing is there or a regular file is, the
/// symlink's final target when it is one; an error naming what is there otherwise.
pub fn write_target(path: &Path) -> Result<PathBuf, String> {
    if path.as_os_str().is_empty() {
        return Err("the path is empty".into());
    }
    let link = match fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(path.to_path_buf()),
        Err(e) => return Err(format!("cannot inspect {}: {e}", path.display())),
    };
    let target = if link.file_type().is_symlink() {
        fs::canonicalize(path).map_err(|_| {
            let to = fs::read_link(path).unwrap_or_default();
            format!(
                "{} is a symlink to {}, which does not exist: refusing to write through it",
                path.display(),
                to.display()
            )
        })?
    } else {
        path.to_path_buf()
    };
    let meta =
        fs::metadata(&target).map_err(|e| format!("cannot inspect {}: {e}", target.display()))?;
    if !meta.is_file() {
        return Err(format!(
            "{} is {}, not a regular file: refusing to write it",
            path.display(),
            kind_of(&meta)
        ));
    }
    Ok(target)
}

/// Reads the regular file at `path` (through symlinks), at most `cap` bytes. `Ok(None)` when
/// nothing is there.
pub fn read_capped(path: &Path, cap: u64) -> Result<Option<Vec<u8>>, String> {
    let meta = match fs::metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("it cannot be read ({e})")),
    };
    if !meta.is_file() {
        return Err(format!("it is {}, not a regular file", kind_of(&meta)));
    }
    if meta.len() > cap {
        return Err(format!(
            "it is {} bytes, over the {} MiB that memline reads",
            meta.len(),
            cap >> 20
        ));
    }
    let file = File::open(path).map_err(|e| format!("it cannot be read ({e})"))?;
    let mut data = Vec::with_capacity(meta.len() as usize);
    file.take(cap + 1)
        .read_to_end(&mut data)
        .map_err(|e| format!("it cannot be read ({e})"))?;
    if data.len() as u64 > cap {
        return Err(format!(
            "it is over the {} MiB that memline reads",
            cap >> 20
        ));
    }
    Ok(Some(data))
}

/// `dir/NAME.SUFFIX` for the file `path`.
pub fn sibling(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path
        .file_name()
        .map(|n| n.to_os_string())
        .unwrap_or_default();
    name.push(suffix);
    path.with_file_name(name)
}

fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// Whether process `pid` is alive (on this system's pid namespace). Unknown counts as alive.
fn alive(pid: u32) -> bool {
    #[cfg(unix)]
    {
        let Ok(p) = libc::pid_t::try_from(pid) else {
            return true;
        };
        // SAFETY: kill with signal 0 only checks for the process; it sends nothing.
        let r = unsafe { libc::kill(p, 0) };
        r == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
    #[cfg(not(unix))]
    {
        let _ = pid;
        true
    }
}

/// Removes `NAME.tmp<pid>` files beside `target` whose writer is dead. Returns how many.
pub fn clean_stale_temporaries(target: &Path) -> usize {
    let Some(name) = target.file_name().and_then(|n| n.to_str()) else {
        return 0;
    };
    let prefix = format!("{name}.tmp");
    let Ok(entries) = fs::read_dir(parent_dir(target)) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let file_name = entry.file_name();
        let Some(pid) = file_name
            .to_str()
            .and_then(|n| n.strip_prefix(&prefix))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let regular = entry.file_type().map(|t| t.is_file()).unwrap_or(false);
        if regular
            && pid != std::process::id()
            && !alive(pid)
            && fs::remove_file(entry.path()).is_ok()
        {
            removed += 1;
        }
    }
    removed
}

/// Writes `data` to `path` atomically under the rules above; creates missing parent folders.
/// Returns the file written (the symlink's target when `path` is one).
pub fn write_atomic(path: &Path, data: &[u8]) -> Result<PathBuf, String> {
    let target = write_target(path)?;
    let dir = parent_dir(&target);
    fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    clean_stale_temporaries(&target);
    let keep_mode = fs::metadata(&target).ok().map(|m| m.permissions());
    let tmp = sibling(&target, &format!(".tmp{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        if let Some(mode) = keep_mode {
            f.set_permissions(mode)?;
        }
        f.write_all(data)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &target)?;
        // the rename itself is durable once the directory is synced (best effort)
        if let Ok(d) = File::open(&dir) {
            let _ = d.sync_all();
        }
        Ok::<(), std::io::Error>(())
    })();
    result.map_err(|e| {
        let _ = fs::remove_file(&tmp);
        format!("cannot write {}: {e}", path.display())
    })?;
    Ok(target)
}

/// Moves the regular file `path` to the first free `NAME.bak`, `NAME.bak.1`, ... and returns
/// where it went; never overwrites an earlier backup.
pub fn backup(path: &Path) -> Result<PathBuf, String> {
    let fail = |bak: &Path, e: &dyn std::fmt::Display| {
        format!(
            "cannot move the unusable file {} aside to {}: {e}",
            path.display(),
            bak.display()
        )
    };
    for n in 0..1000 {
        let bak = if n == 0 {
            sibling(path, ".bak")
        } else {
            sibling(path, &format!(".bak.{n}"))
        };
        if fs::symlink_metadata(&bak).is_ok() {
            continue;
        }
        // a hard link fails when the name was taken meanwhile: no backup is ever replaced
        match fs::hard_link(path, &bak) {
            Ok(()) => {
                fs::remove_file(path).map_err(|e| fail(&bak, &e))?;
                return Ok(bak);
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
            Err(_) => {
                // a file system without hard links: rename onto the free name
                fs::rename(path, &bak).map_err(|e| fail(&bak, &e))?;
                return Ok(bak);
            }
        }
    }
    Err(fail(
        &sibling(path, ".bak.*"),
        &"1000 backups exist already",
    ))
}

/// An exclusive lock serialising the writers of one file, held while alive.
pub struct Lock {
    file: File,
}

impl Lock {
    /// Locks the directory of `target` (created if missing); where that is not possible, the
    /// file `NAME.lock` beside it.
    pub fn acquire(target: &Path) -> Result<Self, String> {
        let dir = parent_dir(target);
        fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        if let Ok(file) = File::open(&dir) {
            if file.lock().is_ok() {
                return Ok(Lock { file });
            }
        }
        let lock_path = sibling(target, ".lock");
        let file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(|e| format!("cannot open the lock file {}: {e}", lock_path.display()))?;
        file.lock()
            .map_err(|e| format!("cannot lock {}: {e}", lock_path.display()))?;
        Ok(Lock { file })
    }
}

impl Drop for Lock {
    fn drop(&mut self) {
        let _ = self.file.unlock();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn tmpdir() -> PathBuf {
        static N: AtomicUsize = AtomicUsize::new(0);
        let d = std::env::temp_dir().join(format!(
            "memline-files-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn writes_create_folders_and_replace_regular_files() {
        let d = tmpdir();
        let p = d.join("a/b/report.json");
        assert_eq!(write_atomic(&p, b"one").unwrap(), p);
        write_atomic(&p, b"two").unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        let names: Vec<_> = fs::read_dir(d.join("a/b")).unwrap().flatten().collect();
        assert_eq!(names.len(), 1, "no temporary or lock file is left");
    }

    #[test]
    fn what_is_not_a_regular_file_is_refused_and_left_alone() {
        let d = tmpdir();
        fs::create_dir(d.join("dir")).unwrap();
        fs::write(d.join("dir/keep"), b"x").unwrap();
        let e = write_atomic(&d.join("dir"), b"data").unwrap_err();
        assert!(
            e.ends_with("is a directory, not a regular file: refusing to write it"),
            "{e}"
        );
        assert_eq!(fs::read(d.join("dir/keep")).unwrap(), b"x");
        assert!(write_atomic(Path::new(""), b"x")
            .unwrap_err()
            .contains("empty"));
        let e = read_capped(&d.join("dir"), MAX_READ).unwrap_err();
        assert_eq!(e, "it is a directory, not a regular file");
        #[cfg(unix)]
        {
            let fifo = d.join("fifo");
            let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
            // SAFETY: a valid C string; mkfifo only creates the node.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
            let e = write_atomic(&fifo, b"x").unwrap_err();
            assert!(
                e.contains("is a FIFO (named pipe), not a regular file"),
                "{e}"
            );
            // would block forever if it were opened
            let e = read_capped(&fifo, MAX_READ).unwrap_err();
            assert_eq!(e, "it is a FIFO (named pipe), not a regular file");
            let e = read_capped(Path::new("/dev/zero"), MAX_READ).unwrap_err();
            assert_eq!(e, "it is a character device, not a regular file");
        }
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_are_written_through_and_dangling_ones_refused() {
        let d = tmpdir();
        fs::write(d.join("shared.json"), b"old").unwrap();
        std::os::unix::fs::symlink(d.join("shared.json"), d.join("link.json")).unwrap();
        let wrote = write_atomic(&d.join("link.json"), b"new").unwrap();
        assert_eq!(wrote, fs::canonicalize(d.join("shared.json")).unwrap());
        assert!(fs::symlink_metadata(d.join("link.json"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(fs::read(d.join("shared.json")).unwrap(), b"new");
        std::os::unix::fs::symlink(d.join("nowhere"), d.join("dangling")).unwrap();
        let e = write_atomic(&d.join("dangling"), b"x").unwrap_err();
        assert!(
            e.contains("which does not exist: refusing to write through it"),
            "{e}"
        );
        assert!(!d.join("nowhere").exists());
    }

    #[test]
    fn reads_are_capped() {
        let d = tmpdir();
        fs::write(d.join("big"), vec![b'x'; 3000]).unwrap();
        assert_eq!(
            read_capped(&d.join("big"), 3000).unwrap().unwrap().len(),
            3000
        );
        let e = read_capped(&d.join("big"), 2999).unwrap_err();
        assert!(e.starts_with("it is 3000 bytes, over the"), "{e}");
        assert_eq!(read_capped(&d.join("none"), 10).unwrap(), None);
    }

    #[test]
    fn backups_never_overwrite_earlier_ones() {
        let d = tmpdir();
        let p = d.join("baseline.json");
        for i in 0..3 {
            fs::write(&p, format!("v{i}")).unwrap();
            backup(&p).unwrap();
            assert!(!p.exists());
        }
        assert_eq!(
            fs::read_to_string(d.join("baseline.json.bak")).unwrap(),
            "v0"
        );
        assert_eq!(
            fs::read_to_string(d.join("baseline.json.bak.1")).unwrap(),
            "v1"
        );
        assert_eq!(
            fs::read_to_string(d.join("baseline.json.bak.2")).unwrap(),
            "v2"
        );
    }

    #[cfg(unix)]
    #[test]
    fn stale_temporaries_of_dead_writers_are_removed() {
        let d = tmpdir();
        let p = d.join("baseline.json");
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let dead = child.id();
        child.wait().unwrap();
        let parent = std::os::unix::process::parent_id(); // alive: it ran this test
        fs::write(sibling(&p, &format!(".tmp{dead}")), b"partial").unwrap();
        fs::write(sibling(&p, &format!(".tmp{parent}")), b"in flight").unwrap();
        fs::write(d.join("other.json.tmp1"), b"not ours").unwrap();
        write_atomic(&p, b"data").unwrap();
        assert!(!sibling(&p, &format!(".tmp{dead}")).exists());
        assert!(sibling(&p, &format!(".tmp{parent}")).exists());
        assert!(d.join("other.json.tmp1").exists());
    }

    #[cfg(unix)]
    #[test]
    fn permissions_follow_the_old_file_or_the_umask() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmpdir();
        let p = d.join("r.json");
        write_atomic(&p, b"x").unwrap();
        // the process's umask, read without setting it (other tests run in parallel)
        let status = fs::read_to_string("/proc/self/status").unwrap_or_default();
        if let Some(mask) = status
            .lines()
            .find_map(|l| l.strip_prefix("Umask:"))
            .and_then(|m| u32::from_str_radix(m.trim(), 8).ok())
        {
            let mode = fs::metadata(&p).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o666 & !mask);
        }
        fs::set_permissions(&p, fs::Permissions::from_mode(0o640)).unwrap();
        write_atomic(&p, b"y").unwrap();
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o640
        );
    }

    #[test]
    fn the_lock_is_the_directory_and_leaves_no_file() {
        let d = tmpdir();
        let p = d.join("sub/baseline.json");
        {
            let _l = Lock::acquire(&p).unwrap();
        }
        let _again = Lock::acquire(&p).unwrap();
        assert_eq!(fs::read_dir(d.join("sub")).unwrap().count(), 0);
    }
}

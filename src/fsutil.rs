//! Atomic outputs: everything is written under a temporary name beside its destination and
//! renamed into place only when complete, so no command ever leaves a truncated file under
//! the name a user asked for.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// Writes smaller than this are gathered; larger ones (most coded chunks) go straight to the
/// file instead of being copied into the buffer first.
const BUFFER: usize = 256 << 10;

/// A file being written; becomes visible under its final name only on `commit`.
pub struct AtomicFile {
    final_path: PathBuf,
    tmp_path: PathBuf,
    out: Option<BufWriter<File>>,
    /// A resumable output keeps its partial file when dropped unfinished.
    keep_partial: bool,
}

/// Temporary outputs being written (files and staged directories), removed if the process is
/// interrupted (`remove_temps_on_interrupt`). Resumable outputs are not listed: they are kept.
static TEMPS: std::sync::Mutex<Vec<PathBuf>> = std::sync::Mutex::new(Vec::new());

/// Whether this run has written any output at all (a report-only command has not, and its
/// interrupt has nothing to clean up).
static WROTE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Lists `path` as a temporary output to remove on an interrupt.
pub fn track_temp(path: &Path) {
    WROTE.store(true, std::sync::atomic::Ordering::Relaxed);
    if let Ok(mut t) = TEMPS.lock() {
        t.push(path.to_path_buf());
    }
}

/// Takes `path` off that list (renamed into place, or removed).
pub fn untrack_temp(path: &Path) {
    if let Ok(mut t) = TEMPS.lock() {
        t.retain(|p| p != path);
    }
}

/// Held while an output and its ECC sidecar are renamed into place: an interrupt waits for
/// both renames, so that neither stands without the other.
static RENAMING: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Defers an interrupt's clean-up and exit until the guard is dropped (keep it to renames).
pub fn hold_interrupts() -> std::sync::MutexGuard<'static, ()> {
    RENAMING.lock().unwrap_or_else(|e| e.into_inner())
}

/// The progress a `--resume` run keeps (the outermost, where a directory's shards nest theirs).
static KEPT: std::sync::Mutex<Option<PathBuf>> = std::sync::Mutex::new(None);

/// Notes where a `--resume` run keeps its progress, for the interrupt message.
pub fn note_kept_progress(path: &Path) {
    if let Ok(mut k) = KEPT.lock() {
        k.get_or_insert_with(|| path.to_path_buf());
    }
}

/// On Ctrl-C or SIGTERM, removes every temporary output still being written, then exits with
/// 130: an interrupted run leaves nothing behind (a `--resume` run keeps its progress).
pub fn remove_temps_on_interrupt() {
    let _ = ctrlc::set_handler(|| {
        let _renames = hold_interrupts();
        // The lock is held while removing so no writer registers a new one meanwhile.
        if let Ok(t) = TEMPS.lock() {
            for p in t.iter() {
                if p.is_dir() {
                    // Coding threads still running may add a file to a staged directory (a
                    // shard renamed into place, a temporary created before it is listed)
                    // after its listing was read: then the directory is not empty and is
                    // tried again. They cannot add many: listing a new one waits for the lock.
                    for _ in 0..100 {
                        if fs::remove_dir_all(p).is_ok() || !p.exists() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(2));
                    }
                } else {
                    let _ = fs::remove_file(p);
                }
            }
        }
        match KEPT.lock().ok().and_then(|k| k.clone()) {
            Some(p) => eprintln!(
                "bigsmall: interrupted; progress kept in {} (run again with --resume to continue)",
                p.display()
            ),
            None if WROTE.load(std::sync::atomic::Ordering::Relaxed) => {
                eprintln!("bigsmall: interrupted; partial outputs removed")
            }
            None => eprintln!("bigsmall: interrupted"),
        }
        std::process::exit(130);
    });
}

/// Makes a write past the file-size limit (`ulimit -f`) fail with an error (EFBIG), which
/// is reported and cleaned up like a full disk, instead of killing the process (the default
/// action of SIGXFSZ), which would leave its temporary output behind.
pub fn file_size_limit_is_an_error() {
    // SAFETY: setting a signal's disposition to SIG_IGN installs no handler code.
    unsafe {
        libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
    }
}

/// Inputs are mapped, and a read of a mapped page that no longer exists (the file truncated
/// by another program meanwhile) or cannot be read (a failing device) is a SIGBUS, which
/// would kill the process with "Bus error" and its temporary outputs left behind. This
/// handler says what happened on one line, removes the temporary files it can and exits 1.
/// It does only what a signal handler may: no allocation, no lock it could wait on.
pub fn stop_on_sigbus() {
    extern "C" fn on_sigbus(_: libc::c_int) {
        const MSG: &[u8] = b"bigsmall: an input became unreadable while mapped (truncated by \
another program, or a read error on its device); stopped, nothing written under the output's name\n";
        // SAFETY: write(2) and unlink(2) are async-signal-safe; the buffers are on the stack
        // or static, and `try_lock` never waits.
        unsafe {
            libc::write(2, MSG.as_ptr().cast(), MSG.len());
            if let Ok(t) = TEMPS.try_lock() {
                // Newest first, so that a staged directory comes after the files in it; it
                // goes where they were all it held (shards already renamed into it stay).
                for p in t.iter().rev() {
                    let bytes = std::os::unix::ffi::OsStrExt::as_bytes(p.as_os_str());
                    let mut c = [0u8; 4096];
                    if bytes.len() < c.len() && !bytes.contains(&0) {
                        c[..bytes.len()].copy_from_slice(bytes);
                        if libc::unlink(c.as_ptr().cast()) != 0 {
                            libc::rmdir(c.as_ptr().cast());
                        }
                    }
                }
            }
            libc::_exit(1);
        }
    }
    // SAFETY: installs a handler that only calls async-signal-safe functions (above).
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_sigbus as *const () as usize;
        // On the alternate stack where the thread has one (std gives its threads one).
        sa.sa_flags = libc::SA_ONSTACK;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGBUS, &sa, std::ptr::null_mut());
    }
}

/// An input that is a pipe or a device: bigsmall maps its inputs (random access, bounded
/// memory), which a stream cannot give.
pub fn not_a_regular_file(path: &Path) -> Error {
    Error::invalid(
        path,
        "is not a regular file (a pipe or device): bigsmall reads its inputs from files",
    )
}

/// Opens an input for reading, refusing a pipe or device first (opening a FIFO with no
/// writer would block).
pub fn open_regular(path: &Path) -> Result<File> {
    let meta = fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if !meta.is_file() && !meta.is_dir() {
        return Err(not_a_regular_file(path));
    }
    File::open(path).map_err(|e| Error::io(path, e))
}

/// Refuses to clobber an existing path with a file output unless `overwrite`.
pub fn check_output(path: &Path, overwrite: bool) -> Result<()> {
    check_output_as(path, overwrite, false)
}

/// `check_output` for a container, whose ECC sidecar (`OUT.ecc`) goes with it: one already
/// there is replaced (by a fresh sidecar, or removed as stale) only with `overwrite`.
pub fn check_container_output(path: &Path, overwrite: bool) -> Result<()> {
    check_output(path, overwrite)?;
    check_output(&crate::integrity::ecc::sidecar_path(path), overwrite)
}

/// Refuses to clobber an existing path unless `overwrite`, and even then anything but an
/// output's own kind (a file for a file, a directory for a directory) or a link: -f renames
/// the new output over the old one, so a device or a pipe would be replaced rather than
/// written to, and a file a directory output lands on (or the reverse) is more likely a
/// mistyped path than an old output. An empty directory takes a directory output freely.
pub fn check_output_as(path: &Path, overwrite: bool, dir: bool) -> Result<()> {
    if !dir && path.as_os_str().as_encoded_bytes().ends_with(b"/") {
        return Err(Error::invalid(
            path,
            "ends in '/', and this output is a file: give a file name",
        ));
    }
    let Ok(meta) = fs::symlink_metadata(path) else {
        // Said here, before any work, rather than as a bare "No such file or directory" when
        // the output is created.
        let parent = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        return match fs::metadata(parent) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => Err(Error::invalid(
                path,
                format!("cannot be created: {} is not a directory", parent.display()),
            )),
            Err(_) => Err(Error::invalid(
                path,
                format!(
                    "cannot be created: its folder {} does not exist",
                    parent.display()
                ),
            )),
        };
    };
    let kind = meta.file_type();
    let empty_dir = || fs::read_dir(path).is_ok_and(|mut d| d.next().is_none());
    if dir && kind.is_dir() && empty_dir() {
        return Ok(());
    }
    if !overwrite {
        return Err(Error::OutputExists {
            path: path.to_path_buf(),
        });
    }
    let why = match (kind.is_file(), kind.is_dir()) {
        // A link is replaced by the output, unless it leads to a pipe or a device (a link to
        // /dev/stdout is no file to replace).
        _ if kind.is_symlink() => match fs::metadata(path) {
            Ok(m) if !m.is_file() && !m.is_dir() => {
                "is a link to a pipe or device, not a file; -f only replaces files and directories"
            }
            _ => return Ok(()),
        },
        (false, false) => "is not a regular file or directory; -f only replaces those",
        (false, true) if !dir => {
            "is a directory, and this output is a file: -f replaces only the same kind"
        }
        (true, _) if dir => {
            "is a file, and this output is a directory: -f replaces only the same kind"
        }
        _ => return Ok(()),
    };
    Err(Error::invalid(path, why))
}

/// Whether two files hold the same bytes, read in pieces (either may be large).
pub fn same_bytes(a: &Path, b: &Path) -> std::io::Result<bool> {
    use std::io::Read;
    // A pipe would block the read (and is no file to compare).
    let open = |p: &Path| {
        if fs::metadata(p)?.is_file() {
            File::open(p)
        } else {
            Err(std::io::Error::other("is not a regular file"))
        }
    };
    let (mut x, mut y) = (open(a)?, open(b)?);
    if x.metadata()?.len() != y.metadata()?.len() {
        return Ok(false);
    }
    let (mut p, mut q) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = x.read(&mut p)?;
        if n == 0 {
            return Ok(true);
        }
        y.read_exact(&mut q[..n])?;
        if p[..n] != q[..n] {
            return Ok(false);
        }
    }
}

/// The temporary name used beside `path` while it is written.
pub fn temp_name(path: &Path) -> PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "out".into());
    path.with_file_name(format!(".{name}.bigsmall-tmp-{}", std::process::id()))
}

/// Takes an exclusive lock on an open file or directory without waiting; false where another
/// open file description holds it. A run holds one on each temporary output it writes, so that
/// `remove_stale_temps` can tell them from what a killed run left, across PID namespaces too.
pub fn try_lock(f: &File) -> bool {
    use std::os::fd::AsRawFd;
    // SAFETY: flock on a file descriptor we own for the duration of the call.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Removes what runs that were killed outright (`kill -9`, a power cut) left while writing
/// `path`: temporary outputs beside it whose process no longer exists and whose lock no one
/// holds. A live run's (another run writing the same output, here or in another container
/// sharing the directory) are left alone.
pub fn remove_stale_temps(path: &Path) {
    let (Some(name), Some(parent)) = (path.file_name(), path.parent()) else {
        return;
    };
    let parent = if parent.as_os_str().is_empty() {
        Path::new(".")
    } else {
        parent
    };
    let prefix = format!(".{}.bigsmall-tmp-", name.to_string_lossy());
    let Ok(entries) = fs::read_dir(parent) else {
        return;
    };
    for e in entries.flatten() {
        let entry = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = entry.strip_prefix(&prefix) else {
            continue;
        };
        let Ok(pid) = pid.parse::<libc::pid_t>() else {
            continue;
        };
        if pid <= 0 || process_exists(pid) {
            continue;
        }
        let p = e.path();
        // Held until the removal is done: no run can be writing it meanwhile.
        let Ok(held) = File::open(&p) else {
            continue;
        };
        if !try_lock(&held) {
            continue;
        }
        let _ = if p.is_dir() && !p.is_symlink() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        };
    }
}

fn process_exists(pid: libc::pid_t) -> bool {
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let r = unsafe { libc::kill(pid, 0) };
    r == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM)
}

impl AtomicFile {
    pub fn create(path: &Path) -> Result<AtomicFile> {
        remove_stale_temps(path);
        let tmp_path = temp_name(path);
        track_temp(&tmp_path);
        let file = File::create(&tmp_path).map_err(|e| {
            untrack_temp(&tmp_path);
            Error::io(path, e)
        })?;
        try_lock(&file);
        Ok(AtomicFile {
            final_path: path.to_path_buf(),
            tmp_path,
            out: Some(BufWriter::with_capacity(BUFFER, file)),
            keep_partial: false,
        })
    }

    /// A resumable output written at `partial` (kept if the run stops), continuing after its
    /// first `keep` bytes when `keep` is given (anything after them is cut off), or fresh.
    pub fn resumable(path: &Path, partial: &Path, keep: Option<u64>) -> Result<AtomicFile> {
        use std::io::{Seek, SeekFrom};
        let file = match keep {
            Some(n) => {
                let mut f = fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open(partial)
                    .map_err(|e| Error::io(partial, e))?;
                let len = f.metadata().map_err(|e| Error::io(partial, e))?.len();
                if len < n {
                    return Err(Error::invalid(
                        partial,
                        format!("partial output is {len} bytes, its checkpoint says {n}: progress is damaged; delete it and start again"),
                    ));
                }
                f.set_len(n).map_err(|e| Error::io(partial, e))?;
                f.seek(SeekFrom::Start(n))
                    .map_err(|e| Error::io(partial, e))?;
                f
            }
            None => File::create(partial).map_err(|e| Error::io(partial, e))?,
        };
        Ok(AtomicFile {
            final_path: path.to_path_buf(),
            tmp_path: partial.to_path_buf(),
            out: Some(BufWriter::with_capacity(BUFFER, file)),
            keep_partial: true,
        })
    }

    pub fn path(&self) -> &Path {
        &self.final_path
    }

    pub fn write_all(&mut self, bytes: &[u8]) -> Result<()> {
        let out = self.out.as_mut().expect("not committed");
        out.write_all(bytes)
            .map_err(|e| Error::io(&self.final_path, e))
    }

    /// Pushes buffered bytes to the file.
    pub fn flush(&mut self) -> Result<()> {
        use std::io::Write as _;
        let out = self.out.as_mut().expect("not committed");
        out.flush().map_err(|e| Error::io(&self.final_path, e))
    }

    /// Writes `bytes` at `offset` (after what is buffered has been flushed), from any thread:
    /// parts decoded in parallel go straight to their place.
    pub fn write_at(&self, bytes: &[u8], offset: u64) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let out = self.out.as_ref().expect("not committed");
        debug_assert!(out.buffer().is_empty(), "flush before positional writes");
        out.get_ref()
            .write_all_at(bytes, offset)
            .map_err(|e| Error::io(&self.final_path, e))
    }

    /// Flushes and renames into place. A failed flush (a full disk) removes the temporary
    /// file, as dropping an unfinished one does.
    pub fn commit(self) -> Result<()> {
        self.commit_with(|_| Ok(()))
    }

    /// `commit`, calling `complete` with the temporary file once it holds every byte and
    /// before it is renamed: what must exist with the output (its ECC sidecar) is made there,
    /// so that the output never stands without it. An error from `complete` is handled like a
    /// failed flush.
    pub fn commit_with<T>(mut self, complete: impl FnOnce(&Path) -> Result<T>) -> Result<T> {
        let out = self.out.take().expect("commit once");
        let give_up = |this: &AtomicFile| {
            if !this.keep_partial {
                let _ = fs::remove_file(&this.tmp_path);
                untrack_temp(&this.tmp_path);
            }
        };
        let file = match out.into_inner() {
            Ok(f) => f,
            Err(e) => {
                give_up(&self);
                return Err(Error::io(&self.final_path, e.into_error()));
            }
        };
        drop(file);
        let made = match complete(&self.tmp_path) {
            Ok(t) => t,
            Err(e) => {
                give_up(&self);
                return Err(e);
            }
        };
        let renamed = fs::rename(&self.tmp_path, &self.final_path).map_err(|e| {
            let _ = fs::remove_file(&self.tmp_path);
            Error::io(&self.final_path, e)
        });
        if !self.keep_partial {
            untrack_temp(&self.tmp_path);
        }
        renamed.map(|_| made)
    }
}

impl Drop for AtomicFile {
    fn drop(&mut self) {
        if self.out.take().is_some() && !self.keep_partial {
            let _ = fs::remove_file(&self.tmp_path);
            untrack_temp(&self.tmp_path);
        }
    }
}

/// Drops pages of a read-only file mapping from this process's resident set.
pub fn release_pages(m: &memmap2::Mmap, start: usize, end: usize) {
    const PAGE: usize = 4096;
    let s = start / PAGE * PAGE;
    let e = end.min(m.len());
    if e <= s {
        return;
    }
    // SAFETY: DONTNEED on a read-only shared file mapping only drops cached pages; later reads
    // fault them back in from the file, so no data visible through the map changes.
    let _ = unsafe { m.unchecked_advise_range(memmap2::UncheckedAdvice::DontNeed, s, e - s) };
}

/// `p` made absolute through its nearest existing ancestor (symlinks there resolved), for
/// comparing an output that may not exist yet with an input.
fn resolved(p: &Path) -> PathBuf {
    let mut rest = Vec::new();
    let mut at = p.to_path_buf();
    loop {
        if let Ok(c) = fs::canonicalize(&at) {
            return rest.into_iter().rev().fold(c, |acc, part| acc.join(part));
        }
        match (at.file_name().map(|n| n.to_os_string()), at.parent()) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                at = if parent.as_os_str().is_empty() {
                    PathBuf::from(".")
                } else {
                    parent.to_path_buf()
                };
            }
            _ => return p.to_path_buf(),
        }
    }
}

/// Refuses an output that is one of this run's inputs (by path, or by file identity: a link
/// or another spelling of it), a directory that holds one, or a path inside an input
/// directory (a model directory, a base). `-f` replaces an output, never an input: a patch
/// written over its own base would lose both, and an output written into a base would make
/// it another model.
/// Whether two paths name one file or directory (the same path once links are resolved, or
/// the same inode: a hard link).
pub fn same_path(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let id = |p: &Path| fs::metadata(p).ok().map(|m| (m.dev(), m.ino()));
    resolved(a) == resolved(b) || id(a).is_some_and(|x| id(b) == Some(x))
}

pub fn check_not_input(output: &Path, inputs: &[&Path]) -> Result<()> {
    let o = resolved(output);
    for &input in inputs {
        let i = resolved(input);
        if same_path(output, input) {
            return Err(Error::invalid(
                output,
                format!(
                    "is the input {}; choose another output (-f replaces outputs, never inputs)",
                    input.display()
                ),
            ));
        }
        if i.starts_with(&o) {
            return Err(Error::invalid(
                output,
                format!("holds the input {}; choose another output", input.display()),
            ));
        }
        if o.starts_with(&i) {
            return Err(Error::invalid(
                output,
                format!(
                    "is inside the input {}; choose another output",
                    input.display()
                ),
            ));
        }
    }
    Ok(())
}

//! Replacing a file that a `write_file` action (or its rollback) targets, without ever following
//! a symlink a local user or the monitored app left in the way.
//!
//! The target's directory is opened once, one component at a time from `/` with `O_NOFOLLOW`,
//! along a path already free of symlinks (canonicalized by the caller and checked to be inside a
//! writable directory); every operation after that is relative to that open directory. So a
//! component swapped for a symlink after the check is refused instead of followed, a symlink at
//! the target's name is never written through, and the temporary file is created exclusively
//! (`O_EXCL | O_NOFOLLOW`) under a fresh name, never opened through a link planted at a
//! predictable one. A replacement keeps the old file's owner and group, or fails.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io;
use std::os::fd::OwnedFd;
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use rustix::fs::{AtFlags, FileType, Mode, OFlags};

/// A file name inside a directory opened without following links.
#[derive(Debug)]
pub struct DirEntry {
    dir: OwnedFd,
    dir_path: PathBuf,
    name: OsString,
    /// The identity of every directory it was opened through, from `/` to its own.
    ancestors: Vec<FileId>,
}

/// A file's identity: its device and inode. Two paths to one directory (a symlink, a bind
/// mount, a rename since) give the same identity.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileId {
    pub dev: u64,
    pub ino: u64,
}

impl FileId {
    /// The identity of what `path` names (links followed), if it exists.
    pub fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).ok().map(|m| FileId {
            dev: m.dev(),
            ino: m.ino(),
        })
    }

    fn of_fd(fd: &OwnedFd) -> io::Result<FileId> {
        let stat = rustix::fs::fstat(fd)?;
        Ok(FileId {
            dev: stat.st_dev,
            ino: stat.st_ino,
        })
    }
}

pub use crate::core::fault::FileOwner;

/// What is at an entry's name now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Found {
    Nothing,
    /// A regular file, with its permission bits and owner.
    File {
        mode: u32,
        owner: FileOwner,
    },
    Symlink,
    /// A directory, FIFO, socket or device.
    Other,
}

/// Gives every temporary file of this process a name not used before.
static TEMP_COUNTER: AtomicU64 = AtomicU64::new(0);

/// Attempts at a fresh temporary name before giving up (only names planted by someone else
/// collide).
const TEMP_ATTEMPTS: u32 = 16;

/// Every temporary name phoenix uses starts with this: names under it are phoenix's to remove.
const TEMP_PREFIX: &str = ".phoenix-tmp-";

/// The temporary name a replacement writes before renaming it over the target.
#[derive(Debug, Clone, Copy)]
pub enum TempName<'a> {
    /// A name nothing has used (`.phoenix-tmp-PID-N`). What a crash leaves under it is found
    /// by no one: for phoenix's own files, whose folders go whole.
    Fresh,
    /// A name recorded before the write (see [`recorded_temp_name`]), so that what a crash
    /// leaves under it can be removed later ([`DirEntry::remove_leftover`]). Whatever is at it
    /// when the write starts (such a leftover, or a link someone planted) is removed first,
    /// never opened.
    Recorded(&'a str),
}

impl<'a> TempName<'a> {
    /// The recorded name, when a record has one (records written before names were recorded
    /// have none: their writes take a fresh name).
    pub fn from_record(temp: Option<&'a str>) -> TempName<'a> {
        temp.map_or(TempName::Fresh, TempName::Recorded)
    }
}

/// The temporary name for one recorded write, derived from `key` (unique per write, e.g. the
/// path of its backup): short, hidden, and the same each time it is asked for.
pub fn recorded_temp_name(key: &[u8]) -> String {
    format!("{TEMP_PREFIX}{}", &blake3::hash(key).to_hex()[..16])
}

impl DirEntry {
    /// Opens the directory of `path` (absolute, without `.`, `..` or symlinks along it) without
    /// following any link; `path`'s last component is the entry's name.
    pub fn open(path: &Path) -> io::Result<DirEntry> {
        let (Some(dir_path), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(io::Error::other("no directory and file name"));
        };
        let (dir, ancestors) = open_dir_nofollow(dir_path)?;
        Ok(DirEntry {
            dir,
            dir_path: dir_path.to_owned(),
            name: name.to_owned(),
            ancestors,
        })
    }

    /// The entry's full path (for messages and for undo records).
    pub fn path(&self) -> PathBuf {
        self.dir_path.join(&self.name)
    }

    /// The path of the directory it is in.
    pub fn dir_path(&self) -> &Path {
        &self.dir_path
    }

    /// Its name in that directory.
    pub fn name(&self) -> &OsStr {
        &self.name
    }

    /// The identity of every directory it was opened through, from `/` to its own (the last).
    pub fn ancestors(&self) -> &[FileId] {
        &self.ancestors
    }

    /// What is at the name, not following a symlink.
    pub fn find(&self) -> io::Result<Found> {
        match rustix::fs::statat(&self.dir, &self.name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(stat) => Ok(match FileType::from_raw_mode(stat.st_mode) {
                FileType::RegularFile => Found::File {
                    mode: stat.st_mode & 0o7777,
                    owner: FileOwner {
                        uid: stat.st_uid,
                        gid: stat.st_gid,
                    },
                },
                FileType::Symlink => Found::Symlink,
                _ => Found::Other,
            }),
            Err(rustix::io::Errno::NOENT) => Ok(Found::Nothing),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Opens the regular file at the name for reading; refuses a symlink, and anything but a
    /// regular file without blocking on it (a FIFO would wait for a writer).
    pub fn open_regular(&self) -> io::Result<File> {
        let fd = rustix::fs::openat(
            &self.dir,
            &self.name,
            OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        if !FileType::from_raw_mode(rustix::fs::fstat(&fd)?.st_mode).is_file() {
            return Err(io::Error::other("not a regular file"));
        }
        Ok(File::from(fd))
    }

    /// Replaces the entry with a file of `mode` (and `owner`, when given) that `fill` writes: a
    /// temporary file beside it (named as `temp` says), filled, flushed, renamed over the name,
    /// then the directory flushed. Readers see the old file or the new one, never half; on any
    /// failure (an owner phoenix may not give, too) the temporary file is removed and the entry
    /// left as it was.
    pub fn replace(
        &self,
        temp: TempName<'_>,
        mode: u32,
        owner: Option<FileOwner>,
        fill: impl FnOnce(&mut File) -> io::Result<()>,
    ) -> io::Result<()> {
        let (temp_name, fd) = match temp {
            TempName::Fresh => self.create_temp()?,
            TempName::Recorded(name) => self.create_recorded_temp(name)?,
        };
        let written = (|| {
            let mut file = File::from(fd);
            fill(&mut file)?;
            if let Some(owner) = owner {
                give_owner(&file, owner)?;
            }
            // After the owner: changing it clears setuid and setgid bits.
            rustix::fs::fchmod(&file, Mode::from_raw_mode(mode))?;
            file.sync_all()?;
            rustix::fs::renameat(&self.dir, &temp_name, &self.dir, &self.name)?;
            Ok(())
        })();
        if let Err(error) = written {
            let _ = rustix::fs::unlinkat(&self.dir, &temp_name, AtFlags::empty());
            return Err(error);
        }
        rustix::fs::fsync(&self.dir)?;
        Ok(())
    }

    /// Removes the entry (a symlink there is removed, not followed). `Ok(false)` when there was
    /// nothing to remove.
    pub fn remove(&self) -> io::Result<bool> {
        match rustix::fs::unlinkat(&self.dir, &self.name, AtFlags::empty()) {
            Ok(()) => {
                rustix::fs::fsync(&self.dir)?;
                Ok(true)
            }
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Removes what a write interrupted by a crash left at its recorded temporary name `temp`
    /// (a link there is removed, not followed). `Ok(false)` when nothing was there.
    pub fn remove_leftover(&self, temp: &str) -> io::Result<bool> {
        let name = checked_temp_name(temp)?;
        match rustix::fs::unlinkat(&self.dir, name, AtFlags::empty()) {
            Ok(()) => {
                rustix::fs::fsync(&self.dir)?;
                Ok(true)
            }
            Err(rustix::io::Errno::NOENT) => Ok(false),
            Err(errno) => Err(errno.into()),
        }
    }

    /// Creates the temporary file under its recorded name, exclusively, after removing what is
    /// there: the leftover of an interrupted run of the same write, or a planted link.
    fn create_recorded_temp(&self, temp: &str) -> io::Result<(OsString, OwnedFd)> {
        self.remove_leftover(temp)?;
        let fd = rustix::fs::openat(
            &self.dir,
            temp,
            OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o600),
        )?;
        Ok((temp.into(), fd))
    }

    /// Creates a temporary file under a name nothing has used, exclusively: an existing name
    /// (a leftover, or a link someone planted) is skipped, never opened.
    fn create_temp(&self) -> io::Result<(OsString, OwnedFd)> {
        let mut last = io::Error::other("no temporary name tried");
        for _ in 0..TEMP_ATTEMPTS {
            let name = temp_name(TEMP_COUNTER.fetch_add(1, Ordering::Relaxed));
            match rustix::fs::openat(
                &self.dir,
                &name,
                OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            ) {
                Ok(fd) => return Ok((name, fd)),
                Err(rustix::io::Errno::EXIST) => last = rustix::io::Errno::EXIST.into(),
                Err(errno) => return Err(errno.into()),
            }
        }
        Err(last)
    }
}

/// Creates `dir` and each missing parent with mode 0700: phoenix's own folders (the data dir
/// and everything in it) are for phoenix alone, whatever the process's umask.
pub fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

/// Writes `bytes` as the whole content of `path`, a file of phoenix's own, created 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    io::Write::write_all(&mut file, bytes)
}

/// Makes `dir` and every folder under it 0700 and every file 0600: what a library (sled) made
/// there with the umask's modes. Symlinks are left alone, never followed.
pub fn make_private(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            make_private(&entry.path())?;
        } else if kind.is_file() {
            std::fs::set_permissions(entry.path(), std::fs::Permissions::from_mode(0o600))?;
        }
    }
    Ok(())
}

/// Replaces one of phoenix's own files (a backup in the data directory), creating its
/// directory if needed (0700), the same way as [`DirEntry::replace`]. The data directory is trusted: a
/// symlink along it (`/var/lib/phoenix` moved to a larger disk) is resolved first.
pub fn replace_own_file(
    path: &Path,
    mode: u32,
    fill: impl FnOnce(&mut File) -> io::Result<()>,
) -> io::Result<()> {
    let (Some(dir), Some(name)) = (path.parent(), path.file_name()) else {
        return Err(io::Error::other("no directory and file name"));
    };
    create_private_dir(dir)?;
    DirEntry::open(&dir.canonicalize()?.join(name))?.replace(TempName::Fresh, mode, None, fill)
}

/// Gives `file` the owner and group of the file it replaces, when it has not got them already
/// (the usual case, and no `chown` call then: the shipped systemd unit filters it out).
/// Unprivileged, phoenix can keep only its own user and its groups; otherwise the app would find
/// its file owned by someone else (and maybe unreadable), so that is an error that says what to
/// do.
fn give_owner(file: &File, owner: FileOwner) -> io::Result<()> {
    let stat = rustix::fs::fstat(file)?;
    if (stat.st_uid, stat.st_gid) == (owner.uid, owner.gid) {
        return Ok(());
    }
    let (uid, gid) = (
        rustix::fs::Uid::from_raw(owner.uid),
        rustix::fs::Gid::from_raw(owner.gid),
    );
    match rustix::fs::fchown(file, Some(uid), Some(gid)) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::PERM) => Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "cannot keep its owner {}:{} (phoenix runs as uid {}): give phoenix's user the \
                 file, or run phoenix with CAP_CHOWN",
                owner.uid,
                owner.gid,
                rustix::process::geteuid().as_raw()
            ),
        )),
        Err(errno) => Err(errno.into()),
    }
}

/// `.phoenix-tmp-PID-N`: short (a long target name cannot push it past the name limit) and
/// hidden; the process id keeps two phoenix processes sharing a directory apart.
fn temp_name(n: u64) -> OsString {
    format!("{TEMP_PREFIX}{}-{n}", std::process::id()).into()
}

/// `temp` if it is one of phoenix's temporary names: a recorded name comes from the store, and
/// phoenix removes only its own names, never another file of the directory.
fn checked_temp_name(temp: &str) -> io::Result<&str> {
    let own = temp.len() > TEMP_PREFIX.len()
        && temp.len() <= 64
        && temp.starts_with(TEMP_PREFIX)
        && !temp.contains('/');
    if own {
        Ok(temp)
    } else {
        Err(io::Error::other(format!(
            "`{temp}` is not a phoenix temporary file name"
        )))
    }
}

/// Opens the directory at `path` one component at a time with `O_NOFOLLOW`: a symlink anywhere
/// along it is an error (`ELOOP` or `ENOTDIR`), not followed. Intermediate directories are
/// opened `O_PATH` (they need only search permission); the last for reading, so it can be
/// flushed. Also returns the identity of each directory opened, from `/` to the last.
fn open_dir_nofollow(path: &Path) -> io::Result<(OwnedFd, Vec<FileId>)> {
    if !path.is_absolute() {
        return Err(io::Error::other("not an absolute path"));
    }
    let names: Vec<&OsStr> = path
        .components()
        .map(|component| match component {
            Component::RootDir => Ok(None),
            Component::Normal(name) => Ok(Some(name)),
            _ => Err(io::Error::other("`.` or `..` in the path")),
        })
        .filter_map(Result::transpose)
        .collect::<io::Result<_>>()?;
    let search = OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let read = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let mut dir = rustix::fs::openat(
        rustix::fs::CWD,
        "/",
        if names.is_empty() { read } else { search },
        Mode::empty(),
    )?;
    let mut ids = vec![FileId::of_fd(&dir)?];
    for (index, name) in names.iter().enumerate() {
        let flags = if index + 1 == names.len() {
            read
        } else {
            search
        };
        dir = rustix::fs::openat(&dir, *name, flags, Mode::empty())?;
        ids.push(FileId::of_fd(&dir)?);
    }
    Ok((dir, ids))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!(
            "phoenix-files-{name}-{}-{}",
            std::process::id(),
            TEMP_COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        dir.canonicalize().unwrap()
    }

    fn read(dir: &Path, name: &str) -> String {
        std::fs::read_to_string(dir.join(name)).unwrap()
    }

    #[test]
    fn replace_writes_the_file_with_its_mode_and_leaves_no_temporary_file() {
        let dir = temp_dir("replace");
        let entry = DirEntry::open(&dir.join("app.conf")).unwrap();
        assert_eq!(entry.find().unwrap(), Found::Nothing);
        entry
            .replace(TempName::Fresh, 0o640, None, |file| {
                io::Write::write_all(file, b"new")
            })
            .unwrap();
        assert_eq!(read(&dir, "app.conf"), "new");
        assert!(
            matches!(entry.find().unwrap(), Found::File { mode: 0o640, .. }),
            "{:?}",
            entry.find()
        );
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

        // A failing fill leaves the old file and no temporary one.
        let failed = entry.replace(TempName::Fresh, 0o640, None, |_| {
            Err(io::Error::other("disk full"))
        });
        assert!(failed.is_err());
        assert_eq!(read(&dir, "app.conf"), "new");
        assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn links_planted_at_every_temporary_name_are_skipped_not_followed() {
        let dir = temp_dir("planted");
        std::fs::write(dir.join("secret"), "untouched").unwrap();
        let next = TEMP_COUNTER.load(Ordering::Relaxed);
        for n in next..next + 4 {
            std::os::unix::fs::symlink(dir.join("secret"), dir.join(temp_name(n))).unwrap();
        }
        let entry = DirEntry::open(&dir.join("target")).unwrap();
        entry
            .replace(TempName::Fresh, 0o644, None, |file| {
                io::Write::write_all(file, b"written")
            })
            .unwrap();
        assert_eq!(read(&dir, "secret"), "untouched");
        assert_eq!(read(&dir, "target"), "written");
        assert!(!dir.join("target").is_symlink());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_symlink_along_the_path_or_at_the_name_is_refused() {
        let dir = temp_dir("links");
        std::fs::create_dir(dir.join("real")).unwrap();
        std::os::unix::fs::symlink(dir.join("real"), dir.join("link")).unwrap();
        let through = DirEntry::open(&dir.join("link/file")).unwrap_err();
        let refused = [rustix::io::Errno::LOOP, rustix::io::Errno::NOTDIR];
        assert!(
            refused
                .map(|e| Some(e.raw_os_error()))
                .contains(&through.raw_os_error()),
            "{through}"
        );

        std::fs::write(dir.join("real/secret"), "s").unwrap();
        std::os::unix::fs::symlink(dir.join("real/secret"), dir.join("name")).unwrap();
        let entry = DirEntry::open(&dir.join("name")).unwrap();
        assert_eq!(entry.find().unwrap(), Found::Symlink);
        assert!(entry.open_regular().is_err());
        assert!(entry.remove().unwrap(), "removes the link itself");
        assert_eq!(read(&dir, "real/secret"), "s");
        assert!(!entry.remove().unwrap());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_fifo_is_refused_without_blocking() {
        let dir = temp_dir("fifo");
        rustix::fs::mknodat(
            rustix::fs::CWD,
            dir.join("pipe").as_path(),
            FileType::Fifo,
            Mode::from_raw_mode(0o600),
            0,
        )
        .unwrap();
        let entry = DirEntry::open(&dir.join("pipe")).unwrap();
        assert_eq!(entry.find().unwrap(), Found::Other);
        assert!(entry.open_regular().is_err());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

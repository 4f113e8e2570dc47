//! `write_file` and its undo: the target checked (phoenix's own files first, then the policy's
//! writable folders, then what is at the name), the old bytes backed up before, the file
//! replaced atomically, restored (or removed) by the undo, and what a crash left removed.

use super::*;

/// New files get this mode; replaced files keep theirs.
pub(super) const NEW_FILE_MODE: u32 = 0o644;

/// Runs blocking file work (a copy may be large) on tokio's blocking pool, not on a worker
/// thread that serves the API.
pub(super) async fn off_the_runtime<T: Send + 'static>(
    work: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(work)
        .await
        .unwrap_or_else(|e| Err(std::io::Error::other(format!("file task: {e}"))))
}

impl Effects {
    /// Carries out a `write_file`: replaces the file (its owner and mode kept, setuid and setgid
    /// dropped) under the temporary name its undo recorded.
    pub(super) async fn write_file(
        &self,
        path: &str,
        content: &str,
        caps: &Capabilities,
        undo: Option<&Undo>,
    ) -> Result<String, EffectError> {
        let entry = self.checked_target(path, caps)?;
        let shown = entry.path().display().to_string();
        let bytes = content.as_bytes().to_vec();
        let written = bytes.len();
        let temp = undo.and_then(Undo::temp).map(str::to_owned);
        off_the_runtime(move || {
            // New content keeps the file's owner and mode, but never its setuid or
            // setgid bit, as when the kernel lets someone else write a file.
            let (mode, owner) = match entry.find()? {
                Found::File { mode, owner } => (mode & !0o6000, Some(owner)),
                _ => (NEW_FILE_MODE, None),
            };
            let temp = TempName::from_record(temp.as_deref());
            entry.replace(temp, mode, owner, |file| {
                std::io::Write::write_all(file, &bytes)
            })
        })
        .await
        .map_err(|e| EffectError::File(format!("{shown}: {e}")))?;
        Ok(format!("wrote {written} bytes to {shown}"))
    }

    /// The file a `write_file` action may replace: allowed by the policy (lexically), its
    /// directory really inside an allowed directory once symlinks are resolved (then opened
    /// without following any, see [`crate::fs`]), and not itself a symlink or anything but a
    /// regular file.
    pub(super) fn checked_target(
        &self,
        path: &str,
        caps: &Capabilities,
    ) -> Result<DirEntry, EffectError> {
        let denied = |why: &str| EffectError::NotAllowed(format!("write to `{path}`: {why}"));
        self.refuse_own_ground(path)?;
        let target = writable_target(path, caps, &self.work_dir)
            .ok_or_else(|| denied("not under a writable directory"))?;
        let (Some(parent), Some(name)) = (target.parent(), target.file_name()) else {
            return Err(denied("no parent directory"));
        };
        let real_parent = parent
            .canonicalize()
            .map_err(|e| denied(&format!("its directory: {e}")))?;
        let inside = caps
            .writable_dirs
            .iter()
            .filter_map(|dir| self.work_dir.join(dir).canonicalize().ok())
            .any(|dir| real_parent.starts_with(dir));
        if !inside {
            return Err(denied(
                "its directory resolves outside the writable directories",
            ));
        }
        let entry = DirEntry::open(&real_parent.join(name))
            .map_err(|e| denied(&format!("its directory: {e}")))?;
        self.containment
            .check_write(&entry)
            .map_err(EffectError::ReachesPhoenix)?;
        match entry.find() {
            Ok(Found::Symlink) => Err(denied("it is a symlink")),
            Ok(Found::Other) => Err(denied("it is not a regular file")),
            Ok(Found::Nothing | Found::File { .. }) => Ok(entry),
            Err(e) => Err(EffectError::File(format!(
                "{}: {e}",
                entry.path().display()
            ))),
        }
    }

    /// Refuses a write whose path, wherever its links and `..` lead, is one of phoenix's own
    /// files or lies inside one of its folders (by path, and by the identity of every folder
    /// along it): whatever the policy allows, and before what it allows is looked at, so such a
    /// plan always ends `capability_denied`. (The write's own open is checked again.)
    pub(super) fn refuse_own_ground(&self, path: &str) -> Result<(), EffectError> {
        let joined = self.work_dir.join(path);
        let (Some(parent), Some(name)) = (joined.parent(), joined.file_name()) else {
            return Ok(());
        };
        // A folder that does not exist holds nothing to write into (the write fails later).
        let Ok(real_parent) = parent.canonicalize() else {
            return Ok(());
        };
        match DirEntry::open(&real_parent.join(name)) {
            Ok(entry) => self
                .containment
                .check_write(&entry)
                .map_err(EffectError::ReachesPhoenix),
            Err(_) => Ok(()),
        }
    }

    /// Before an action runs: how to undo it, saving what the undo needs (a file's previous
    /// bytes go to `backup`, flushed to disk). `None` for actions that cannot be undone.
    pub async fn prepare_undo(
        &self,
        action: &Action,
        caps: &Capabilities,
        backup: &std::path::Path,
    ) -> Result<Option<Undo>, EffectError> {
        let Action::WriteFile { path, .. } = action else {
            return Ok(None);
        };
        let entry = self.checked_target(path, caps)?;
        let target = entry.path();
        // One name per recorded write (its backup path is unique to it).
        let temp = Some(fs::recorded_temp_name(
            backup.as_os_str().as_encoded_bytes(),
        ));
        let backup = backup.to_owned();
        let shown = target.display().to_string();
        off_the_runtime(move || {
            let Found::File { mode, owner } = entry.find()? else {
                // Not there: undone by removing what the action creates. (A symlink or other
                // kind appearing since the check is refused when the action writes.)
                return Ok(Undo::RestoreFile {
                    path: target,
                    backup: None,
                    mode: None,
                    owner: None,
                    temp,
                });
            };
            // Copied by the kernel, not read into memory: the file may be a large log a patch
            // empties.
            let mut source = entry.open_regular()?;
            fs::replace_own_file(&backup, 0o600, |file| {
                std::io::copy(&mut source, file).map(|_| ())
            })?;
            Ok(Undo::RestoreFile {
                path: target,
                backup: Some(backup),
                mode: Some(mode),
                owner: Some(owner),
                temp,
            })
        })
        .await
        .map(Some)
        .map_err(|e| EffectError::File(format!("backing up {shown}: {e}")))
    }

    /// Removes what an action interrupted by a crash may have left behind (a write's temporary
    /// file), when it is not to be undone; what was removed, if anything. The undo does this too.
    pub async fn clear_leftover(&self, undo: &Undo) -> Result<Option<String>, EffectError> {
        let Undo::RestoreFile {
            path,
            temp: Some(temp),
            ..
        } = undo.clone()
        else {
            return Ok(None);
        };
        let shown = path.display().to_string();
        off_the_runtime(move || DirEntry::open(&path)?.remove_leftover(&temp))
            .await
            .map(|removed| removed.then(|| format!("removed the temporary file of {shown}")))
            .map_err(|e| EffectError::File(format!("removing the temporary file of {shown}: {e}")))
    }

    /// Undoes one action; idempotent, so a rollback interrupted by a crash can run again. The
    /// recorded path has no symlinks along it; one put there since is refused, not followed.
    /// What the write left at its temporary name, if a crash stopped it there, goes too.
    pub async fn undo(&self, undo: &Undo) -> Result<String, EffectError> {
        let Undo::RestoreFile {
            path,
            backup,
            mode,
            owner,
            temp,
        } = undo.clone();
        let shown = path.display().to_string();
        let containment = Arc::clone(&self.containment);
        // The recorded path is checked like a write's: an undo never writes phoenix's own files.
        let open = move |path: &std::path::Path| {
            let entry = DirEntry::open(path)?;
            containment
                .check_write(&entry)
                .map_err(std::io::Error::other)?;
            Ok::<_, std::io::Error>(entry)
        };
        match backup {
            Some(backup) => off_the_runtime(move || {
                let mut source = std::fs::File::open(&backup).map_err(|e| {
                    std::io::Error::new(
                        e.kind(),
                        format!("reading backup {}: {e}", backup.display()),
                    )
                })?;
                let mode = mode.unwrap_or(NEW_FILE_MODE);
                let temp = TempName::from_record(temp.as_deref());
                open(&path)?.replace(temp, mode, owner, |file| {
                    std::io::copy(&mut source, file).map(|_| ())
                })
            })
            .await
            .map(|()| format!("restored {shown}"))
            .map_err(|e| EffectError::File(format!("restoring {shown}: {e}"))),
            None => off_the_runtime(move || {
                let entry = open(&path)?;
                if let Some(temp) = &temp {
                    entry.remove_leftover(temp)?;
                }
                entry.remove()
            })
            .await
            .map(|removed| {
                if removed {
                    format!("removed {shown} (it did not exist before)")
                } else {
                    format!("{shown} already absent")
                }
            })
            .map_err(|e| EffectError::File(format!("removing {shown}: {e}"))),
        }
    }
}

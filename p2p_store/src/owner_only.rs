//! Files only their owner may read or write: the control API's token and the
//! libp2p identity key. Whoever reads either can act as this store.

use std::io::Write as _;
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

/// What [`create`] found at the path.
pub(crate) enum Created {
    Written,
    /// Another process made it first; its contents are what counts.
    Existed,
}

/// Creates `path` holding `contents` with mode 0600 from the first byte: a
/// temporary sibling created exclusively with that mode and synced, then
/// hard-linked into place, so the file is never readable by others nor seen
/// half-written.
pub(crate) fn create(path: &Path, contents: &[u8]) -> std::io::Result<Created> {
    let mut tmp_name = path.as_os_str().to_owned();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = PathBuf::from(tmp_name);
    let _ = std::fs::remove_file(&tmp);
    let written = (|| {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        // The umask can only remove bits; make sure of 0600 anyway.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(contents)?;
        f.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => Ok(Created::Written),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(Created::Existed),
        Err(e) => Err(e),
    }
}

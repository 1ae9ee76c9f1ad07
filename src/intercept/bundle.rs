//! `ca_bundle_out`: bearerd's CA followed by every root bearerd trusts, written atomically
//! at start, so one file serves apps as `SSL_CERT_FILE`, `REQUESTS_CA_BUNDLE` and the like.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::{OpenOptionsExt as _, PermissionsExt as _};
use std::path::Path;

use rustls_pki_types::CertificateDer;

use crate::tls::pem_certificate;

/// Public certificates only: anyone on the machine may read them.
const MODE: u32 = 0o644;

/// Writes `ca_pem` then `roots` to `path`: into a temporary file beside it, synced, then
/// renamed over it, so an app never reads half a bundle.
pub(super) fn write(path: &Path, ca_pem: &str, roots: &[CertificateDer<'static>]) -> io::Result<()> {
    let mut text = String::with_capacity(ca_pem.len() * (roots.len() + 1));
    text.push_str(ca_pem);
    for root in roots {
        text.push_str(&pem_certificate(root));
    }
    let dir = path
        .parent()
        .filter(|dir| !dir.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "names no file"))?;
    let temporary = dir.join(format!(".{}.{}.tmp", name.to_string_lossy(), std::process::id()));
    let written = write_synced(&temporary, text.as_bytes()).and_then(|()| fs::rename(&temporary, path));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written?;
    // The rename itself survives a crash once the directory is synced.
    File::open(dir)?.sync_all()
}

fn write_synced(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut file = OpenOptions::new().write(true).create_new(true).mode(MODE).open(path)?;
    // The umask may have narrowed the mode given at creation.
    file.set_permissions(fs::Permissions::from_mode(MODE))?;
    file.write_all(bytes)?;
    file.sync_all()
}

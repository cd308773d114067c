//! The content-addressed file store (SPEC §6), worker side.
//!
//! A blob lives at `<files_dir>/<first 2 hex of its sha256>/<sha256>`, so identical
//! uploads share one blob and a blob never changes once it is there. An upload is written
//! to a temp file under `<files_dir>/tmp/`, hashed as it arrives, fsynced, then renamed
//! into place (atomic: a reader sees the whole blob or none) and the directory fsynced;
//! only then does the writer record the `files` row, so a recorded file always has its
//! bytes. A crash can leave a blob without a row (never served) or a temp file (deleted at
//! the next start), never a row without its blob; so can a refused `RecordFile`.
//!
//! [`sweep`] removes those: blobs that no `files` row names and temp files of no live
//! upload, once they are older than a grace period. A blob's age is its modification time,
//! which `finish` sets to now whether it puts the blob in place or keeps an identical one
//! already there, so a blob whose row is about to be committed is never old. The sweep and
//! `finish` take turns on [`BLOBS`] for that last step.
//!
//! The loop streams the bytes; every call here blocks on the file system, so it runs on
//! the workers only. [`Upload`] and [`Download`] travel between the two inside ops and
//! effects; an `Upload` that is dropped anywhere (an error, an expired job, a closed
//! connection) removes its temp file.

use std::collections::{BTreeSet, HashSet};
use std::ffi::OsString;
use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, SystemTime};

use log::{error, warn};
use rand_core::{OsRng, RngCore};
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::chat::ops::{obj, sid, Effect, Op, OpResult, Settings, Step, WriterState};
use crate::chat::roles;
use crate::protocol::ApiError;
use crate::store::{Db, RowExt, StoreError, Val};
use crate::time::now_ms;

/// SPEC §6: larger uploads are refused (`too_large`, HTTP 413) and nothing is kept.
pub const MAX_UPLOAD_BYTES: u64 = 100 * 1024 * 1024;
/// File names and content types are echoed in HTTP headers: keep them short.
const MAX_NAME_CHARS: usize = 255;
const MAX_CONTENT_TYPE_CHARS: usize = 255;
/// Temp files are named `<random hex>.part`; only such names are swept.
const TEMP_SUFFIX: &str = ".part";

/// Held by `finish` while it puts a blob in place or keeps an identical stored one (and
/// refreshes its age), and by the sweep while it checks a blob's age and removes it: an
/// upload that reuses an old unreferenced blob either finds it gone (and renames its own
/// bytes into place) or makes it young before the sweep looks again.
static BLOBS: Mutex<()> = Mutex::new(());

/// The temp file names of this process's uploads in progress: the sweep leaves them alone
/// however long a slow client takes (the file's age only moves when a chunk is written).
static LIVE_TEMPS: Mutex<BTreeSet<OsString>> = Mutex::new(BTreeSet::new());

/// A poisoned lock only means another thread panicked holding it; the data is a set of
/// names (or nothing), always usable.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// An upload in progress: its temp file, the running hash and what the row will say.
pub struct Upload {
    file: File,
    path: PathBuf,
    hasher: Sha256,
    size: u64,
    user: i64,
    server_id: i64,
    channel_id: i64,
    name: String,
    content_type: String,
    /// Set once the temp file was renamed into the store (or dropped as a duplicate).
    committed: bool,
}

impl Upload {
    /// Bytes written so far.
    pub fn size(&self) -> u64 {
        self.size
    }
}

impl Drop for Upload {
    fn drop(&mut self) {
        if !self.committed {
            if let Err(e) = fs::remove_file(&self.path) {
                if e.kind() != io::ErrorKind::NotFound {
                    warn!("cannot remove temp upload {}: {e}", self.path.display());
                }
            }
        }
        if let Some(name) = self.path.file_name() {
            lock(&LIVE_TEMPS).remove(name);
        }
    }
}

impl fmt::Debug for Upload {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Upload")
            .field("path", &self.path)
            .field("size", &self.size)
            .field("user", &self.user)
            .field("channel_id", &self.channel_id)
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// An open blob and the metadata the HTTP response needs.
pub struct Download {
    file: File,
    file_id: i64,
    size: u64,
    name: String,
    content_type: String,
    sha256: String,
}

impl Download {
    pub fn file_id(&self) -> i64 {
        self.file_id
    }
    pub fn size(&self) -> u64 {
        self.size
    }
    pub fn name(&self) -> &str {
        &self.name
    }
    pub fn content_type(&self) -> &str {
        &self.content_type
    }
    pub fn sha256(&self) -> &str {
        &self.sha256
    }
}

impl fmt::Debug for Download {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Download")
            .field("file_id", &self.file_id)
            .field("size", &self.size)
            .field("sha256", &self.sha256)
            .finish_non_exhaustive()
    }
}

/// A full disk is a storage outage for the client (`unavailable`); anything else is ours.
fn io_error(what: &str, path: &Path, e: io::Error) -> ApiError {
    if matches!(e.raw_os_error(), Some(libc::ENOSPC) | Some(libc::EDQUOT)) {
        warn!("{what} {}: {e}", path.display());
        return ApiError::unavailable("file storage is full; nothing was kept");
    }
    error!("{what} {}: {e}", path.display());
    ApiError::internal("file storage error")
}

fn tmp_dir(files_dir: &Path) -> PathBuf {
    files_dir.join("tmp")
}

/// Where the blob with this digest lives. The digest must be 64 lower-case hex digits
/// (it comes from the database when downloading: never let it name another path).
fn blob_path(files_dir: &Path, sha256: &str) -> Option<PathBuf> {
    is_digest(sha256).then(|| files_dir.join(&sha256[..2]).join(sha256))
}

fn is_lower_hex(s: &str) -> bool {
    s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn is_digest(s: &str) -> bool {
    s.len() == 64 && is_lower_hex(s)
}

/// At pool start, before any worker runs: creates `<files_dir>/tmp` and deletes the
/// temp files a crash left behind (no upload can be in progress yet).
pub fn prepare_dir(files_dir: &Path) -> io::Result<()> {
    let tmp = tmp_dir(files_dir);
    fs::create_dir_all(&tmp)?;
    for entry in fs::read_dir(&tmp)? {
        let entry = entry?;
        let name = entry.file_name();
        if name.to_str().is_some_and(|n| n.ends_with(TEMP_SUFFIX)) && entry.file_type()?.is_file() {
            if let Err(e) = fs::remove_file(entry.path()) {
                warn!("cannot remove leftover upload {}: {e}", entry.path().display());
            }
        }
    }
    Ok(())
}

/// fsync a directory, so a rename or a new entry in it survives a power loss.
fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn check_text(what: &str, v: &str, max: usize) -> Result<(), ApiError> {
    if v.is_empty() {
        return Err(ApiError::bad_request(format!("{what} must not be empty")));
    }
    if v.chars().count() > max {
        return Err(ApiError::bad_request(format!("{what} is longer than {max} characters")));
    }
    // Both end up in response headers (Content-Disposition, Content-Type).
    if v.chars().any(char::is_control) {
        return Err(ApiError::bad_request(format!(
            "{what} must not contain control characters"
        )));
    }
    Ok(())
}

/// `Op::UploadBegin`: the caller must be allowed to post in the channel (a member of its
/// live server, a live text channel: the POST_MESSAGE rule); opens the temp file.
pub fn begin(
    db: &mut dyn Db,
    s: &Settings,
    user: i64,
    channel_id: i64,
    name: String,
    content_type: String,
) -> OpResult<Step> {
    check_text("name", &name, MAX_NAME_CHARS)?;
    let content_type = if content_type.is_empty() {
        "application/octet-stream".to_string()
    } else {
        content_type
    };
    check_text("content type", &content_type, MAX_CONTENT_TYPE_CHARS)?;
    if !content_type.is_ascii() {
        return Err(ApiError::bad_request("content type must be ASCII").into());
    }
    let (m, kind) = roles::channel_member(db, channel_id, user)?;
    if kind != "text" {
        return Err(ApiError::bad_request("files go to text channels").into());
    }
    let tmp = tmp_dir(&s.files_dir);
    let mut random = [0u8; 16];
    OsRng.fill_bytes(&mut random);
    let path = tmp.join(format!("{}{TEMP_SUFFIX}", hex::encode(random)));
    let open = || OpenOptions::new().write(true).create_new(true).open(&path);
    let file = match open() {
        // The tmp dir is made at start; recreate it if someone removed it since.
        Err(e) if e.kind() == io::ErrorKind::NotFound => fs::create_dir_all(&tmp).and_then(|_| open()),
        r => r,
    }
    .map_err(|e| io_error("cannot create temp upload", &path, e))?;
    if let Some(name) = path.file_name() {
        lock(&LIVE_TEMPS).insert(name.to_os_string());
    }
    let upload = Upload {
        file,
        path,
        hasher: Sha256::new(),
        size: 0,
        user,
        server_id: m.server_id,
        channel_id,
        name,
        content_type,
        committed: false,
    };
    Ok(Step::Done(obj([]), Effect::Upload(Box::new(upload))))
}

/// `Op::UploadWrite`: appends and hashes one chunk. Going over the limit ends the upload
/// (`too_large`; the dropped upload removes its temp file).
pub fn write(mut upload: Box<Upload>, bytes: &[u8]) -> OpResult<Step> {
    let total = upload.size.saturating_add(bytes.len() as u64);
    if total > MAX_UPLOAD_BYTES {
        return Err(ApiError::new(
            crate::protocol::ErrorCode::TooLarge,
            format!("files are limited to {MAX_UPLOAD_BYTES} bytes"),
        )
        .into());
    }
    if let Err(e) = upload.file.write_all(bytes) {
        return Err(io_error("cannot write temp upload", &upload.path, e).into());
    }
    upload.hasher.update(bytes);
    upload.size = total;
    Ok(Step::Done(obj([]), Effect::Upload(upload)))
}

/// `Op::UploadFinish`: makes the blob durable under its digest, then hands on to the
/// writer, which records the row ([`record`]).
pub fn finish(s: &Settings, mut upload: Box<Upload>) -> OpResult<Step> {
    // The blob's age for the sweep starts now, not at the last chunk written.
    upload
        .file
        .set_modified(SystemTime::now())
        .map_err(|e| io_error("cannot set the time of temp upload", &upload.path, e))?;
    upload
        .file
        .sync_all()
        .map_err(|e| io_error("cannot fsync temp upload", &upload.path, e))?;
    let sha256 = hex::encode(std::mem::take(&mut upload.hasher).finalize());
    let dest = blob_path(&s.files_dir, &sha256).ok_or_else(|| ApiError::internal("bad digest"))?;
    let shard = dest.parent().unwrap_or(&s.files_dir).to_path_buf();
    if !shard.is_dir() {
        fs::create_dir_all(&shard).map_err(|e| io_error("cannot create blob directory", &shard, e))?;
        sync_dir(&s.files_dir).map_err(|e| io_error("cannot fsync", &s.files_dir, e))?;
    }
    // Same digest and size: the same bytes are already stored (dedupe); made young, so
    // the sweep leaves it to the row about to be committed. A blob of another size under
    // this name can only be damage; the rename below replaces it.
    let blobs = lock(&BLOBS);
    let stored = fs::metadata(&dest).ok().filter(|m| m.is_file()).map(|m| m.len());
    let kept = stored == Some(upload.size) && touch(&dest).is_ok();
    if !kept {
        fs::rename(&upload.path, &dest).map_err(|e| io_error("cannot move upload into place", &dest, e))?;
    }
    drop(blobs);
    if kept {
        if let Err(e) = fs::remove_file(&upload.path) {
            warn!("cannot remove duplicate upload {}: {e}", upload.path.display());
        }
    } else {
        sync_dir(&shard).map_err(|e| io_error("cannot fsync", &shard, e))?;
    }
    upload.committed = true;
    Ok(Step::Write(Op::RecordFile {
        user: upload.user,
        server_id: upload.server_id,
        channel_id: upload.channel_id,
        name: std::mem::take(&mut upload.name),
        content_type: std::mem::take(&mut upload.content_type),
        size: upload.size as i64,
        sha256,
    }))
}

/// Sets a stored blob's modification time to now.
fn touch(path: &Path) -> io::Result<()> {
    File::open(path)?.set_modified(SystemTime::now())
}

/// What a [`sweep`] removed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Swept {
    /// Blobs no `files` row names.
    pub blobs: usize,
    pub blob_bytes: u64,
    /// Temp files of uploads that are not in progress.
    pub temps: usize,
}

/// Why a sweep stopped before the end.
#[derive(Debug)]
pub enum SweepError {
    /// The files directory (or its `tmp/`) cannot be listed.
    Io(PathBuf, io::Error),
    /// Storage did not say which digests are referenced; nothing more was removed.
    Store(StoreError),
}

impl fmt::Display for SweepError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SweepError::Io(p, e) => write!(f, "cannot list {}: {e}", p.display()),
            SweepError::Store(e) => write!(f, "{e}"),
        }
    }
}

impl std::error::Error for SweepError {}

/// When the orphan sweep runs (`Config::file_gc`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SweepSchedule {
    /// Only files older than this are removed.
    pub grace: Duration,
    /// The time between two sweeps.
    pub every: Duration,
}

/// Digests asked about per query; a short chunk is padded, so there is one statement shape.
const SWEEP_LOOKUP: usize = 64;

/// The orphan sweep, on a worker (never the loop): removes every blob that no `files` row
/// names and every temp file of no live upload, if older than `grace` at `now`. `stop` is
/// asked between shard directories (shutdown). Removes nothing younger than `grace`, so an
/// upload between its rename and its commit keeps its blob.
pub fn sweep(
    db: &mut dyn Db,
    files_dir: &Path,
    grace: Duration,
    now: SystemTime,
    stop: &mut dyn FnMut() -> bool,
) -> Result<Swept, SweepError> {
    let cutoff = now.checked_sub(grace).unwrap_or(SystemTime::UNIX_EPOCH);
    let mut swept = Swept::default();
    sweep_temps(files_dir, cutoff, &mut swept)?;
    let shards = fs::read_dir(files_dir).map_err(|e| SweepError::Io(files_dir.to_path_buf(), e))?;
    for shard in shards {
        if stop() {
            break;
        }
        let shard = shard.map_err(|e| SweepError::Io(files_dir.to_path_buf(), e))?;
        let name = shard.file_name();
        let Some(prefix) = name.to_str().filter(|n| n.len() == 2 && is_lower_hex(n)) else {
            continue;
        };
        if !shard.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        let dir = shard.path();
        let entries = match fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(e) => {
                warn!("file sweep: cannot list {}: {e}", dir.display());
                continue;
            }
        };
        let old: Vec<String> = entries
            .flatten()
            .filter(|e| e.metadata().is_ok_and(|m| old_file(&m, cutoff)))
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| is_digest(n) && n.starts_with(prefix))
            .collect();
        for chunk in old.chunks(SWEEP_LOOKUP) {
            let referenced = referenced(db, chunk).map_err(SweepError::Store)?;
            for sha in chunk.iter().filter(|d| !referenced.contains(*d)) {
                if let Some(bytes) = remove_if_old(&dir.join(sha), cutoff) {
                    swept.blobs += 1;
                    swept.blob_bytes += bytes;
                }
            }
        }
    }
    Ok(swept)
}

/// A regular file (not a link or a directory) last modified at or before `cutoff`.
fn old_file(m: &fs::Metadata, cutoff: SystemTime) -> bool {
    m.is_file() && m.modified().is_ok_and(|t| t <= cutoff)
}

/// The digests among `digests` that some `files` row names.
fn referenced(db: &mut dyn Db, digests: &[String]) -> Result<HashSet<String>, StoreError> {
    let sql = format!(
        "SELECT DISTINCT sha256 FROM files WHERE sha256 IN ({})",
        vec!["?"; SWEEP_LOOKUP].join(", ")
    );
    let mut params: Vec<Val> = digests.iter().map(|d| Val::from(d.as_str())).collect();
    params.resize(SWEEP_LOOKUP, Val::Text(String::new()));
    db.query(&sql, &params)?.iter().map(|r| r.text(0)).collect()
}

/// Removes a blob if it is still old: `finish` may have made it young since it was listed.
/// Returns its size.
fn remove_if_old(path: &Path, cutoff: SystemTime) -> Option<u64> {
    let _blobs = lock(&BLOBS);
    let m = fs::symlink_metadata(path).ok().filter(|m| old_file(m, cutoff))?;
    match fs::remove_file(path) {
        Ok(()) => Some(m.len()),
        Err(e) => {
            warn!("file sweep: cannot remove {}: {e}", path.display());
            None
        }
    }
}

/// Temp files under `tmp/` of no live upload, older than `cutoff`.
fn sweep_temps(files_dir: &Path, cutoff: SystemTime, swept: &mut Swept) -> Result<(), SweepError> {
    let tmp = tmp_dir(files_dir);
    let entries = match fs::read_dir(&tmp) {
        Ok(entries) => entries,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(SweepError::Io(tmp, e)),
    };
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_str().is_some_and(|n| n.ends_with(TEMP_SUFFIX)) {
            continue;
        }
        // Held while removing, so an upload cannot start under this name meanwhile.
        let live = lock(&LIVE_TEMPS);
        if live.contains(&name) || !entry.metadata().is_ok_and(|m| old_file(&m, cutoff)) {
            continue;
        }
        match fs::remove_file(entry.path()) {
            Ok(()) => swept.temps += 1,
            Err(e) => warn!("file sweep: cannot remove {}: {e}", entry.path().display()),
        }
    }
    Ok(())
}

/// The `files` row's fields, as `Op::RecordFile` carries them.
pub struct NewFile {
    pub user: i64,
    pub server_id: i64,
    pub channel_id: i64,
    pub name: String,
    pub content_type: String,
    pub size: i64,
    pub sha256: String,
}

/// `Op::RecordFile`, in the writer's transaction: checks again that the uploader may post
/// in the channel (they may have been kicked while uploading), then inserts the row.
pub fn record(db: &mut dyn Db, w: &mut WriterState, f: NewFile) -> OpResult<serde_json::Map<String, Value>> {
    let (server_id, kind) = w.channel(db, f.channel_id)?;
    w.member(db, server_id, f.user)?;
    if server_id != f.server_id || kind != "text" {
        return Err(ApiError::bad_request("the channel changed during the upload").into());
    }
    if blob_path(Path::new(""), &f.sha256).is_none() || f.size < 0 {
        return Err(ApiError::bad_request("bad file digest or size").into());
    }
    let file_id = w.next_id(db)?;
    db.execute(
        "INSERT INTO files (file_id, server_id, channel_id, uploader_id, name, content_type, size, sha256, created_at) \
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        &[
            file_id.into(),
            server_id.into(),
            f.channel_id.into(),
            f.user.into(),
            f.name.as_str().into(),
            f.content_type.as_str().into(),
            f.size.into(),
            f.sha256.as_str().into(),
            now_ms().into(),
        ],
    )?;
    Ok(obj([
        ("file_id", sid(file_id)),
        ("size", f.size.into()),
        ("sha256", f.sha256.into()),
        ("name", f.name.into()),
        ("content_type", f.content_type.into()),
        ("download_url", format!("/api/files/download/{file_id}").into()),
    ]))
}

/// `Op::DownloadOpen`: only members of the file's live server see it; for anyone else
/// the file does not exist (`not_found`, so ids cannot be probed).
pub fn open(db: &mut dyn Db, s: &Settings, user: i64, file_id: i64) -> OpResult<Step> {
    let row = db.query_row(
        "SELECT f.name, f.content_type, f.size, f.sha256 FROM files f \
         JOIN servers s ON s.server_id = f.server_id AND s.deleted = 0 \
         JOIN server_users m ON m.server_id = f.server_id AND m.user_id = ? WHERE f.file_id = ?",
        &[user.into(), file_id.into()],
    )?;
    let Some(r) = row else {
        return Err(ApiError::not_found("no such file").into());
    };
    let (name, content_type, size, sha256) = (r.text(0)?, r.text(1)?, r.int(2)?, r.text(3)?);
    let Some(path) = blob_path(&s.files_dir, &sha256) else {
        error!("file {file_id} has a malformed digest {sha256:?}");
        return Err(ApiError::internal("file storage error").into());
    };
    let file = File::open(&path).map_err(|e| io_error("cannot open blob", &path, e))?;
    // Content-Length comes from the row: a blob of another length would break the response.
    let len = file
        .metadata()
        .map_err(|e| io_error("cannot stat blob", &path, e))?
        .len();
    if i64::try_from(len).ok() != Some(size) {
        error!("blob {} has {len} bytes, its row says {size}", path.display());
        return Err(ApiError::internal("file storage error").into());
    }
    let data = obj([
        ("file_id", sid(file_id)),
        ("size", size.into()),
        ("name", name.as_str().into()),
        ("content_type", content_type.as_str().into()),
        ("sha256", sha256.as_str().into()),
    ]);
    let download = Download {
        file,
        file_id,
        size: len,
        name,
        content_type,
        sha256,
    };
    Ok(Step::Done(data, Effect::Download(Box::new(download))))
}

/// `Op::FileRead`: up to `len` bytes at `offset`; fewer only at the end of the file.
pub fn read(download: Box<Download>, offset: u64, len: usize) -> OpResult<Step> {
    let left = download.size.saturating_sub(offset);
    let want = usize::try_from(left).map_or(len, |l| l.min(len));
    let mut bytes = vec![0u8; want];
    let mut filled = 0;
    while filled < want {
        // `filled` fits a u64: it is at most `want`, which is at most a file size.
        match download.file.read_at(&mut bytes[filled..], offset + filled as u64) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                let path = format!("blob {}", download.sha256);
                return Err(io_error("cannot read", Path::new(&path), e).into());
            }
        }
    }
    bytes.truncate(filled);
    Ok(Step::Done(obj([]), Effect::FileChunk { download, bytes }))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant, SystemTime};

    use super::*;
    use crate::protocol::ErrorCode;
    use crate::testkit::{id, Data, Kit};

    fn temps(k: &Kit) -> Vec<String> {
        fs::read_dir(tmp_dir(&k.s.files_dir))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn begin(k: &mut Kit, user: i64, channel_id: i64, name: &str) -> Result<Box<Upload>, ApiError> {
        let op = Op::UploadBegin {
            user,
            channel_id,
            name: name.into(),
            content_type: "text/plain".into(),
        };
        match k.exec(op)? {
            (d, Effect::Upload(u)) if d.is_empty() => Ok(u),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn write(k: &mut Kit, upload: Box<Upload>, bytes: &[u8]) -> Result<Box<Upload>, ApiError> {
        match k.exec(Op::UploadWrite {
            upload,
            bytes: bytes.to_vec(),
        })? {
            (_, Effect::Upload(u)) => Ok(u),
            other => panic!("unexpected {other:?}"),
        }
    }

    /// A whole upload in the given chunks: the UploadFinish -> RecordFile reply.
    fn upload(k: &mut Kit, user: i64, channel_id: i64, chunks: &[&[u8]]) -> Data {
        let mut u = begin(k, user, channel_id, "notes.txt").unwrap();
        for c in chunks {
            u = write(k, u, c).unwrap();
        }
        k.ok(Op::UploadFinish { upload: u })
    }

    fn open(k: &mut Kit, user: i64, file_id: i64) -> Result<(Data, Box<Download>), ApiError> {
        match k.exec(Op::DownloadOpen { user, file_id })? {
            (d, Effect::Download(dl)) => Ok((d, dl)),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn read_at(k: &mut Kit, download: Box<Download>, offset: u64, len: usize) -> (Box<Download>, Vec<u8>) {
        match k.exec(Op::FileRead { download, offset, len }).unwrap() {
            (_, Effect::FileChunk { download, bytes }) => (download, bytes),
            other => panic!("unexpected {other:?}"),
        }
    }

    fn sha_hex(b: &[u8]) -> String {
        hex::encode(Sha256::digest(b))
    }

    #[test]
    fn chunks_become_one_blob_at_its_digest() {
        let mut k = Kit::new("files_chunks");
        let owner = k.user("ann");
        let (server_id, channel) = k.server(owner);
        let d = upload(
            &mut k,
            owner,
            channel,
            &[b"hello ", b"", b"content-addressed ", b"world"],
        );
        let all = b"hello content-addressed world";
        let sha = sha_hex(all);
        assert_eq!(d["sha256"], sha.as_str());
        assert_eq!(d["size"], all.len());
        assert_eq!(d["name"], "notes.txt");
        assert_eq!(d["content_type"], "text/plain");
        let file_id = id(&d, "file_id");
        assert_eq!(d["download_url"], format!("/api/files/download/{file_id}"));
        let blob = k.s.files_dir.join(&sha[..2]).join(&sha);
        assert_eq!(fs::read(&blob).unwrap(), all);
        assert!(temps(&k).is_empty(), "{:?}", temps(&k));
        let row = k.count(&format!(
            "SELECT COUNT(*) FROM files WHERE file_id = {file_id} AND server_id = {server_id} AND channel_id = {channel} \
             AND uploader_id = {owner} AND size = {} AND sha256 = '{sha}'",
            all.len()
        ));
        assert_eq!(row, 1);
        let (meta, dl) = open(&mut k, owner, file_id).unwrap();
        assert_eq!(meta["file_id"], file_id.to_string());
        assert_eq!(meta["sha256"], sha.as_str());
        assert_eq!(
            (dl.size(), dl.name(), dl.content_type(), dl.sha256()),
            (all.len() as u64, "notes.txt", "text/plain", sha.as_str())
        );
        let (_, bytes) = read_at(&mut k, dl, 0, 1 << 20);
        assert_eq!(bytes, all);
    }

    #[test]
    fn identical_content_is_one_blob_and_two_rows() {
        let mut k = Kit::new("files_dedupe");
        let owner = k.user("ann");
        let (_, channel) = k.server(owner);
        let a = upload(&mut k, owner, channel, &[b"same bytes"]);
        let b = upload(&mut k, owner, channel, &[b"same ", b"bytes"]);
        assert_ne!(a["file_id"], b["file_id"]);
        assert_eq!(a["sha256"], b["sha256"]);
        let sha = a["sha256"].as_str().unwrap();
        let shard: Vec<_> = fs::read_dir(k.s.files_dir.join(&sha[..2])).unwrap().collect();
        assert_eq!(shard.len(), 1);
        assert_eq!(
            k.count(&format!("SELECT COUNT(*) FROM files WHERE sha256 = '{sha}'")),
            2
        );
        assert!(temps(&k).is_empty());
        // Both rows download the shared blob.
        for d in [a, b] {
            let (_, dl) = open(&mut k, owner, id(&d, "file_id")).unwrap();
            assert_eq!(read_at(&mut k, dl, 0, 100).1, b"same bytes");
        }
    }

    #[test]
    fn over_the_limit_is_too_large_and_keeps_nothing() {
        let mut k = Kit::new("files_limit");
        let owner = k.user("ann");
        let (_, channel) = k.server(owner);
        let mut u = begin(&mut k, owner, channel, "big.bin").unwrap();
        // Pretend 100 MiB minus 4 bytes arrived already (writing them would only be slow).
        u.size = MAX_UPLOAD_BYTES - 4;
        let u = write(&mut k, u, b"1234").unwrap();
        assert_eq!(u.size(), MAX_UPLOAD_BYTES);
        let e = write(&mut k, u, b"5").unwrap_err();
        assert_eq!(e.code, ErrorCode::TooLarge);
        assert!(temps(&k).is_empty(), "{:?}", temps(&k));
        assert_eq!(k.count("SELECT COUNT(*) FROM files"), 0);
    }

    #[test]
    fn abort_drop_and_expired_jobs_leave_no_temp_file() {
        let mut k = Kit::new("files_abort");
        let owner = k.user("ann");
        let (_, channel) = k.server(owner);
        let u = begin(&mut k, owner, channel, "a").unwrap();
        let u = write(&mut k, u, b"partial").unwrap();
        assert_eq!(temps(&k).len(), 1);
        let (d, effect) = k.exec(Op::UploadAbort { upload: u }).unwrap();
        assert!(d.is_empty() && matches!(effect, Effect::None));
        assert!(temps(&k).is_empty());

        let u = begin(&mut k, owner, channel, "b").unwrap();
        assert_eq!(temps(&k).len(), 1);
        drop(u); // e.g. the connection closed
        assert!(temps(&k).is_empty());

        // A real pool: a job past its deadline is answered without running, and its
        // upload goes with it.
        let u = begin(&mut k, owner, channel, "c").unwrap();
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let mut pool = crate::workers::Pool::start(&k.url, 2, 8, k.s.clone(), None, waker, Duration::ZERO).unwrap();
        let origin = crate::workers::Origin {
            conn: crate::token::ConnId { key: 0, generation: 0 },
            seq: Some(1),
            action: crate::protocol::Action::Ping,
            id: None,
            feed: None,
            submitted: Instant::now(),
        };
        let job = crate::workers::Job {
            origin,
            op: Op::UploadWrite {
                upload: u,
                bytes: b"late".to_vec(),
            },
            deadline: Instant::now() - Duration::from_secs(1),
        };
        pool.submit(job).unwrap();
        let done = pool.done_rx.recv_timeout(Duration::from_secs(10)).unwrap();
        assert!(matches!(done.effect, Effect::Failed));
        assert!(String::from_utf8_lossy(&done.frame).contains("unavailable"));
        assert!(temps(&k).is_empty(), "{:?}", temps(&k));
        pool.shutdown();
    }

    #[test]
    fn begin_checks_the_post_rule_and_the_name() {
        let mut k = Kit::new("files_begin");
        let owner = k.user("ann");
        let stranger = k.user("bob");
        let (server_id, channel) = k.server(owner);
        let code =
            |k: &mut Kit, user, channel, name: &str| begin(k, user, channel, name).map(|_| ()).map_err(|e| e.code);
        assert_eq!(code(&mut k, stranger, channel, "a"), Err(ErrorCode::Forbidden));
        assert_eq!(code(&mut k, owner, 12345, "a"), Err(ErrorCode::NotFound));
        assert_eq!(code(&mut k, owner, channel, ""), Err(ErrorCode::BadRequest));
        assert_eq!(
            code(&mut k, owner, channel, &"x".repeat(256)),
            Err(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(&mut k, owner, channel, "a\r\nSet-Cookie: x"),
            Err(ErrorCode::BadRequest)
        );
        let bad_type = k.exec(Op::UploadBegin {
            user: owner,
            channel_id: channel,
            name: "a".into(),
            content_type: "text/plain\r\nX: y".into(),
        });
        assert_eq!(bad_type.map(|_| ()).map_err(|e| e.code), Err(ErrorCode::BadRequest));
        let voice = k.ok(Op::CreateChannel {
            user: owner,
            server_id,
            name: "talk".into(),
            kind: "voice".into(),
        });
        assert_eq!(
            code(&mut k, owner, id(&voice, "channel_id"), "a"),
            Err(ErrorCode::BadRequest)
        );
        // No content type: octet-stream.
        let u = match k.exec(Op::UploadBegin {
            user: owner,
            channel_id: channel,
            name: "ünïcode name.bin".into(),
            content_type: String::new(),
        }) {
            Ok((_, Effect::Upload(u))) => u,
            other => panic!("{other:?}"),
        };
        let d = k.ok(Op::UploadFinish { upload: u });
        assert_eq!(d["content_type"], "application/octet-stream");
        assert_eq!(d["size"], 0);
        // The channel went away during the upload: no row.
        let u = begin(&mut k, owner, channel, "late").unwrap();
        k.ok(Op::DeleteChannel {
            user: owner,
            channel_id: channel,
        });
        let e = k.exec(Op::UploadFinish { upload: u }).unwrap_err();
        assert_eq!(e.code, ErrorCode::NotFound);
        assert_eq!(code(&mut k, owner, channel, "a"), Err(ErrorCode::NotFound));
        assert_eq!(k.count("SELECT COUNT(*) FROM files"), 1);
        assert!(temps(&k).is_empty());
    }

    #[test]
    fn only_members_of_the_files_server_can_download() {
        let mut k = Kit::new("files_members");
        let owner = k.user("ann");
        let bob = k.user("bob");
        let (server_id, channel) = k.server(owner);
        let (_, elsewhere) = k.server(bob);
        let file_id = id(&upload(&mut k, owner, channel, &[b"secret"]), "file_id");
        let code = |k: &mut Kit, user, file_id| open(k, user, file_id).map(|_| ()).map_err(|e| e.code);
        assert_eq!(code(&mut k, bob, file_id), Err(ErrorCode::NotFound));
        assert_eq!(code(&mut k, owner, file_id + 1), Err(ErrorCode::NotFound));
        // Bob's own file in his server is no key to Ann's.
        let bobs = id(&upload(&mut k, bob, elsewhere, &[b"bob"]), "file_id");
        assert_eq!(code(&mut k, owner, bobs), Err(ErrorCode::NotFound));
        k.join(bob, server_id);
        assert_eq!(code(&mut k, bob, file_id), Ok(()));
        k.ok(Op::LeaveServer { user: bob, server_id });
        assert_eq!(code(&mut k, bob, file_id), Err(ErrorCode::NotFound));
        k.ok(Op::DeleteServer { user: owner, server_id });
        assert_eq!(code(&mut k, owner, file_id), Err(ErrorCode::NotFound));
    }

    #[test]
    fn file_read_at_offsets() {
        let mut k = Kit::new("files_read");
        let owner = k.user("ann");
        let (_, channel) = k.server(owner);
        let all: Vec<u8> = (0..10_000u32).map(|i| (i % 251) as u8).collect();
        let file_id = id(
            &upload(&mut k, owner, channel, &[&all[..4096], &all[4096..]]),
            "file_id",
        );
        let (_, mut dl) = open(&mut k, owner, file_id).unwrap();
        for (offset, len, want) in [
            (0u64, 0usize, &all[0..0]),
            (0, 4096, &all[..4096]),
            (4096, 4096, &all[4096..8192]),
            (8192, 4096, &all[8192..]),
            (9999, 1, &all[9999..]),
            (10_000, 4096, &all[0..0]),
            (20_000, 4096, &all[0..0]),
            (u64::MAX, usize::MAX, &all[0..0]),
            (1, usize::MAX, &all[1..]),
        ] {
            let (next, bytes) = read_at(&mut k, dl, offset, len);
            assert_eq!(bytes, want, "offset {offset} len {len}");
            dl = next;
        }
        // Damage is refused rather than served with a wrong Content-Length.
        let sha = dl.sha256().to_string();
        fs::write(k.s.files_dir.join(&sha[..2]).join(&sha), b"short").unwrap();
        assert_eq!(open(&mut k, owner, file_id).unwrap_err().code, ErrorCode::Internal);
    }

    #[test]
    fn start_sweeps_leftover_temp_files_only() {
        let k = Kit::new("files_sweep");
        let tmp = tmp_dir(&k.s.files_dir);
        fs::write(tmp.join("0123abcd.part"), b"crash").unwrap();
        fs::write(tmp.join("README"), b"not ours").unwrap();
        prepare_dir(&k.s.files_dir).unwrap();
        assert_eq!(temps(&k), vec!["README".to_string()]);
        assert!(blob_path(&k.s.files_dir, "../../etc/passwd").is_none());
        assert!(blob_path(&k.s.files_dir, &"A".repeat(64)).is_none());
    }

    /// UploadFinish as a reader runs it, without the writer's RecordFile after it: the
    /// blob is in place and its row is not (a crash or a refusal in between).
    fn finish_unrecorded(k: &mut Kit, upload: Box<Upload>) -> Op {
        match crate::chat::ops::run_read(k.db.as_mut(), &k.s, Op::UploadFinish { upload }) {
            Ok(Step::Write(op)) => op,
            Ok(Step::Done(d, e)) => panic!("unexpected {d:?} {e:?}"),
            Err(e) => panic!("{e:?}"),
        }
    }

    fn blob(k: &Kit, content: &[u8]) -> PathBuf {
        blob_path(&k.s.files_dir, &sha_hex(content)).unwrap()
    }

    /// Sets a file's modification time (its age, as the sweep sees it).
    fn set_mtime(path: &Path, t: SystemTime) {
        File::open(path).unwrap().set_modified(t).unwrap();
    }

    fn no_stop() -> bool {
        false
    }

    #[test]
    fn sweep_removes_old_unreferenced_blobs_and_stale_temp_files_only() {
        let mut k = Kit::new("files_gc");
        let owner = k.user("ann");
        let (_, channel) = k.server(owner);
        let dir = k.s.files_dir.clone();
        upload(&mut k, owner, channel, &[b"recorded"]);
        let u = begin(&mut k, owner, channel, "orphan").unwrap();
        let u = write(&mut k, u, b"orphan").unwrap();
        finish_unrecorded(&mut k, u);
        let u = begin(&mut k, owner, channel, "young").unwrap();
        let u = write(&mut k, u, b"young orphan").unwrap();
        finish_unrecorded(&mut k, u);
        // An upload still going on, whatever its temp file's age.
        let live = begin(&mut k, owner, channel, "live").unwrap();
        let live = write(&mut k, live, b"live ").unwrap();
        // A temp file an interrupted upload left behind, and files that are not ours.
        let tmp = tmp_dir(&dir);
        fs::write(tmp.join("0123abcd.part"), b"interrupted").unwrap();
        fs::write(tmp.join("README"), b"not ours").unwrap();
        let sha = sha_hex(b"orphan");
        fs::write(dir.join(&sha[..2]).join("notes.txt"), b"not a blob").unwrap();
        fs::create_dir_all(dir.join("other")).unwrap();
        fs::write(dir.join("other").join(&sha), b"not in its shard").unwrap();

        // The clock, two hours on: everything on disk is old but the young orphan.
        let hour = Duration::from_secs(3600);
        let now = SystemTime::now() + 2 * hour;
        set_mtime(&blob(&k, b"young orphan"), now - hour / 2);
        let swept = sweep(k.db.as_mut(), &dir, hour, now, &mut no_stop).unwrap();
        assert_eq!(
            swept,
            Swept {
                blobs: 1,
                blob_bytes: 6,
                temps: 1
            }
        );
        assert!(!blob(&k, b"orphan").exists());
        assert!(blob(&k, b"recorded").exists());
        assert!(blob(&k, b"young orphan").exists());
        let mut left = temps(&k);
        left.sort();
        assert_eq!(left.len(), 2, "{left:?}"); // the live upload's and README
        assert!(left.contains(&"README".to_string()));
        assert!(dir.join(&sha[..2]).join("notes.txt").exists());
        assert!(dir.join("other").join(&sha).exists());
        // The live upload goes on and is recorded.
        let live = write(&mut k, live, b"bytes").unwrap();
        let d = k.ok(Op::UploadFinish { upload: live });
        assert_eq!(d["sha256"], sha_hex(b"live bytes").as_str());
        // Nothing more to do; an hour later the young orphan goes too.
        assert_eq!(
            sweep(k.db.as_mut(), &dir, hour, now, &mut no_stop).unwrap(),
            Swept::default()
        );
        let swept = sweep(k.db.as_mut(), &dir, hour, now + hour, &mut no_stop).unwrap();
        assert_eq!(swept.blobs, 1);
        assert!(!blob(&k, b"young orphan").exists());
        assert!(blob(&k, b"recorded").exists() && blob(&k, b"live bytes").exists());
    }

    #[test]
    fn an_upload_deduplicated_onto_an_old_orphan_keeps_it_from_the_sweep() {
        let mut k = Kit::new("files_gc_dedupe");
        let owner = k.user("ann");
        let (_, channel) = k.server(owner);
        let dir = k.s.files_dir.clone();
        let hour = Duration::from_secs(3600);
        // An orphan from long ago.
        let u = begin(&mut k, owner, channel, "a").unwrap();
        let u = write(&mut k, u, b"same").unwrap();
        finish_unrecorded(&mut k, u);
        set_mtime(&blob(&k, b"same"), SystemTime::now() - 2 * hour);
        // The same bytes again: the upload keeps the stored blob and drops its own; its
        // row is committed a moment later. A sweep in between must not take the blob.
        let u = begin(&mut k, owner, channel, "b").unwrap();
        let u = write(&mut k, u, b"same").unwrap();
        let record = finish_unrecorded(&mut k, u);
        let swept = sweep(k.db.as_mut(), &dir, hour, SystemTime::now(), &mut no_stop).unwrap();
        assert_eq!(swept, Swept::default());
        let d = k.ok(record);
        let (_, dl) = open(&mut k, owner, id(&d, "file_id")).unwrap();
        assert_eq!(read_at(&mut k, dl, 0, 100).1, b"same");
    }

    #[test]
    fn sweep_stops_when_asked() {
        let mut k = Kit::new("files_gc_stop");
        let owner = k.user("ann");
        let (_, channel) = k.server(owner);
        let u = begin(&mut k, owner, channel, "a").unwrap();
        let u = write(&mut k, u, b"orphan").unwrap();
        finish_unrecorded(&mut k, u);
        let dir = k.s.files_dir.clone();
        let later = SystemTime::now() + Duration::from_secs(7200);
        let swept = sweep(k.db.as_mut(), &dir, Duration::from_secs(3600), later, &mut || true).unwrap();
        assert_eq!(swept, Swept::default());
        assert!(blob(&k, b"orphan").exists());
    }
}

//! The sealed state file (`state:`): the user grants' refresh tokens, kept across restarts.
//!
//! The file is one JSON object, `{"bearerd_state": 1, "alg": "A256GCM", "nonce": …,
//! "sealed": …}`. `sealed` holds the records, sealed with AES-256-GCM under `state.key_file`
//! with a fresh random nonce at every write and the header (format version and algorithm)
//! as associated data: a file opened with another key, cut short, or changed in any byte is
//! refused whole, never half-read, and the error says which of these it looks like without
//! quoting the file. A write goes to a temporary file in the same directory, which is
//! fsynced, renamed over the old one, and the directory fsynced, so a crash leaves the old
//! file or the new one.
//!
//! Each record belongs to one user-grant auth config, under a key derived from everything
//! that shapes its token ([`record_key`]): a config whose endpoint, client or scopes change
//! starts from a new consent instead of using a refresh token issued for something else.

use std::collections::BTreeMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use aws_lc_rs::aead::{AES_256_GCM, Aad, NONCE_LEN, Nonce, RandomizedNonceKey};
use aws_lc_rs::digest::{SHA256, digest};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use serde::{Deserialize, Serialize, Serializer};

use crate::config::{AuthConfig, StateConfig};
use crate::secret::{RefreshToken, SealingKey};

/// The format this bearerd writes and reads.
const VERSION: u64 = 1;
const ALG: &str = "A256GCM";
const TAG_LEN: usize = 16;

/// What one user-grant auth config keeps.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The auth config's id, for whoever reads an opened file.
    pub auth_config: String,
    /// The newest refresh token; `None` once the provider refused it (a new consent is
    /// needed).
    #[serde(default, serialize_with = "expose", skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<RefreshToken>,
    /// `refresh_token` grant: the SHA-256 (hex) of the `refresh_token_file` content the
    /// record started from, so a new file is told from the one already used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed_sha256: Option<String>,
    /// `refresh_token` grant: the hashes of the files this record's line replaced, newest
    /// last (a few). A process that still reads one of them (a Secret not yet updated in
    /// its pod) has an old file, not a new start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub superseded_seeds: Vec<String>,
    /// When it was written, in Unix seconds.
    pub updated_at: u64,
}

impl Record {
    #[must_use]
    pub fn new(auth_config: &str, refresh_token: Option<RefreshToken>, seed_sha256: Option<String>) -> Self {
        let updated_at = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs());
        Self {
            auth_config: auth_config.to_owned(),
            refresh_token,
            seed_sha256,
            superseded_seeds: Vec::new(),
            updated_at,
        }
    }

    /// This record as the successor of `before`: the files `before` started from, or
    /// replaced, are superseded (at most [`SUPERSEDED_KEPT`], newest last).
    #[must_use]
    pub fn succeeding(mut self, before: Option<&Record>) -> Self {
        let Some(before) = before else {
            return self;
        };
        let mut seeds = before.superseded_seeds.clone();
        seeds.extend(before.seed_sha256.clone());
        seeds.retain(|seed| Some(seed) != self.seed_sha256.as_ref());
        seeds.dedup();
        let skip = seeds.len().saturating_sub(SUPERSEDED_KEPT);
        self.superseded_seeds = seeds.split_off(skip);
        self
    }
}

/// How many replaced `refresh_token_file` hashes a record remembers: more than a Secret
/// is rotated while its pods catch up.
const SUPERSEDED_KEPT: usize = 8;

/// The plaintext is the only place a refresh token is written out.
#[allow(clippy::ref_option)] // serde's `serialize_with` lends the field as it is
fn expose<S: Serializer>(token: &Option<RefreshToken>, serializer: S) -> Result<S::Ok, S::Error> {
    token.as_ref().map(RefreshToken::expose).serialize(serializer)
}

/// The sealed content.
#[derive(Default, Serialize, Deserialize)]
struct Contents {
    records: BTreeMap<String, Record>,
}

/// The file as stored: a header, the nonce and the sealed records.
#[derive(Serialize, Deserialize)]
struct Envelope {
    bearerd_state: u64,
    alg: String,
    nonce: String,
    sealed: String,
}

/// Why a state file could not be read or written. Never quotes the file's content.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("state.file {path}: cannot read it: {cause}")]
    Read { path: String, cause: io::Error },
    #[error("state.file {path}: cannot write it: {cause}")]
    Write { path: String, cause: io::Error },
    #[error("state.file {path} is not a complete bearerd state file ({why}); it was not read")]
    Malformed { path: String, why: &'static str },
    #[error("state.file {path} has format {found}; this bearerd reads format {VERSION}; it was not read")]
    Version { path: String, found: String },
    #[error(
        "state.file {path} cannot be opened with state.key_file: it was sealed with another key, or altered since it was written; it was not read"
    )]
    Sealed { path: String },
}

/// The key of `config`'s record: the SHA-256 (hex) of its token cache key, which names the
/// config and every field that shapes its token.
#[must_use]
pub fn record_key(config: &AuthConfig) -> String {
    sha256_hex(config.cache_key().as_str().as_bytes())
}

/// SHA-256 of `bytes`, in lowercase hex.
#[must_use]
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    digest(&SHA256, bytes)
        .as_ref()
        .iter()
        .fold(String::new(), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}

/// The state file, open: its records in memory, each change written through.
pub struct StateStore {
    path: PathBuf,
    key: RandomizedNonceKey,
    records: Mutex<BTreeMap<String, Record>>,
}

impl StateStore {
    /// Reads `config.file`, or, when there is none yet, writes an empty one at once, so a
    /// directory bearerd cannot write to is found at start rather than at the first consent.
    pub fn open(config: &StateConfig) -> Result<Self, StateError> {
        let key = sealing_key(&config.key);
        let records = read(&config.file, &key)?;
        let store = Self {
            path: config.file.clone(),
            key,
            records: Mutex::new(records.clone().unwrap_or_default()),
        };
        if records.is_none() {
            store.write(&BTreeMap::new())?;
        }
        Ok(store)
    }

    /// The records of the state file at `path`, without keeping it open (for `bearerd
    /// check`); `None` when there is no file.
    pub fn read(path: &Path, key: &SealingKey) -> Result<Option<BTreeMap<String, Record>>, StateError> {
        read(path, &sealing_key(key))
    }

    /// The record under `key`.
    #[must_use]
    pub fn get(&self, key: &str) -> Option<Record> {
        self.records().get(key).cloned()
    }

    /// Puts `new` under `key` (or removes the record, with `None`) if the record there is
    /// still `expected`, and writes the file before returning. `Ok(false)`: another change
    /// came first, and nothing was done.
    ///
    /// When the write fails, the change is kept in memory all the same (a rotated refresh
    /// token is the only one the provider still honours) and written with the next change;
    /// the error says the file is behind.
    pub fn replace(&self, key: &str, expected: Option<&Record>, new: Option<Record>) -> Result<bool, StateError> {
        let mut records = self.records();
        if records.get(key) != expected {
            return Ok(false);
        }
        match new {
            Some(record) => records.insert(key.to_owned(), record),
            None => records.remove(key),
        };
        // Written under the lock, so the file never goes back to an older set of records.
        self.write(&records)?;
        Ok(true)
    }

    /// Puts `new` under `key` (or removes the record, with `None`) whatever is there, and
    /// writes the file before returning: a new consent overrides anything older. As with
    /// [`StateStore::replace`], a failed write keeps the change in memory.
    pub fn put(&self, key: &str, new: Option<Record>) -> Result<(), StateError> {
        let mut records = self.records();
        match new {
            Some(record) => records.insert(key.to_owned(), record),
            None => records.remove(key),
        };
        self.write(&records)
    }

    fn records(&self) -> MutexGuard<'_, BTreeMap<String, Record>> {
        // Every change is one insert or remove: a panic elsewhere leaves the map whole.
        self.records.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn write(&self, records: &BTreeMap<String, Record>) -> Result<(), StateError> {
        let failed = |cause| StateError::Write {
            path: self.path.display().to_string(),
            cause,
        };
        let contents = Contents {
            records: records.clone(),
        };
        let mut sealed = serde_json::to_vec(&contents).map_err(|err| failed(io::Error::other(err)))?;
        let nonce = self
            .key
            .seal_in_place_append_tag(Aad::from(associated_data(VERSION, ALG)), &mut sealed)
            .map_err(|_| failed(io::Error::other("sealing failed")))?;
        let envelope = Envelope {
            bearerd_state: VERSION,
            alg: ALG.to_owned(),
            nonce: BASE64.encode(nonce.as_ref()),
            sealed: BASE64.encode(&sealed),
        };
        let mut bytes = serde_json::to_vec(&envelope).map_err(|err| failed(io::Error::other(err)))?;
        bytes.push(b'\n');
        write_atomically(&self.path, &bytes).map_err(failed)
    }
}

fn sealing_key(key: &SealingKey) -> RandomizedNonceKey {
    // AES-256-GCM takes any 32-byte key, and a SealingKey is always 32 bytes.
    RandomizedNonceKey::new(&AES_256_GCM, key.expose()).expect("a 32-byte AES-256-GCM key")
}

/// The header, authenticated with the records: changing the version or the algorithm
/// breaks the seal as surely as changing the records.
fn associated_data(version: u64, alg: &str) -> String {
    format!("bearerd_state:{version}:{alg}")
}

fn read(path: &Path, key: &RandomizedNonceKey) -> Result<Option<BTreeMap<String, Record>>, StateError> {
    let shown = || path.display().to_string();
    let bytes = match fs::read(path) {
        Ok(bytes) => bytes,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(cause) => return Err(StateError::Read { path: shown(), cause }),
    };
    let malformed = |why| StateError::Malformed { path: shown(), why };
    let envelope: serde_json::Value =
        serde_json::from_slice(&bytes).map_err(|_| malformed("it is not complete JSON: cut short?"))?;
    match envelope.get("bearerd_state") {
        None => return Err(malformed("it has no bearerd_state header")),
        Some(serde_json::Value::Number(n)) if n.as_u64() == Some(VERSION) => {}
        Some(other) => {
            return Err(StateError::Version {
                path: shown(),
                found: other.to_string().chars().take(20).collect(),
            });
        }
    }
    let envelope: Envelope =
        serde_json::from_value(envelope).map_err(|_| malformed("its header is not alg, nonce and sealed text"))?;
    if envelope.alg != ALG {
        return Err(malformed("its alg is not A256GCM"));
    }
    let nonce = BASE64
        .decode(&envelope.nonce)
        .ok()
        .and_then(|nonce| <[u8; NONCE_LEN]>::try_from(nonce).ok())
        .ok_or_else(|| malformed("its nonce is not 12 bytes of base64"))?;
    let mut sealed = BASE64
        .decode(&envelope.sealed)
        .map_err(|_| malformed("its sealed part is not base64"))?;
    if sealed.len() < TAG_LEN {
        return Err(malformed("its sealed part is shorter than a tag"));
    }
    let aad = associated_data(envelope.bearerd_state, &envelope.alg);
    let plain = key
        .open_in_place(Nonce::assume_unique_for_key(nonce), Aad::from(aad), &mut sealed)
        .map_err(|_| StateError::Sealed { path: shown() })?;
    let contents: Contents =
        serde_json::from_slice(plain).map_err(|_| malformed("its sealed records are not ones this bearerd reads"))?;
    Ok(Some(contents.records))
}

/// Writes `bytes` to `path` so that a reader (or a crash) sees the old content or the new,
/// never part of either: a temporary file beside it, fsynced, renamed over it, and the
/// directory fsynced so the rename itself is durable. Readable by the owner only.
fn write_atomically(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "the path names no file"))?;
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir,
        _ => Path::new("."),
    };
    let temporary = dir.join(format!(
        ".{}.{}-{:016x}.tmp",
        name.to_string_lossy(),
        std::process::id(),
        fastrand::u64(..)
    ));
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(bytes)?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temporary, path));
    if let Err(err) = written {
        let _ = fs::remove_file(&temporary);
        return Err(err);
    }
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt as _;

    use super::*;

    /// A change made to a state file's JSON.
    type Change = Box<dyn FnOnce(&mut serde_json::Value)>;

    const TOKEN: &str = "rt-0123456789-very-secret";

    fn config(dir: &Path, key: u8) -> StateConfig {
        StateConfig {
            file: dir.join("state.json"),
            key_file: dir.join("key"),
            key: SealingKey::parse(&[key; 32]).unwrap(),
        }
    }

    #[test]
    fn a_successor_remembers_the_files_its_line_replaced_a_few_and_never_its_own() {
        let seed = |n: usize| Some(format!("{n:064x}"));
        let mut line = Record::new("crm", None, seed(0));
        for n in 1..=10 {
            line = Record::new("crm", None, seed(n)).succeeding(Some(&line));
        }
        let expected: Vec<String> = (2..=9).map(|n| format!("{n:064x}")).collect();
        assert_eq!(line.superseded_seeds, expected);
        // A rotation on the same line keeps the list, without the line's own file.
        let rotated = Record::new("crm", Some(RefreshToken::new("rt")), seed(10)).succeeding(Some(&line));
        assert_eq!(rotated.superseded_seeds, expected);
        // Going back to an older file takes it off the list and supersedes the newer.
        let back = Record::new("crm", None, seed(9)).succeeding(Some(&rotated));
        assert_eq!(back.superseded_seeds.last(), seed(10).as_ref());
        assert!(!back.superseded_seeds.contains(&format!("{:064x}", 9)));
    }

    fn record(token: &str) -> Record {
        Record::new("crm", Some(RefreshToken::new(token)), Some("ab".repeat(32)))
    }

    fn stored(dir: &Path) -> StateStore {
        let store = StateStore::open(&config(dir, 1)).unwrap();
        assert!(store.replace("k", None, Some(record(TOKEN))).unwrap());
        store
    }

    fn envelope(dir: &Path) -> serde_json::Value {
        serde_json::from_slice(&fs::read(dir.join("state.json")).unwrap()).unwrap()
    }

    fn rewrite(dir: &Path, change: impl FnOnce(&mut serde_json::Value)) {
        let mut value = envelope(dir);
        change(&mut value);
        fs::write(dir.join("state.json"), value.to_string()).unwrap();
    }

    fn refusal(dir: &Path, key: u8) -> String {
        match StateStore::open(&config(dir, key)) {
            Ok(_) => panic!("the state file was read"),
            Err(err) => err.to_string(),
        }
    }

    #[test]
    fn records_survive_a_reopen_and_a_missing_file_is_created_empty() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateStore::open(&config(dir.path(), 1)).unwrap();
        assert!(dir.path().join("state.json").is_file(), "written at open");
        assert_eq!(store.get("k"), None);
        let first = record(TOKEN);
        assert!(store.replace("k", None, Some(first.clone())).unwrap());
        assert!(store.replace("other", None, Some(record("rt-other"))).unwrap());
        drop(store);

        let again = StateStore::open(&config(dir.path(), 1)).unwrap();
        assert_eq!(again.get("k"), Some(first.clone()));
        assert_eq!(again.get("k").unwrap().refresh_token.unwrap().expose(), TOKEN);
        // Removed, and still removed after the next open.
        assert!(again.replace("other", Some(&record("rt-other")), None).unwrap());
        let records = StateStore::read(&dir.path().join("state.json"), &SealingKey::parse(&[1; 32]).unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(records.into_iter().collect::<Vec<_>>(), [("k".to_owned(), first)]);
        // Only the state file is left: no temporary file stays behind.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, ["state.json"]);
        let mode = fs::metadata(dir.path().join("state.json"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn the_file_holds_no_token_and_every_write_has_a_new_nonce() {
        let dir = tempfile::tempdir().unwrap();
        let store = stored(dir.path());
        let raw = fs::read_to_string(dir.path().join("state.json")).unwrap();
        for secret in [TOKEN, "very-secret", "crm", &"ab".repeat(32)] {
            assert!(!raw.contains(secret), "{secret} in {raw}");
        }
        let value = envelope(dir.path());
        assert_eq!(
            (value["bearerd_state"].as_u64(), value["alg"].as_str()),
            (Some(1), Some("A256GCM"))
        );
        // The same records written again: another nonce, another ciphertext.
        let current = store.get("k");
        assert!(store.replace("k", current.as_ref(), current.clone()).unwrap());
        let rewritten = envelope(dir.path());
        assert_ne!(value["nonce"], rewritten["nonce"]);
        assert_ne!(value["sealed"], rewritten["sealed"]);
    }

    #[test]
    fn a_change_that_lost_the_race_does_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let store = stored(dir.path());
        let stale = record("rt-stale");
        assert!(!store.replace("k", Some(&stale), None).unwrap());
        assert!(!store.replace("k", None, Some(record("rt-new"))).unwrap());
        assert_eq!(store.get("k").unwrap().refresh_token.unwrap().expose(), TOKEN);
        // A put does not ask.
        store.put("k", Some(record("rt-consent"))).unwrap();
        assert_eq!(store.get("k").unwrap().refresh_token.unwrap().expose(), "rt-consent");
        store.put("k", None).unwrap();
        assert_eq!(StateStore::open(&config(dir.path(), 1)).unwrap().get("k"), None);
    }

    #[test]
    fn another_key_is_refused_without_reading_anything() {
        let dir = tempfile::tempdir().unwrap();
        stored(dir.path());
        let message = refusal(dir.path(), 2);
        assert_eq!(
            message,
            format!(
                "state.file {} cannot be opened with state.key_file: it was sealed with another key, or altered since it was written; it was not read",
                dir.path().join("state.json").display()
            )
        );
    }

    #[test]
    fn a_file_cut_short_anywhere_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        stored(dir.path());
        let path = dir.path().join("state.json");
        let whole = fs::read(&path).unwrap();
        // Every length but the whole, and the whole less its trailing newline (still JSON).
        for len in 0..whole.len() - 1 {
            fs::write(&path, &whole[..len]).unwrap();
            let message = refusal(dir.path(), 1);
            assert!(message.contains("it was not read"), "{len}: {message}");
            assert!(!message.contains(TOKEN));
        }
        fs::write(&path, &whole[..0]).unwrap();
        assert!(refusal(dir.path(), 1).contains("(it is not complete JSON: cut short?)"));
    }

    #[test]
    fn any_change_to_the_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        stored(dir.path());
        let sealed_with = |change: fn(&mut Vec<u8>)| {
            move |value: &mut serde_json::Value| {
                let mut bytes = BASE64.decode(value["sealed"].as_str().unwrap()).unwrap();
                change(&mut bytes);
                value["sealed"] = BASE64.encode(bytes).into();
            }
        };
        let cases: Vec<(Change, &str)> = vec![
            (
                Box::new(sealed_with(|b| b[0] ^= 1)),
                "cannot be opened with state.key_file",
            ),
            (
                Box::new(sealed_with(|b| *b.last_mut().unwrap() ^= 0x80)),
                "cannot be opened",
            ),
            (Box::new(sealed_with(|b| b.truncate(b.len() - 1))), "cannot be opened"),
            (
                Box::new(sealed_with(|b| b.truncate(3))),
                "(its sealed part is shorter than a tag)",
            ),
            (
                Box::new(|v: &mut serde_json::Value| {
                    let mut nonce = BASE64.decode(v["nonce"].as_str().unwrap()).unwrap();
                    nonce[11] ^= 1;
                    v["nonce"] = BASE64.encode(nonce).into();
                }),
                "cannot be opened",
            ),
            (
                Box::new(|v: &mut serde_json::Value| v["nonce"] = "AAAA".into()),
                "(its nonce is not 12 bytes of base64)",
            ),
            (
                Box::new(|v: &mut serde_json::Value| v["sealed"] = "%%".into()),
                "(its sealed part is not base64)",
            ),
            (
                Box::new(|v: &mut serde_json::Value| v["alg"] = "A128GCM".into()),
                "(its alg is not A256GCM)",
            ),
            (
                Box::new(|v: &mut serde_json::Value| v["bearerd_state"] = 2.into()),
                "has format 2; this bearerd reads format 1",
            ),
            (
                Box::new(|v: &mut serde_json::Value| {
                    v.as_object_mut().unwrap().remove("bearerd_state");
                }),
                "(it has no bearerd_state header)",
            ),
            (
                Box::new(|v: &mut serde_json::Value| {
                    v.as_object_mut().unwrap().remove("nonce");
                }),
                "(its header is not alg, nonce and sealed text)",
            ),
        ];
        for (change, expected) in cases {
            let _ = fs::remove_file(dir.path().join("state.json"));
            stored(dir.path());
            rewrite(dir.path(), change);
            let message = refusal(dir.path(), 1);
            assert!(message.contains(expected), "{message}");
            assert!(message.ends_with("it was not read"), "{message}");
        }
        fs::write(dir.path().join("state.json"), "[1, 2]").unwrap();
        assert!(refusal(dir.path(), 1).contains("(it has no bearerd_state header)"));
    }

    #[test]
    fn a_failed_write_keeps_the_change_in_memory_and_says_so() {
        let parent = tempfile::tempdir().unwrap();
        let dir = parent.path().join("gone");
        fs::create_dir(&dir).unwrap();
        let store = stored(&dir);
        fs::remove_dir_all(&dir).unwrap();
        let current = store.get("k");
        let error = store
            .replace("k", current.as_ref(), Some(record("rt-rotated")))
            .unwrap_err();
        assert!(
            error.to_string().starts_with(&format!(
                "state.file {}: cannot write it: ",
                dir.join("state.json").display()
            )),
            "{error}"
        );
        assert_eq!(store.get("k").unwrap().refresh_token.unwrap().expose(), "rt-rotated");
        // Opening a state file in a directory that does not exist fails at once.
        let error = StateStore::open(&config(&dir, 1)).err().unwrap();
        assert!(matches!(error, StateError::Write { .. }), "{error}");
    }

    #[test]
    fn record_keys_follow_the_token_shaping_fields() {
        let load = |scopes: &str| {
            let yaml = format!(
                "auth_configs:\n  - id: a\n    token_url: https://idp.test/t\n    client_id: c\n    client_secret: s\n    allowed_hosts: [h.test]\n    scopes: [{scopes}]\n"
            );
            crate::config::Config::from_yaml("t", &yaml, &crate::config::Env::new())
                .unwrap()
                .auth_config("a")
                .unwrap()
        };
        let key = record_key(&load("x"));
        assert_eq!(key.len(), 64);
        assert!(key.bytes().all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        assert_eq!(key, record_key(&load("x")));
        assert_ne!(key, record_key(&load("y")));
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}

//! API keys and the file that holds them.
//!
//! A key is `oms_<id>_<secret>`: the id (64 random bits, hex) is public —
//! it names the key in `oms keys list`, in logs and in metrics — and the
//! secret (256 random bits, hex) is shown once, when the key is made. The
//! file keeps the id, the owner and the SHA-256 of the secret, never the
//! secret: a secret of 256 random bits cannot be guessed from its hash, so
//! a slow password hash would only cost every request time.
//!
//! The file is TOML, rewritten whole under an exclusive lock (a temporary
//! file, fsync, rename): a reader sees the old set or the new one, and two
//! `oms keys` commands at once do not lose each other's change.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};

use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::domain::Account;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Submit, cancel and read the account's orders; read trades and books.
    #[default]
    Trader,
    /// Read only: the account's orders, trades and books.
    Reader,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Trader => "trader",
            Role::Reader => "reader",
        }
    }

    /// Whether the role may change state (submit or cancel an order).
    pub fn may_trade(self) -> bool {
        self == Role::Trader
    }
}

impl std::str::FromStr for Role {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "trader" => Ok(Role::Trader),
            "reader" => Ok(Role::Reader),
            other => Err(format!("no role {other:?}: trader or reader")),
        }
    }
}

/// Bytes of a key's id and of its secret.
const ID_BYTES: usize = 8;
const SECRET_BYTES: usize = 32;
const PREFIX: &str = "oms_";

/// A key as a client holds it.
#[derive(Clone, PartialEq, Eq)]
pub struct Key {
    id: String,
    secret: String,
}

/// Never printed: a log line or a panic must not carry a secret.
impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Key({}, <secret>)", self.id)
    }
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn is_hex(s: &str, bytes: usize) -> bool {
    s.len() == bytes * 2 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

impl Key {
    /// A new key from the operating system's random source.
    pub fn generate() -> Result<Key, KeyFileError> {
        let mut id = [0u8; ID_BYTES];
        let mut secret = [0u8; SECRET_BYTES];
        getrandom::fill(&mut id).map_err(KeyFileError::Random)?;
        getrandom::fill(&mut secret).map_err(KeyFileError::Random)?;
        Ok(Key {
            id: hex(&id),
            secret: hex(&secret),
        })
    }

    /// Reads a key as a client sends it; `None` when it is not one.
    pub fn parse(text: &str) -> Option<Key> {
        let rest = text.strip_prefix(PREFIX)?;
        let (id, secret) = rest.split_once('_')?;
        (is_hex(id, ID_BYTES) && is_hex(secret, SECRET_BYTES)).then(|| Key {
            id: id.to_owned(),
            secret: secret.to_owned(),
        })
    }

    /// The public part: what names the key.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The whole key, to hand to the client once.
    pub fn expose(&self) -> String {
        format!("{PREFIX}{}_{}", self.id, self.secret)
    }

    /// What the file keeps of the secret.
    pub fn hash(&self) -> [u8; 32] {
        Sha256::digest(self.secret.as_bytes()).into()
    }
}

/// One key as the file holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyRecord {
    pub id: String,
    pub account: Account,
    #[serde(default)]
    pub role: Role,
    /// `sha256:` and the hex SHA-256 of the secret.
    pub hash: String,
    pub created_at: DateTime<Utc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revoked_at: Option<DateTime<Utc>>,
    /// Requests per second; absent: `auth.rate_per_sec`; 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rate_per_sec: Option<u32>,
    /// Requests in flight at once; absent: `auth.max_in_flight`; 0: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_in_flight: Option<u32>,
}

impl KeyRecord {
    /// The record of `key`, made now: what the file keeps of it.
    pub fn new(
        key: &Key,
        account: Account,
        role: Role,
        rate_per_sec: Option<u32>,
        max_in_flight: Option<u32>,
    ) -> KeyRecord {
        KeyRecord {
            id: key.id().to_owned(),
            account,
            role,
            hash: format!("sha256:{}", hex(&key.hash())),
            created_at: Utc::now().trunc_subsecs(0),
            revoked_at: None,
            rate_per_sec,
            max_in_flight,
        }
    }

    /// The stored hash as bytes (`None`: not a hash this oms wrote).
    pub fn hash_bytes(&self) -> Option<[u8; 32]> {
        let hex = self.hash.strip_prefix("sha256:")?;
        if !is_hex(hex, 32) {
            return None;
        }
        let mut out = [0u8; 32];
        for (i, byte) in out.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hex[i * 2..i * 2 + 2], 16).ok()?;
        }
        Some(out)
    }

    pub fn is_revoked(&self) -> bool {
        self.revoked_at.is_some()
    }
}

/// The file's content.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeySet {
    #[serde(default, rename = "key")]
    pub keys: Vec<KeyRecord>,
}

/// Why the key file could not be read or changed.
#[derive(Debug, thiserror::Error)]
pub enum KeyFileError {
    #[error("cannot read the key file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the key file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: toml::de::Error,
    },
    #[error("cannot write the key file {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no key {0} in the key file")]
    NoSuchKey(String),
    #[error("the operating system's random source failed")]
    Random(#[source] getrandom::Error),
}

/// What `create` made: the record, and the key to show once.
#[derive(Debug)]
pub struct Created {
    pub record: KeyRecord,
    pub key: Key,
}

/// The key file at one path.
#[derive(Debug, Clone)]
pub struct KeyFile {
    path: PathBuf,
}

impl KeyFile {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The keys; a file that does not exist holds none.
    pub fn load(&self) -> Result<KeySet, KeyFileError> {
        let text = match fs::read_to_string(&self.path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(KeySet::default()),
            Err(source) => {
                return Err(KeyFileError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        toml::from_str(&text).map_err(|source| KeyFileError::Parse {
            path: self.path.clone(),
            source,
        })
    }

    /// Makes a key for `account` and adds it to the file.
    pub fn create(
        &self,
        account: Account,
        role: Role,
        rate_per_sec: Option<u32>,
        max_in_flight: Option<u32>,
    ) -> Result<Created, KeyFileError> {
        let key = Key::generate()?;
        let record = KeyRecord::new(&key, account, role, rate_per_sec, max_in_flight);
        self.add(record.clone())?;
        Ok(Created { record, key })
    }

    /// Adds a record (a key made elsewhere: tests, provisioning tools).
    pub fn add(&self, record: KeyRecord) -> Result<(), KeyFileError> {
        self.change(|set| {
            set.keys.retain(|k| k.id != record.id);
            set.keys.push(record);
            Ok(())
        })
    }

    /// Marks key `id` revoked (it stays listed, with when). Revoking a
    /// revoked key changes nothing.
    pub fn revoke(&self, id: &str) -> Result<KeyRecord, KeyFileError> {
        let mut revoked = None;
        self.change(|set| {
            let record = set
                .keys
                .iter_mut()
                .find(|k| k.id == id)
                .ok_or_else(|| KeyFileError::NoSuchKey(id.to_owned()))?;
            record
                .revoked_at
                .get_or_insert_with(|| Utc::now().trunc_subsecs(0));
            revoked = Some(record.clone());
            Ok(())
        })?;
        revoked.ok_or_else(|| KeyFileError::NoSuchKey(id.to_owned()))
    }

    /// Reads, changes and rewrites the file under an exclusive lock.
    fn change(
        &self,
        edit: impl FnOnce(&mut KeySet) -> Result<(), KeyFileError>,
    ) -> Result<(), KeyFileError> {
        use fs2::FileExt;
        let write_err = |source| KeyFileError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        fs::create_dir_all(&dir).map_err(write_err)?;
        let lock_path = self.path.with_extension("lock");
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(write_err)?;
        lock.lock_exclusive().map_err(write_err)?;
        let mut set = self.load()?;
        edit(&mut set)?;
        let text = toml::to_string(&set).unwrap_or_else(|e| unreachable!("a key set encodes: {e}"));
        let partial = self.path.with_extension("partial");
        {
            let mut file = private_file(&partial).map_err(write_err)?;
            file.write_all(HEADER.as_bytes()).map_err(write_err)?;
            file.write_all(text.as_bytes()).map_err(write_err)?;
            file.sync_all().map_err(write_err)?;
        }
        fs::rename(&partial, &self.path).map_err(write_err)?;
        File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(write_err)?;
        drop(lock);
        Ok(())
    }
}

const HEADER: &str = "# oms API keys: written by `oms keys`, read by every oms instance.\n\
                      # Hashes only; a key is shown once, when it is made.\n\n";

/// A file only its owner can read: it names every account.
fn private_file(path: &Path) -> std::io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .mode(0o600)
        .open(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn account(name: &str) -> Account {
        name.parse().expect("an account name")
    }

    #[test]
    fn a_key_reads_back_as_it_was_shown_and_nothing_else_parses() {
        let key = Key::generate().expect("a key");
        let shown = key.expose();
        assert_eq!(Key::parse(&shown), Some(key.clone()));
        assert!(shown.len() > 64, "256 bits of secret: {shown}");
        for bad in [
            "",
            "oms_",
            &shown[..shown.len() - 1],
            &shown.replace("oms_", "omx_"),
            &shown.to_uppercase(),
            &format!("{shown}0"),
        ] {
            assert_eq!(Key::parse(bad), None, "{bad:?}");
        }
        assert!(
            !format!("{key:?}").contains(&key.secret),
            "Debug hides the secret"
        );
    }

    #[test]
    fn the_file_keeps_the_hash_not_the_key_and_revoking_keeps_the_record() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let file = KeyFile::new(dir.path().join("keys.toml"));
        assert_eq!(file.load().expect("no file: no keys").keys.len(), 0);
        let a = file
            .create(account("alice"), Role::Trader, None, Some(4))
            .expect("create");
        let b = file
            .create(account("bob"), Role::Reader, Some(10), None)
            .expect("create");
        let text = fs::read_to_string(file.path()).expect("read");
        assert!(!text.contains(&a.key.expose()) && !text.contains(&a.key.secret));
        assert!(text.contains(&a.record.id));
        let set = file.load().expect("load");
        assert_eq!(set.keys, vec![a.record.clone(), b.record.clone()]);
        assert_eq!(set.keys[0].hash_bytes(), Some(a.key.hash()));

        let revoked = file.revoke(&a.record.id).expect("revoke");
        assert!(revoked.is_revoked());
        let again = file.revoke(&a.record.id).expect("revoke twice");
        assert_eq!(again.revoked_at, revoked.revoked_at, "the first time stays");
        let set = file.load().expect("load");
        assert!(set.keys[0].is_revoked() && !set.keys[1].is_revoked());
        assert!(matches!(
            file.revoke("0123456789abcdef"),
            Err(KeyFileError::NoSuchKey(_))
        ));
        use std::os::unix::fs::PermissionsExt;
        let mode = fs::metadata(file.path())
            .expect("stat")
            .permissions()
            .mode();
        assert_eq!(mode & 0o077, 0, "only the owner reads the key file");
    }

    #[test]
    fn a_damaged_file_is_an_error_not_an_empty_set() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = dir.path().join("keys.toml");
        fs::write(&path, "[[key]]\nid = 3\n").expect("write");
        assert!(matches!(
            KeyFile::new(&path).load(),
            Err(KeyFileError::Parse { .. })
        ));
    }
}

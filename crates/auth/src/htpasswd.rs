//! Apache htpasswd files, as `registry:2` uses them: one `user:hash` per line, bcrypt only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use crate::logins::LoginCache;

/// Cost of hashes written by `berth htpasswd` (Apache's default for `-B` is 5; 10 is what
/// Distribution's docs recommend and what Go's bcrypt uses by default).
pub const DEFAULT_COST: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum HtpasswdError {
    #[error("cannot read htpasswd file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("htpasswd line {line} is not `user:hash`")]
    Malformed { line: usize },
    #[error("htpasswd user {user:?} (line {line}) has a hash that is not bcrypt ($2y$, $2a$, $2b$); create it with `berth htpasswd -B`")]
    UnsupportedHash { user: String, line: usize },
    #[error("user names must not be empty or contain ':'")]
    BadUser,
    #[error("hashing failed: {0}")]
    Hash(#[from] bcrypt::BcryptError),
}

/// A parsed htpasswd file.
#[derive(Clone, Debug, Default)]
pub struct HtpasswdFile {
    users: HashMap<String, String>,
}

fn is_bcrypt(hash: &str) -> bool {
    ["$2y$", "$2a$", "$2b$"].iter().any(|p| hash.starts_with(p))
}

impl HtpasswdFile {
    pub fn parse(text: &str) -> Result<Self, HtpasswdError> {
        let mut users = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (user, hash) = line
                .split_once(':')
                .ok_or(HtpasswdError::Malformed { line: i + 1 })?;
            if user.is_empty() {
                return Err(HtpasswdError::Malformed { line: i + 1 });
            }
            if !is_bcrypt(hash) {
                return Err(HtpasswdError::UnsupportedHash {
                    user: user.to_owned(),
                    line: i + 1,
                });
            }
            users.insert(user.to_owned(), hash.to_owned());
        }
        Ok(HtpasswdFile { users })
    }

    pub fn load(path: &Path) -> Result<Self, HtpasswdError> {
        let text = std::fs::read_to_string(path).map_err(|source| HtpasswdError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text)
    }

    pub fn len(&self) -> usize {
        self.users.len()
    }

    pub fn is_empty(&self) -> bool {
        self.users.is_empty()
    }

    /// Runs bcrypt for `user`, or against a dummy hash when the user does not exist, so that
    /// unknown and known users take the same time.
    pub fn verify(&self, user: &str, password: &str) -> bool {
        verify_bcrypt(self.users.get(user).map(String::as_str), password)
    }

    /// Sets (adds or replaces) a user's password.
    pub fn set(&mut self, user: &str, password: &str, cost: u32) -> Result<(), HtpasswdError> {
        self.users
            .insert(user.to_owned(), hash_password(user, password, cost)?);
        Ok(())
    }

    pub fn remove(&mut self, user: &str) -> bool {
        self.users.remove(user).is_some()
    }

    /// The file's text, users sorted.
    pub fn render(&self) -> String {
        let mut users: Vec<_> = self.users.iter().collect();
        users.sort();
        users.iter().map(|(u, h)| format!("{u}:{h}\n")).collect()
    }
}

/// Checks `password` against a bcrypt `hash`; with no hash, spends the same time and fails.
pub fn verify_bcrypt(hash: Option<&str>, password: &str) -> bool {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    match hash {
        Some(hash) => bcrypt::verify(password, hash).unwrap_or(false),
        None => {
            let dummy = DUMMY.get_or_init(|| {
                bcrypt::hash("berth-dummy-password", DEFAULT_COST).unwrap_or_default()
            });
            let _ = bcrypt::verify(password, dummy);
            false
        }
    }
}

/// A `$2y$` bcrypt hash of `password`, the form Apache's `htpasswd -B` writes.
pub fn hash_password(user: &str, password: &str, cost: u32) -> Result<String, HtpasswdError> {
    if user.is_empty() || user.contains(':') {
        return Err(HtpasswdError::BadUser);
    }
    Ok(bcrypt::hash_with_result(password, cost)?.format_for_version(bcrypt::Version::TwoY))
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct FileStamp {
    modified: Option<SystemTime>,
    len: u64,
}

fn stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path).ok().map(|m| FileStamp {
        modified: m.modified().ok(),
        len: m.len(),
    })
}

struct Loaded {
    file: Arc<HtpasswdFile>,
    stamp: Option<FileStamp>,
    generation: i64,
}

/// Basic-auth checking against an htpasswd file that may change while the server runs.
pub struct Htpasswd {
    path: PathBuf,
    loaded: RwLock<Loaded>,
    logins: LoginCache,
}

impl Htpasswd {
    /// Loads the file; any invalid entry is an error naming the user.
    pub fn open(path: impl Into<PathBuf>) -> Result<Self, HtpasswdError> {
        let path = path.into();
        let file = HtpasswdFile::load(&path)?;
        Ok(Htpasswd {
            loaded: RwLock::new(Loaded {
                file: Arc::new(file),
                stamp: stamp(&path),
                generation: 0,
            }),
            path,
            logins: LoginCache::default(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Re-reads the file if it changed on disk (a rotated Kubernetes Secret, an edit). A file
    /// that became invalid is reported and the previous users stay in force.
    pub fn reload_if_changed(&self) -> Result<bool, HtpasswdError> {
        let now = stamp(&self.path);
        {
            let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
            if loaded.stamp == now {
                return Ok(false);
            }
        }
        let file = HtpasswdFile::load(&self.path)?;
        let mut loaded = self.loaded.write().unwrap_or_else(|p| p.into_inner());
        loaded.file = Arc::new(file);
        loaded.stamp = now;
        loaded.generation += 1;
        Ok(true)
    }

    /// Whether `user` is in the file.
    pub fn contains(&self, user: &str) -> bool {
        self.loaded
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .file
            .users
            .contains_key(user)
    }

    /// Checks a user's password; verified logins are remembered until the file changes.
    pub async fn verify(&self, user: &str, password: &str) -> bool {
        let fingerprint = self.logins.fingerprint(user, password);
        let (file, generation) = {
            let loaded = self.loaded.read().unwrap_or_else(|p| p.into_inner());
            (loaded.file.clone(), loaded.generation)
        };
        if self.logins.hit(user, &fingerprint, generation) {
            return true;
        }
        let (u, p) = (user.to_owned(), password.to_owned());
        let ok = tokio::task::spawn_blocking(move || file.verify(&u, &p))
            .await
            .unwrap_or(false);
        if ok {
            self.logins.remember(user, fingerprint, generation);
        }
        ok
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_verify() {
        let mut f = HtpasswdFile::default();
        f.set("alice", "secret", 4).unwrap();
        let text = f.render();
        assert!(text.starts_with("alice:$2y$04$"), "{text}");
        let back = HtpasswdFile::parse(&format!("# comment\n\n{text}")).unwrap();
        assert!(back.verify("alice", "secret"));
        assert!(!back.verify("alice", "wrong"));
        assert!(!back.verify("bob", "secret"));
    }

    #[test]
    fn accepts_all_bcrypt_prefixes() {
        let h = bcrypt::hash("pw", 4).unwrap(); // $2b$
        for prefix in ["$2y$", "$2a$", "$2b$"] {
            let line = format!("u:{prefix}{}", &h[4..]);
            assert!(
                HtpasswdFile::parse(&line).unwrap().verify("u", "pw"),
                "{prefix}"
            );
        }
    }

    #[test]
    fn refuses_other_hashes_naming_the_user() {
        for line in [
            "carol:{SHA}W6ph5Mm5Pz8GgiULbPgzG37mj9g=",
            "carol:$apr1$x$y",
            "carol:plain",
        ] {
            match HtpasswdFile::parse(&format!("ok:$2y$04$abc\n{line}")) {
                Err(HtpasswdError::UnsupportedHash { user, line }) => {
                    assert_eq!((user.as_str(), line), ("carol", 2));
                }
                other => panic!("{line}: {other:?}"),
            }
        }
        assert!(matches!(
            HtpasswdFile::parse("nocolon"),
            Err(HtpasswdError::Malformed { line: 1 })
        ));
        assert!(hash_password("a:b", "x", 4).is_err());
    }

    #[tokio::test]
    async fn reloads_on_change() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("htpasswd");
        let mut f = HtpasswdFile::default();
        f.set("alice", "one", 4).unwrap();
        std::fs::write(&path, f.render()).unwrap();
        let h = Htpasswd::open(&path).unwrap();
        assert!(h.verify("alice", "one").await);
        assert!(!h.reload_if_changed().unwrap());

        f.set("alice", "two", 4).unwrap();
        f.set("bob", "three!", 4).unwrap();
        std::fs::write(&path, f.render()).unwrap();
        assert!(h.reload_if_changed().unwrap());
        assert!(
            !h.verify("alice", "one").await,
            "cached login dropped after rotation"
        );
        assert!(h.verify("alice", "two").await);
        assert!(h.verify("bob", "three!").await);

        std::fs::write(&path, "bob:{SHA}abc\n").unwrap();
        assert!(h.reload_if_changed().is_err());
        assert!(
            h.verify("bob", "three!").await,
            "a broken file keeps the previous users"
        );
    }
}

//! DKIM keys on disk: `DATA/dkim/<domain>/<selector>.<alg>.pem` (PKCS#8 PEM, mode 0600, the
//! directories 0700), loaded at start and kept in memory for signing.
//!
//! One key per selector: RFC 6376 3.6.2.2 leaves several DKIM TXT records at one name
//! undefined, so an RSA and an Ed25519 key never share a selector (RFC 8463's dual signing
//! uses two selectors too). Generated keys are named `<base>-rsa` and `<base>-ed25519`.
//!
//! Private key material never leaves this module except into the signer: no type here
//! implements `Debug` with key bytes, and errors never quote the key.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::SystemTime;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use mail_auth::common::crypto::{DkimKey, Ed25519Key, RsaKey, Sha256};
use rsa::pkcs8::{DecodePrivateKey, EncodePrivateKey, EncodePublicKey};
use rsa::traits::PublicKeyParts;
use rustls_pki_types::PrivateKeyDer;
use rustls_pki_types::pem::PemObject;

/// A DKIM signing algorithm.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Alg {
    Rsa,
    Ed25519,
}

impl Alg {
    pub const ALL: [Alg; 2] = [Alg::Rsa, Alg::Ed25519];

    /// The `a=` tag's name (and the config's spelling).
    pub fn name(self) -> &'static str {
        match self {
            Alg::Rsa => "rsa-sha256",
            Alg::Ed25519 => "ed25519-sha256",
        }
    }

    pub fn parse(s: &str) -> Option<Alg> {
        Alg::ALL.into_iter().find(|a| a.name() == s)
    }

    /// The key file suffix and the selector suffix of generated keys.
    fn short(self) -> &'static str {
        match self {
            Alg::Rsa => "rsa",
            Alg::Ed25519 => "ed25519",
        }
    }

    /// The DNS record's `k=` tag.
    pub fn key_type(self) -> &'static str {
        self.short()
    }
}

/// One loaded key.
pub struct Key {
    pub selector: String,
    pub alg: Alg,
    /// base64 of the public key as published in `p=` (SubjectPublicKeyInfo for RSA, the
    /// raw 32 bytes for Ed25519, RFC 8463).
    pub public: String,
    /// RSA modulus size (0 for Ed25519).
    pub bits: usize,
    pub created_at: SystemTime,
    pub(crate) private: Private,
}

/// The signing half. RSA signs with ring when it can: the pure-Rust `rsa` crate is about
/// 15 times slower than ring/OpenSSL (4 ms against 0.25 ms per 2048-bit signature on the
/// loaded test machine) and signing runs on the engine's thread. ring refuses RSA keys
/// under 2048 bits; those (imported) keys sign with mail-auth's `rsa`.
pub(crate) enum Private {
    RingRsa(ring::signature::RsaKeyPair),
    MailAuth(DkimKey),
}

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the private key.
        f.debug_struct("Key")
            .field("selector", &self.selector)
            .field("alg", &self.alg)
            .finish_non_exhaustive()
    }
}

impl Key {
    /// The TXT record value to publish at `<selector>._domainkey.<domain>`.
    pub fn dns_value(&self) -> String {
        format!("v=DKIM1; k={}; p={}", self.alg.key_type(), self.public)
    }
}

/// Why a key operation failed. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    Conflict(String),
    #[error("no such selector")]
    NotFound,
    #[error("{0}")]
    Io(String),
}

/// All domains' keys.
#[derive(Clone)]
pub struct KeyStore {
    dir: PathBuf,
    keys: Arc<RwLock<BTreeMap<String, Vec<Arc<Key>>>>>,
}

impl std::fmt::Debug for KeyStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyStore")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

/// A selector: DNS label characters, dot-separated, each label 1..=63 (RFC 6376 3.1).
pub fn valid_selector(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.split('.').all(|l| {
            !l.is_empty()
                && l.len() <= 63
                && !l.starts_with('-')
                && !l.ends_with('-')
                && l.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        })
}

impl KeyStore {
    /// Loads every key under `data_dir/dkim`. A key file that cannot be read or parsed
    /// stops the start: silently signing with fewer keys than configured would be worse.
    pub fn open(data_dir: &Path) -> Result<KeyStore, KeyError> {
        let dir = data_dir.join("dkim");
        create_private_dir(&dir)?;
        let mut all: BTreeMap<String, Vec<Arc<Key>>> = BTreeMap::new();
        let domains = fs::read_dir(&dir).map_err(|e| io_error(&dir, &e))?;
        for d in domains {
            let d = d.map_err(|e| io_error(&dir, &e))?;
            if !d.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let Some(domain) = d.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let mut keys = Vec::new();
            let files = fs::read_dir(d.path()).map_err(|e| io_error(&d.path(), &e))?;
            for f in files {
                let f = f.map_err(|e| io_error(&d.path(), &e))?;
                let path = f.path();
                let Some(name) = path.file_name().and_then(|n| n.to_str()) else {
                    continue;
                };
                let Some((selector, alg)) = parse_file_name(name) else {
                    continue;
                };
                keys.push(Arc::new(load_key(&path, selector, alg)?));
            }
            keys.sort_by(|a, b| (a.created_at, &a.selector).cmp(&(b.created_at, &b.selector)));
            if !keys.is_empty() {
                all.insert(domain, keys);
            }
        }
        Ok(KeyStore {
            dir,
            keys: Arc::new(RwLock::new(all)),
        })
    }

    /// The domain's active keys, oldest first.
    pub fn keys(&self, domain: &str) -> Vec<Arc<Key>> {
        self.keys
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .get(domain)
            .cloned()
            .unwrap_or_default()
    }

    /// Generates one key per algorithm, named `<base>-rsa` / `<base>-ed25519`.
    pub fn generate(
        &self,
        domain: &str,
        base: &str,
        algs: &[Alg],
    ) -> Result<Vec<Arc<Key>>, KeyError> {
        self.ensure_rsa_kept(domain, algs)?;
        let mut new = Vec::new();
        for &alg in algs {
            let selector = format!("{base}-{}", alg.short());
            if !valid_selector(&selector) {
                return Err(KeyError::Invalid(format!(
                    "{selector:?} is not a valid selector"
                )));
            }
            self.ensure_free(domain, &selector)?;
            let der = match alg {
                Alg::Rsa => {
                    let key = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 2048)
                        .map_err(|e| KeyError::Io(format!("RSA key generation failed: {e}")))?;
                    key.to_pkcs8_der()
                        .map_err(|e| KeyError::Io(format!("RSA key encoding failed: {e}")))?
                        .as_bytes()
                        .to_vec()
                }
                Alg::Ed25519 => Ed25519Key::generate_pkcs8()
                    .map_err(|e| KeyError::Io(format!("Ed25519 key generation failed: {e}")))?,
            };
            new.push((selector, alg, der));
        }
        // Write only once every key was made, so a failure leaves no half set.
        let mut out = Vec::new();
        for (selector, alg, der) in new {
            out.push(self.install(domain, &selector, alg, &der)?);
        }
        Ok(out)
    }

    /// Imports a PEM private key (PKCS#8, or PKCS#1 `RSA PRIVATE KEY`) under `selector`,
    /// or `<base>-rsa` / `<base>-ed25519` by the key's type.
    pub fn import(
        &self,
        domain: &str,
        selector: Option<&str>,
        base: &str,
        pem: &str,
    ) -> Result<Arc<Key>, KeyError> {
        let (alg, der) = parse_pem(pem.as_bytes())?;
        let selector = match selector {
            Some(s) => s.to_string(),
            None => format!("{base}-{}", alg.short()),
        };
        if !valid_selector(&selector) {
            return Err(KeyError::Invalid(format!(
                "{selector:?} is not a valid selector"
            )));
        }
        self.ensure_free(domain, &selector)?;
        self.ensure_rsa_kept(domain, &[alg])?;
        self.install(domain, &selector, alg, &der)
    }

    /// rsa-sha256 always signs (not every receiver verifies Ed25519): a domain never has
    /// Ed25519 keys without an RSA key.
    fn ensure_rsa_kept(&self, domain: &str, adding: &[Alg]) -> Result<(), KeyError> {
        let has_rsa =
            adding.contains(&Alg::Rsa) || self.keys(domain).iter().any(|k| k.alg == Alg::Rsa);
        if has_rsa {
            Ok(())
        } else {
            Err(KeyError::Conflict(
                "an Ed25519 key signs only alongside an RSA key; add an RSA key first (or both at once)".into(),
            ))
        }
    }

    /// Retires (deletes) `selector`, or, if there is no such selector, the keys generated
    /// together under the base name `selector` (`<selector>-rsa`, `<selector>-ed25519`).
    /// Returns the retired selectors.
    pub fn retire(&self, domain: &str, selector: &str) -> Result<Vec<String>, KeyError> {
        let mut map = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let keys = map.get(domain).cloned().unwrap_or_default();
        let exact: Vec<Arc<Key>> = keys
            .iter()
            .filter(|k| k.selector == selector)
            .cloned()
            .collect();
        let doomed: Vec<Arc<Key>> = if exact.is_empty() {
            keys.iter()
                .filter(|k| {
                    Alg::ALL
                        .iter()
                        .any(|a| k.selector == format!("{selector}-{}", a.short()))
                })
                .cloned()
                .collect()
        } else {
            exact
        };
        if doomed.is_empty() {
            return Err(KeyError::NotFound);
        }
        let remaining: Vec<&Arc<Key>> = keys
            .iter()
            .filter(|k| !doomed.iter().any(|d| d.selector == k.selector))
            .collect();
        // rsa-sha256 always signs (not every receiver checks Ed25519): never leave a domain
        // with Ed25519 keys alone.
        if remaining.iter().any(|k| k.alg == Alg::Ed25519)
            && !remaining.iter().any(|k| k.alg == Alg::Rsa)
        {
            return Err(KeyError::Conflict(
                "this would leave only Ed25519 keys; add another RSA selector first, or retire the Ed25519 selectors too".into(),
            ));
        }
        let ddir = self.dir.join(domain);
        for k in &doomed {
            let path = ddir.join(file_name(&k.selector, k.alg));
            fs::remove_file(&path).map_err(|e| io_error(&path, &e))?;
        }
        sync_dir(&ddir);
        let left: Vec<Arc<Key>> = remaining.into_iter().cloned().collect();
        if left.is_empty() {
            map.remove(domain);
        } else {
            map.insert(domain.to_string(), left);
        }
        Ok(doomed.iter().map(|k| k.selector.clone()).collect())
    }

    fn ensure_free(&self, domain: &str, selector: &str) -> Result<(), KeyError> {
        if self.keys(domain).iter().any(|k| k.selector == selector) {
            return Err(KeyError::Conflict(format!(
                "selector {selector:?} already has a key; choose another selector (or retire it first)"
            )));
        }
        Ok(())
    }

    /// Writes the key (0600, via a temporary file and rename) and adds it to the live set.
    fn install(
        &self,
        domain: &str,
        selector: &str,
        alg: Alg,
        der: &[u8],
    ) -> Result<Arc<Key>, KeyError> {
        let mut key = key_from_der(selector, alg, der)?;
        let mut map = self.keys.write().unwrap_or_else(|p| p.into_inner());
        let existing = map.get(domain).cloned().unwrap_or_default();
        if existing.iter().any(|k| k.selector == selector) {
            return Err(KeyError::Conflict(format!(
                "selector {selector:?} already has a key"
            )));
        }
        let ddir = self.dir.join(domain);
        create_private_dir(&ddir)?;
        let path = ddir.join(file_name(selector, alg));
        let tmp = ddir.join(format!(".{}.tmp", file_name(selector, alg)));
        let pem = pem_encode(der);
        let write = || -> std::io::Result<()> {
            let _ = fs::remove_file(&tmp);
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&tmp)?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        };
        if let Err(e) = write() {
            let _ = fs::remove_file(&tmp);
            return Err(io_error(&path, &e));
        }
        sync_dir(&ddir);
        key.created_at = SystemTime::now();
        let key = Arc::new(key);
        let mut keys = existing;
        keys.push(key.clone());
        map.insert(domain.to_string(), keys);
        Ok(key)
    }
}

fn file_name(selector: &str, alg: Alg) -> String {
    format!("{selector}.{}.pem", alg.short())
}

fn parse_file_name(name: &str) -> Option<(&str, Alg)> {
    let stem = name.strip_suffix(".pem")?;
    let (selector, alg) = stem.rsplit_once('.')?;
    let alg = Alg::ALL.into_iter().find(|a| a.short() == alg)?;
    valid_selector(selector).then_some((selector, alg))
}

fn io_error(path: &Path, e: &std::io::Error) -> KeyError {
    KeyError::Io(format!("{}: {e}", path.display()))
}

fn create_private_dir(dir: &Path) -> Result<(), KeyError> {
    fs::create_dir_all(dir).map_err(|e| io_error(dir, &e))?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).map_err(|e| io_error(dir, &e))
}

/// Makes a rename or removal durable; best effort (the key itself was synced).
fn sync_dir(dir: &Path) {
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
}

fn load_key(path: &Path, selector: &str, alg: Alg) -> Result<Key, KeyError> {
    let meta = fs::metadata(path).map_err(|e| io_error(path, &e))?;
    if meta.permissions().mode() & 0o077 != 0 {
        // Tighten rather than refuse: the operator may have copied the file in by hand.
        tracing::warn!(path = %path.display(), "DKIM key file was readable by others; setting mode 0600");
        fs::set_permissions(path, fs::Permissions::from_mode(0o600))
            .map_err(|e| io_error(path, &e))?;
    }
    let bytes = fs::read(path).map_err(|e| io_error(path, &e))?;
    let (found, der) =
        parse_pem(&bytes).map_err(|e| KeyError::Invalid(format!("{}: {e}", path.display())))?;
    if found != alg {
        return Err(KeyError::Invalid(format!(
            "{}: holds a {} key, not {}",
            path.display(),
            found.name(),
            alg.name()
        )));
    }
    let mut key = key_from_der(selector, alg, &der)
        .map_err(|e| KeyError::Invalid(format!("{}: {e}", path.display())))?;
    key.created_at = meta.modified().unwrap_or(SystemTime::UNIX_EPOCH);
    Ok(key)
}

/// Reads a PEM private key: PKCS#8 (RSA or Ed25519) or PKCS#1 RSA. Returns PKCS#8 DER.
fn parse_pem(pem: &[u8]) -> Result<(Alg, Vec<u8>), KeyError> {
    let invalid = || {
        KeyError::Invalid(
            "private_key must be a PEM private key (PKCS#8 \"PRIVATE KEY\" for RSA or Ed25519, or PKCS#1 \"RSA PRIVATE KEY\")"
                .into(),
        )
    };
    let der = PrivateKeyDer::from_pem_slice(pem).map_err(|_| invalid())?;
    match der {
        PrivateKeyDer::Pkcs1(d) => {
            use rsa::pkcs1::DecodeRsaPrivateKey;
            let key =
                rsa::RsaPrivateKey::from_pkcs1_der(d.secret_pkcs1_der()).map_err(|_| invalid())?;
            let der = key.to_pkcs8_der().map_err(|_| invalid())?;
            Ok((Alg::Rsa, der.as_bytes().to_vec()))
        }
        PrivateKeyDer::Pkcs8(d) => {
            let bytes = d.secret_pkcs8_der();
            if rsa::RsaPrivateKey::from_pkcs8_der(bytes).is_ok() {
                Ok((Alg::Rsa, bytes.to_vec()))
            } else if Ed25519Key::from_pkcs8_der(bytes).is_ok() {
                Ok((Alg::Ed25519, bytes.to_vec()))
            } else {
                Err(KeyError::Invalid(
                    "the PKCS#8 key is neither RSA nor Ed25519".into(),
                ))
            }
        }
        _ => Err(invalid()),
    }
}

fn key_from_der(selector: &str, alg: Alg, der: &[u8]) -> Result<Key, KeyError> {
    let (public, bits, private) = match alg {
        Alg::Rsa => {
            let key = rsa::RsaPrivateKey::from_pkcs8_der(der)
                .map_err(|_| KeyError::Invalid("not a valid RSA private key".into()))?;
            let bits = key.size() * 8;
            // RFC 8301: verifiers reject keys under 1024 bits; very large keys do not fit
            // comfortably in a TXT record.
            if !(1024..=4096).contains(&bits) {
                return Err(KeyError::Invalid(format!(
                    "the RSA key has {bits} bits; 1024 to 4096 are accepted (2048 recommended)"
                )));
            }
            let spki = key
                .to_public_key()
                .to_public_key_der()
                .map_err(|_| KeyError::Invalid("cannot encode the RSA public key".into()))?;
            let private = match ring::signature::RsaKeyPair::from_pkcs8(der) {
                Ok(pair) => Private::RingRsa(pair),
                Err(_) => Private::MailAuth(DkimKey::Rsa(
                    RsaKey::<Sha256>::from_key_der(PrivateKeyDer::Pkcs8(der.to_vec().into()))
                        .map_err(|_| KeyError::Invalid("not a valid RSA private key".into()))?,
                )),
            };
            (STANDARD.encode(spki.as_bytes()), bits, private)
        }
        Alg::Ed25519 => {
            let key = Ed25519Key::from_pkcs8_der(der)
                .map_err(|_| KeyError::Invalid("not a valid Ed25519 private key".into()))?;
            (
                STANDARD.encode(key.public_key()),
                0,
                Private::MailAuth(DkimKey::Ed25519(key)),
            )
        }
    };
    Ok(Key {
        selector: selector.to_string(),
        alg,
        public,
        bits,
        created_at: SystemTime::UNIX_EPOCH,
        private,
    })
}

fn pem_encode(der: &[u8]) -> String {
    let b64 = STANDARD.encode(der);
    let mut out = String::from("-----BEGIN PRIVATE KEY-----\n");
    for chunk in b64.as_bytes().chunks(64) {
        out.push_str(&String::from_utf8_lossy(chunk));
        out.push('\n');
    }
    out.push_str("-----END PRIVATE KEY-----\n");
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use rsa::pkcs8::LineEnding;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("outpost-dkim-{name}-{}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn generate_persist_reload_and_retire() {
        let d = dir("keys");
        let ks = KeyStore::open(&d).expect("open");
        let keys = ks
            .generate("example.com", "s1", &Alg::ALL)
            .expect("generate");
        assert_eq!(keys.len(), 2);
        assert_eq!(keys[0].selector, "s1-rsa");
        assert_eq!(keys[0].bits, 2048);
        assert!(
            keys[0]
                .dns_value()
                .starts_with("v=DKIM1; k=rsa; p=MIIBIjAN")
        );
        assert!(keys[1].dns_value().starts_with("v=DKIM1; k=ed25519; p="));
        let path = d.join("dkim/example.com/s1-rsa.rsa.pem");
        let mode = fs::metadata(&path).expect("file").permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert!(matches!(
            ks.generate("example.com", "s1", &[Alg::Rsa]),
            Err(KeyError::Conflict(_))
        ));
        let again = KeyStore::open(&d).expect("reopen");
        let reloaded = again.keys("example.com");
        assert_eq!(reloaded.len(), 2);
        assert_eq!(reloaded[0].public, keys[0].public);
        // Retiring the only RSA key while Ed25519 remains is refused; by base name both go.
        assert!(matches!(
            again.retire("example.com", "s1-rsa"),
            Err(KeyError::Conflict(_))
        ));
        assert_eq!(again.retire("example.com", "s1").expect("retire").len(), 2);
        assert!(again.keys("example.com").is_empty());
        assert!(!path.exists());
        assert!(matches!(
            again.retire("example.com", "s1"),
            Err(KeyError::NotFound)
        ));
        let _ = fs::remove_dir_all(&d);
    }

    #[test]
    fn imports_pem_and_refuses_garbage() {
        let d = dir("import");
        let ks = KeyStore::open(&d).expect("open");
        let rsa = rsa::RsaPrivateKey::new(&mut rsa::rand_core::OsRng, 1024).expect("key");
        let pem = rsa.to_pkcs8_pem(LineEnding::LF).expect("pem");
        let k = ks
            .import("example.com", Some("mail"), "b", &pem)
            .expect("import");
        assert_eq!((k.alg, k.bits), (Alg::Rsa, 1024));
        use rsa::pkcs1::EncodeRsaPrivateKey;
        let pkcs1 = rsa.to_pkcs1_pem(LineEnding::LF).expect("pem");
        let k = ks.import("example.com", None, "b", &pkcs1).expect("pkcs1");
        assert_eq!((k.alg, k.selector.as_str()), (Alg::Rsa, "b-rsa"));
        let ed = Ed25519Key::generate_pkcs8().expect("ed");
        let k = ks
            .import("example.com", Some("ed"), "b", &pem_encode(&ed))
            .expect("ed25519");
        assert_eq!(k.alg, Alg::Ed25519);
        assert!(matches!(
            ks.import("example.com", Some("x"), "b", "nope"),
            Err(KeyError::Invalid(_))
        ));
        assert!(matches!(
            ks.import("example.com", Some("../x"), "b", &pem),
            Err(KeyError::Invalid(_))
        ));
        let _ = fs::remove_dir_all(&d);
    }
}

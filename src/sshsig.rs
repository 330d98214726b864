//! OpenSSH signatures (SSHSIG) over backup manifests, written from OpenSSH's PROTOCOL.sshsig and
//! PROTOCOL.key, so stock `ssh-keygen -Y verify` checks what etcdsafe signs and etcdsafe checks
//! what `ssh-keygen -Y sign` makes.
//!
//! - [`SigningKey`]: an unencrypted OpenSSH ed25519 private key (`ssh-keygen -t ed25519 -N ''`),
//!   mode 0600.
//! - [`sign`] makes an armored signature; [`Signature`] parses one and checks it.
//! - [`AllowedSigners`]: OpenSSH's `allowed_signers` file (principals, `namespaces=`,
//!   `valid-after=`, `valid-before=`; `cert-authority` lines are not supported and say so).
//!
//! Only ed25519 keys are made and accepted: it is what `ssh-keygen -t ed25519` makes, and one
//! algorithm is one less way to be wrong.

use std::path::{Path, PathBuf};

use base64::Engine;
use chrono::{DateTime, NaiveDate, NaiveDateTime, TimeZone, Utc};
use sha2::{Digest, Sha256, Sha512};

/// The namespace every backup manifest is signed in.
pub const BACKUP_NAMESPACE: &str = "etcdsafe-backup";

const MAGIC: &[u8; 6] = b"SSHSIG";
const VERSION: u32 = 1;
const ED25519: &str = "ssh-ed25519";
const HASH: &str = "sha512";
const ARMOR_BEGIN: &str = "-----BEGIN SSH SIGNATURE-----";
const ARMOR_END: &str = "-----END SSH SIGNATURE-----";
const KEY_BEGIN: &str = "-----BEGIN OPENSSH PRIVATE KEY-----";
const KEY_END: &str = "-----END OPENSSH PRIVATE KEY-----";
const KEY_MAGIC: &[u8] = b"openssh-key-v1\0";

#[derive(Debug, thiserror::Error)]
pub enum SigError {
    #[error("signing key {path}: {source}")]
    ReadKey {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "signing key {path}: mode {mode:o} lets others read the private key: chmod 600 {path}"
    )]
    KeyTooOpen { path: PathBuf, mode: u32 },
    #[error("signing key {path}: {problem}")]
    BadKey {
        path: PathBuf,
        #[source]
        problem: FormatError,
    },
    #[error("allowed signers {path}: {source}")]
    ReadSigners {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("allowed signers {path}, line {line}: {problem}")]
    BadSigners {
        path: PathBuf,
        line: usize,
        #[source]
        problem: FormatError,
    },
    #[error("not an SSH signature: {0}")]
    Malformed(#[source] FormatError),
    #[error("the signature does not match the data (forged or altered)")]
    Mismatch,
    #[error("the signature is for namespace {found:?}, not {expected:?}")]
    Namespace { found: String, expected: String },
    #[error("signed by key {fingerprint}, which {reason}")]
    NotAllowed { fingerprint: String, reason: String },
}

/// What is wrong with a key, a signature or an `allowed_signers` line, one variant per
/// condition.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    #[error("truncated")]
    Truncated,
    #[error("bad base64: {0}")]
    Base64(#[source] base64::DecodeError),
    #[error("key type {0:?} is not supported (only ssh-ed25519)")]
    KeyType(String),
    #[error("an ed25519 key is 32 bytes")]
    KeyLength,
    #[error("not an OpenSSH private key (make one with `ssh-keygen -t ed25519 -N '' -f FILE`)")]
    NotPrivateKey,
    #[error("not an openssh-key-v1 private key")]
    NotKeyV1,
    #[error("the key is passphrase-protected; the service cannot type a passphrase: use an unencrypted key kept 0600 (`ssh-keygen -p -N '' -f FILE`)")]
    Encrypted,
    #[error("the file must hold exactly one key")]
    KeyCount,
    #[error("the key's check integers differ (a damaged file)")]
    CheckIntegers,
    #[error("key type {0:?} is not supported: make an ed25519 key (`ssh-keygen -t ed25519`)")]
    PrivateKeyType(String),
    #[error("the private part does not match the public key (a damaged file)")]
    PrivateMismatch,
    #[error("the private key does not give its public key (a damaged file)")]
    SeedMismatch,
    #[error("the signature is not text")]
    NotText,
    #[error("no -----BEGIN SSH SIGNATURE----- armor")]
    NoArmor,
    #[error("no SSHSIG preamble")]
    NoPreamble,
    #[error("version {0} is not supported")]
    Version(u32),
    #[error("the signature is not ssh-ed25519")]
    NotEd25519Signature,
    #[error("hash algorithm {0:?} is not supported")]
    Hash(String),
    #[error("cert-authority lines are not supported: list the signing key itself")]
    CertAuthority,
    #[error("unknown option {0:?}")]
    UnknownOption(String),
    #[error("no key")]
    NoKey,
    #[error("no key data after the key type")]
    NoKeyData,
    #[error("bad key base64: {0}")]
    KeyBase64(#[source] base64::DecodeError),
    #[error("an unterminated quote")]
    UnterminatedQuote,
    #[error("a line needs principals, then the key")]
    NoPrincipals,
    #[error("time {0:?} is not YYYYMMDD[HHMM[SS]][Z]")]
    Time(String),
}

/// An ed25519 public key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicKey([u8; 32]);

impl PublicKey {
    /// The SSH wire encoding: string "ssh-ed25519", string key.
    fn blob(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(51);
        put_string(&mut out, ED25519.as_bytes());
        put_string(&mut out, &self.0);
        out
    }

    fn from_blob(blob: &[u8]) -> Result<PublicKey, FormatError> {
        let mut r = Reader(blob);
        let kind = r.string()?;
        if kind != ED25519.as_bytes() {
            return Err(FormatError::KeyType(
                String::from_utf8_lossy(kind).to_string(),
            ));
        }
        let key = r.string()?;
        let key: [u8; 32] = key.try_into().map_err(|_| FormatError::KeyLength)?;
        Ok(PublicKey(key))
    }

    /// As `ssh-keygen -l` prints it: `SHA256:` and the unpadded base64 of the blob's digest.
    pub fn fingerprint(&self) -> String {
        let digest = Sha256::digest(self.blob());
        format!(
            "SHA256:{}",
            base64::engine::general_purpose::STANDARD_NO_PAD.encode(digest)
        )
    }

    /// The `ssh-ed25519 AAAA...` form of `.pub` files and `allowed_signers`.
    pub fn to_openssh(&self) -> String {
        format!("{ED25519} {}", b64(&self.blob()))
    }
}

/// An unencrypted OpenSSH ed25519 private key.
pub struct SigningKey {
    seed: [u8; 32],
    public: PublicKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the secret.
        write!(f, "SigningKey({})", self.public.fingerprint())
    }
}

impl SigningKey {
    /// Reads a key file, refusing one that others can read (`chmod 600`, as ssh does).
    pub fn load(path: &Path) -> Result<SigningKey, SigError> {
        use std::os::unix::fs::PermissionsExt;
        let read_err = |source| SigError::ReadKey {
            path: path.to_path_buf(),
            source,
        };
        let meta = std::fs::metadata(path).map_err(read_err)?;
        if meta.permissions().mode() & 0o077 != 0 {
            return Err(SigError::KeyTooOpen {
                path: path.to_path_buf(),
                mode: meta.permissions().mode() & 0o777,
            });
        }
        let text = std::fs::read_to_string(path).map_err(read_err)?;
        SigningKey::parse(&text).map_err(|problem| SigError::BadKey {
            path: path.to_path_buf(),
            problem,
        })
    }

    /// Parses the `openssh-key-v1` format (PROTOCOL.key).
    pub fn parse(text: &str) -> Result<SigningKey, FormatError> {
        let body = armored_body(text, KEY_BEGIN, KEY_END).ok_or(FormatError::NotPrivateKey)?;
        let bytes = unb64(&body).map_err(FormatError::Base64)?;
        let rest = bytes.strip_prefix(KEY_MAGIC).ok_or(FormatError::NotKeyV1)?;
        let mut r = Reader(rest);
        let cipher = r.string()?;
        let kdf = r.string()?;
        let _kdf_options = r.string()?;
        if cipher != b"none" || kdf != b"none" {
            return Err(FormatError::Encrypted);
        }
        if r.u32()? != 1 {
            return Err(FormatError::KeyCount);
        }
        let public = PublicKey::from_blob(r.string()?)?;
        let mut private = Reader(r.string()?);
        if private.u32()? != private.u32()? {
            return Err(FormatError::CheckIntegers);
        }
        let kind = private.string()?;
        if kind != ED25519.as_bytes() {
            return Err(FormatError::PrivateKeyType(
                String::from_utf8_lossy(kind).to_string(),
            ));
        }
        let pk = private.string()?;
        let sk = private.string()?;
        if pk != public.0 || sk.len() != 64 || sk[32..] != public.0 {
            return Err(FormatError::PrivateMismatch);
        }
        let seed: [u8; 32] = sk[..32].try_into().expect("checked length");
        let key = SigningKey { seed, public };
        // The seed must really give that public key.
        key.pair()?;
        Ok(key)
    }

    pub fn public(&self) -> &PublicKey {
        &self.public
    }

    fn pair(&self) -> Result<ring::signature::Ed25519KeyPair, FormatError> {
        ring::signature::Ed25519KeyPair::from_seed_and_public_key(&self.seed, &self.public.0)
            .map_err(|_| FormatError::SeedMismatch)
    }

    /// An armored SSHSIG signature of `message` in `namespace` (hash sha512).
    pub fn sign(&self, namespace: &str, message: &[u8]) -> String {
        let pair = self.pair().expect("checked when the key was parsed");
        let signature = pair.sign(&signed_data(namespace, message));
        let mut sig = Vec::with_capacity(83);
        put_string(&mut sig, ED25519.as_bytes());
        put_string(&mut sig, signature.as_ref());
        let mut blob = Vec::with_capacity(200);
        blob.extend_from_slice(MAGIC);
        blob.extend_from_slice(&VERSION.to_be_bytes());
        put_string(&mut blob, &self.public.blob());
        put_string(&mut blob, namespace.as_bytes());
        put_string(&mut blob, b"");
        put_string(&mut blob, HASH.as_bytes());
        put_string(&mut blob, &sig);
        let encoded = b64(&blob);
        let mut out = String::from(ARMOR_BEGIN);
        out.push('\n');
        for line in encoded.as_bytes().chunks(70) {
            out.push_str(std::str::from_utf8(line).expect("base64 is ASCII"));
            out.push('\n');
        }
        out.push_str(ARMOR_END);
        out.push('\n');
        out
    }
}

/// The bytes the key signs: PROTOCOL.sshsig section 3.
fn signed_data(namespace: &str, message: &[u8]) -> Vec<u8> {
    let mut data = Vec::with_capacity(128);
    data.extend_from_slice(MAGIC);
    put_string(&mut data, namespace.as_bytes());
    put_string(&mut data, b"");
    put_string(&mut data, HASH.as_bytes());
    put_string(&mut data, &Sha512::digest(message));
    data
}

/// A parsed armored signature.
#[derive(Debug, Clone)]
pub struct Signature {
    pub public: PublicKey,
    namespace: String,
    hash: String,
    signature: Vec<u8>,
}

impl Signature {
    pub fn parse(text: &str) -> Result<Signature, SigError> {
        Signature::parse_fields(text).map_err(SigError::Malformed)
    }

    fn parse_fields(text: &str) -> Result<Signature, FormatError> {
        let body = armored_body(text, ARMOR_BEGIN, ARMOR_END).ok_or(FormatError::NoArmor)?;
        let blob = unb64(&body).map_err(FormatError::Base64)?;
        let rest = blob.strip_prefix(MAGIC).ok_or(FormatError::NoPreamble)?;
        let mut r = Reader(rest);
        {
            let version = r.u32()?;
            if version != VERSION {
                return Err(FormatError::Version(version));
            }
            let public = PublicKey::from_blob(r.string()?)?;
            let namespace = String::from_utf8_lossy(r.string()?).to_string();
            let _reserved = r.string()?;
            let hash = String::from_utf8_lossy(r.string()?).to_string();
            let mut sig = Reader(r.string()?);
            if sig.string()? != ED25519.as_bytes() {
                return Err(FormatError::NotEd25519Signature);
            }
            let signature = sig.string()?.to_vec();
            Ok(Signature {
                public,
                namespace,
                hash,
                signature,
            })
        }
    }

    /// Checks the signature over `message` in `namespace`; says nothing of who may sign.
    pub fn verify(&self, namespace: &str, message: &[u8]) -> Result<(), SigError> {
        if self.namespace != namespace {
            return Err(SigError::Namespace {
                found: self.namespace.clone(),
                expected: namespace.to_string(),
            });
        }
        let digest: Vec<u8> = match self.hash.as_str() {
            "sha512" => Sha512::digest(message).to_vec(),
            "sha256" => Sha256::digest(message).to_vec(),
            other => return Err(SigError::Malformed(FormatError::Hash(other.to_string()))),
        };
        let mut data = Vec::with_capacity(128);
        data.extend_from_slice(MAGIC);
        put_string(&mut data, namespace.as_bytes());
        put_string(&mut data, b"");
        put_string(&mut data, self.hash.as_bytes());
        put_string(&mut data, &digest);
        ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, &self.public.0)
            .verify(&data, &self.signature)
            .map_err(|_| SigError::Mismatch)
    }
}

/// One line of an `allowed_signers` file.
#[derive(Debug, Clone, PartialEq)]
struct Signer {
    principals: Vec<String>,
    namespaces: Option<Vec<String>>,
    valid_after: Option<DateTime<Utc>>,
    valid_before: Option<DateTime<Utc>>,
    key: PublicKey,
}

/// OpenSSH's `allowed_signers` file (ssh-keygen(1), "ALLOWED SIGNERS").
#[derive(Debug, Clone, Default)]
pub struct AllowedSigners {
    signers: Vec<Signer>,
}

impl AllowedSigners {
    pub fn load(path: &Path) -> Result<AllowedSigners, SigError> {
        let text = std::fs::read_to_string(path).map_err(|source| SigError::ReadSigners {
            path: path.to_path_buf(),
            source,
        })?;
        AllowedSigners::parse_typed(&text).map_err(|(line, problem)| SigError::BadSigners {
            path: path.to_path_buf(),
            line,
            problem,
        })
    }

    /// Parses the file; the error is the 1-based line and what is wrong with it.
    /// As [`AllowedSigners::parse_typed`], with the problem as text.
    pub fn parse(text: &str) -> Result<AllowedSigners, (usize, String)> {
        AllowedSigners::parse_typed(text).map_err(|(line, problem)| (line, problem.to_string()))
    }

    /// The file's text; an error is the line number (from 1) and what is wrong with it.
    pub fn parse_typed(text: &str) -> Result<AllowedSigners, (usize, FormatError)> {
        let mut signers = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            signers.push(parse_signer(line).map_err(|m| (n + 1, m))?);
        }
        Ok(AllowedSigners { signers })
    }

    /// The principal allowed to sign in `namespace` with `key` at time `at`, or why none is.
    pub fn principal_for(
        &self,
        key: &PublicKey,
        namespace: &str,
        at: DateTime<Utc>,
    ) -> Result<String, SigError> {
        let mut reason = "is not in the allowed signers file".to_string();
        for signer in self.signers.iter().filter(|s| &s.key == key) {
            if let Some(namespaces) = &signer.namespaces {
                if !namespaces.iter().any(|p| wildcard_match(p, namespace)) {
                    reason = format!("may not sign in namespace {namespace:?}");
                    continue;
                }
            }
            if signer.valid_after.is_some_and(|after| at < after) {
                reason = format!(
                    "was not yet valid at {} (valid-after)",
                    at.format("%Y-%m-%dT%H:%M:%SZ")
                );
                continue;
            }
            if signer.valid_before.is_some_and(|before| at >= before) {
                reason = format!(
                    "was no longer valid at {} (valid-before)",
                    at.format("%Y-%m-%dT%H:%M:%SZ")
                );
                continue;
            }
            return Ok(signer.principals.join(","));
        }
        Err(SigError::NotAllowed {
            fingerprint: key.fingerprint(),
            reason,
        })
    }
}

fn parse_signer(line: &str) -> Result<Signer, FormatError> {
    let (principals, rest) = next_field(line)?;
    let principals: Vec<String> = principals.split(',').map(str::to_string).collect();
    let mut rest = rest.trim_start();
    let (mut namespaces, mut valid_after, mut valid_before) = (None, None, None);
    // Options come before the key type, comma-separated, values possibly quoted.
    if !rest.starts_with("ssh-") && !rest.starts_with("ecdsa-") && !rest.starts_with("sk-") {
        let (options, after) = next_field(rest)?;
        rest = after.trim_start();
        for option in split_options(&options) {
            let (name, value) = match option.split_once('=') {
                Some((n, v)) => (
                    n.to_ascii_lowercase(),
                    Some(v.trim_matches('"').to_string()),
                ),
                None => (option.to_ascii_lowercase(), None),
            };
            match (name.as_str(), value) {
                ("cert-authority", None) => return Err(FormatError::CertAuthority),
                ("namespaces", Some(v)) => {
                    namespaces = Some(v.split(',').map(str::to_string).collect())
                }
                ("valid-after", Some(v)) => valid_after = Some(parse_time(&v)?),
                ("valid-before", Some(v)) => valid_before = Some(parse_time(&v)?),
                (other, _) => return Err(FormatError::UnknownOption(other.to_string())),
            }
        }
    }
    let mut words = rest.split_whitespace();
    let kind = words.next().ok_or(FormatError::NoKey)?;
    let data = words.next().ok_or(FormatError::NoKeyData)?;
    let blob = unb64(data).map_err(FormatError::KeyBase64)?;
    let key = PublicKey::from_blob(&blob)?;
    if kind != ED25519 {
        return Err(FormatError::KeyType(kind.to_string()));
    }
    Ok(Signer {
        principals,
        namespaces,
        valid_after,
        valid_before,
        key,
    })
}

/// The next whitespace-separated field, where double quotes may hold spaces and commas.
fn next_field(text: &str) -> Result<(String, &str), FormatError> {
    let text = text.trim_start();
    let mut in_quotes = false;
    for (i, c) in text.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            c if c.is_whitespace() && !in_quotes => {
                return Ok((text[..i].trim_matches('"').to_string(), &text[i..]))
            }
            _ => {}
        }
    }
    if in_quotes {
        return Err(FormatError::UnterminatedQuote);
    }
    Err(FormatError::NoPrincipals)
}

/// Options split on commas outside quotes.
fn split_options(options: &str) -> Vec<String> {
    let (mut out, mut current, mut in_quotes) = (Vec::new(), String::new(), false);
    for c in options.chars() {
        match c {
            '"' => {
                in_quotes = !in_quotes;
                current.push(c);
            }
            ',' if !in_quotes => out.push(std::mem::take(&mut current)),
            c => current.push(c),
        }
    }
    out.push(current);
    out.into_iter().filter(|o| !o.is_empty()).collect()
}

/// `YYYYMMDD[HHMM[SS]][Z]`: with `Z` UTC, without it local time, as ssh-keygen reads it.
fn parse_time(text: &str) -> Result<DateTime<Utc>, FormatError> {
    let bad = || FormatError::Time(text.to_string());
    let (digits, utc) = match text.strip_suffix(['Z', 'z']) {
        Some(d) => (d, true),
        None => (text, false),
    };
    if !digits.bytes().all(|b| b.is_ascii_digit()) {
        return Err(bad());
    }
    let naive = match digits.len() {
        8 => NaiveDate::parse_from_str(digits, "%Y%m%d")
            .ok()
            .and_then(|d| d.and_hms_opt(0, 0, 0)),
        12 => NaiveDateTime::parse_from_str(&format!("{digits}00"), "%Y%m%d%H%M%S").ok(),
        14 => NaiveDateTime::parse_from_str(digits, "%Y%m%d%H%M%S").ok(),
        _ => None,
    }
    .ok_or_else(bad)?;
    if utc {
        Ok(naive.and_utc())
    } else {
        chrono::Local
            .from_local_datetime(&naive)
            .earliest()
            .map(|t| t.with_timezone(&Utc))
            .ok_or_else(bad)
    }
}

/// OpenSSH's pattern match: `*` any run, `?` any one character; a leading `!` is not supported.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    fn go(p: &[u8], t: &[u8]) -> bool {
        match (p.first(), t.first()) {
            (None, None) => true,
            (Some(b'*'), _) => go(&p[1..], t) || (!t.is_empty() && go(p, &t[1..])),
            (Some(b'?'), Some(_)) => go(&p[1..], &t[1..]),
            (Some(a), Some(b)) if a == b => go(&p[1..], &t[1..]),
            _ => false,
        }
    }
    go(pattern.as_bytes(), text.as_bytes())
}

fn armored_body(text: &str, begin: &str, end: &str) -> Option<String> {
    let text = text.trim();
    let inner = text.strip_prefix(begin)?.strip_suffix(end)?;
    Some(inner.split_whitespace().collect())
}

fn b64(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

fn unb64(text: &str) -> Result<Vec<u8>, base64::DecodeError> {
    base64::engine::general_purpose::STANDARD.decode(text)
}

fn put_string(out: &mut Vec<u8>, data: &[u8]) {
    out.extend_from_slice(&(data.len() as u32).to_be_bytes());
    out.extend_from_slice(data);
}

/// Reads SSH wire fields (RFC 4251: uint32, string).
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn u32(&mut self) -> Result<u32, FormatError> {
        if self.0.len() < 4 {
            return Err(FormatError::Truncated);
        }
        let (head, rest) = self.0.split_at(4);
        self.0 = rest;
        Ok(u32::from_be_bytes(head.try_into().expect("4 bytes")))
    }

    fn string(&mut self) -> Result<&'a [u8], FormatError> {
        let len = self.u32()? as usize;
        if self.0.len() < len {
            return Err(FormatError::Truncated);
        }
        let (head, rest) = self.0.split_at(len);
        self.0 = rest;
        Ok(head)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_like_openssh() {
        for (pattern, text, want) in [
            ("etcdsafe-backup", "etcdsafe-backup", true),
            ("etcdsafe-*", "etcdsafe-backup", true),
            ("*", "anything", true),
            ("etcdsafe-backu?", "etcdsafe-backup", true),
            ("file", "etcdsafe-backup", false),
            ("etcdsafe-backup?", "etcdsafe-backup", false),
        ] {
            assert_eq!(wildcard_match(pattern, text), want, "{pattern} vs {text}");
        }
    }

    #[test]
    fn times_are_read_as_ssh_keygen_reads_them() {
        let t = |s: &str| parse_time(s).map(|t| t.to_rfc3339());
        assert_eq!(t("20261203Z").unwrap(), "2026-12-03T00:00:00+00:00");
        assert_eq!(t("202612031230Z").unwrap(), "2026-12-03T12:30:00+00:00");
        assert_eq!(t("20261203123005Z").unwrap(), "2026-12-03T12:30:05+00:00");
        for bad in ["2026-12-03", "2026120", "20261303Z", "x"] {
            assert!(t(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn options_split_outside_quotes() {
        assert_eq!(
            split_options(r#"namespaces="a,b",valid-after="20260101Z""#),
            vec![r#"namespaces="a,b""#, r#"valid-after="20260101Z""#]
        );
    }

    #[test]
    fn malformed_signatures_are_errors_not_panics() {
        for text in [
            "",
            "-----BEGIN SSH SIGNATURE-----\n-----END SSH SIGNATURE-----\n",
            "-----BEGIN SSH SIGNATURE-----\n!!!\n-----END SSH SIGNATURE-----\n",
            "-----BEGIN SSH SIGNATURE-----\nU1NIU0lH\n-----END SSH SIGNATURE-----\n",
            "-----BEGIN SSH SIGNATURE-----\nU1NIU0lHAAAAAQAAAAA=\n-----END SSH SIGNATURE-----\n",
        ] {
            assert!(Signature::parse(text).is_err(), "{text:?}");
        }
    }
}

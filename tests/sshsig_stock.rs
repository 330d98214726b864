//! etcdsafe's SSHSIG against stock OpenSSH `ssh-keygen`, both ways: what etcdsafe signs,
//! `ssh-keygen -Y verify` accepts (and rejects once altered); what `ssh-keygen -Y sign` makes,
//! etcdsafe accepts; `allowed_signers` options (namespaces, valid-after, valid-before) decide as
//! ssh-keygen decides.

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use chrono::{TimeZone, Utc};
use common::system_tool;
use etcdsafe::sshsig::{AllowedSigners, Signature, SigningKey, BACKUP_NAMESPACE};

fn keygen(dir: &Path, name: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    let out = Command::new(system_tool("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "test", "-f"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    path
}

/// `ssh-keygen -Y verify`; true when it accepts.
fn stock_verify(dir: &Path, signers: &str, principal: &str, sig: &str, data: &[u8]) -> bool {
    std::fs::write(dir.join("allowed_signers"), signers).unwrap();
    std::fs::write(dir.join("data.sig"), sig).unwrap();
    let mut child = Command::new(system_tool("ssh-keygen"))
        .args(["-Y", "verify", "-f"])
        .arg(dir.join("allowed_signers"))
        .args(["-I", principal, "-n", BACKUP_NAMESPACE, "-s"])
        .arg(dir.join("data.sig"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(data).unwrap();
    child.wait_with_output().unwrap().status.success()
}

#[test]
fn etcdsafe_signatures_verify_with_ssh_keygen_and_forgeries_do_not() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = keygen(dir.path(), "signing-key");
    let key = SigningKey::load(&key_path).unwrap();
    let pub_line = std::fs::read_to_string(key_path.with_extension("pub")).unwrap();
    assert!(
        pub_line.starts_with(&key.public().to_openssh()),
        "{pub_line}"
    );

    let manifest = br#"{"id":"20261203T120000.000Z-rev42","object":{"sha256":"ab"}}"#;
    let sig = key.sign(BACKUP_NAMESPACE, manifest);
    assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----\n"));
    let signers = format!(
        "etcdsafe@prod-eu-1 namespaces=\"etcdsafe-backup\" {}",
        key.public().to_openssh()
    );
    assert!(stock_verify(
        dir.path(),
        &signers,
        "etcdsafe@prod-eu-1",
        &sig,
        manifest
    ));
    // One byte changed: stock ssh-keygen refuses, and so does etcdsafe.
    let mut forged = manifest.to_vec();
    forged[10] ^= 1;
    assert!(!stock_verify(
        dir.path(),
        &signers,
        "etcdsafe@prod-eu-1",
        &sig,
        &forged
    ));
    let parsed = Signature::parse(&sig).unwrap();
    parsed.verify(BACKUP_NAMESPACE, manifest).unwrap();
    assert!(parsed.verify(BACKUP_NAMESPACE, &forged).is_err());
    // Another namespace is refused.
    assert!(parsed.verify("file", manifest).is_err());
}

#[test]
fn ssh_keygen_signatures_verify_with_etcdsafe() {
    let dir = tempfile::tempdir().unwrap();
    let key_path = keygen(dir.path(), "k");
    let data_path = dir.path().join("manifest.json");
    std::fs::write(&data_path, b"{\"id\":\"x\"}\n").unwrap();
    let out = Command::new(system_tool("ssh-keygen"))
        .args(["-Y", "sign", "-n", BACKUP_NAMESPACE, "-f"])
        .arg(&key_path)
        .arg(&data_path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sig = std::fs::read_to_string(dir.path().join("manifest.json.sig")).unwrap();
    let parsed = Signature::parse(&sig).unwrap();
    parsed
        .verify(BACKUP_NAMESPACE, b"{\"id\":\"x\"}\n")
        .unwrap();
    assert!(parsed
        .verify(BACKUP_NAMESPACE, b"{\"id\":\"y\"}\n")
        .is_err());
    let key = SigningKey::load(&key_path).unwrap();
    assert_eq!(&parsed.public, key.public());
}

#[test]
fn allowed_signers_options_decide_like_ssh_keygen() {
    let dir = tempfile::tempdir().unwrap();
    let a = SigningKey::load(&keygen(dir.path(), "a")).unwrap();
    let b = SigningKey::load(&keygen(dir.path(), "b")).unwrap();
    let text = format!(
        "# rotated keys\n\
         old@prod namespaces=\"etcdsafe-backup\",valid-before=\"20261201Z\" {}\n\
         \"new@prod,ops@prod\" valid-after=\"20261201Z\",namespaces=\"etcdsafe-*\" {} comment\n",
        a.public().to_openssh(),
        b.public().to_openssh()
    );
    let signers = AllowedSigners::parse(&text).unwrap();
    let nov = Utc.with_ymd_and_hms(2026, 11, 15, 0, 0, 0).unwrap();
    let dec = Utc.with_ymd_and_hms(2026, 12, 3, 0, 0, 0).unwrap();
    assert_eq!(
        signers
            .principal_for(a.public(), BACKUP_NAMESPACE, nov)
            .unwrap(),
        "old@prod"
    );
    let err = signers
        .principal_for(a.public(), BACKUP_NAMESPACE, dec)
        .unwrap_err()
        .to_string();
    assert!(err.contains("no longer valid"), "{err}");
    assert_eq!(
        signers
            .principal_for(b.public(), BACKUP_NAMESPACE, dec)
            .unwrap(),
        "new@prod,ops@prod"
    );
    let err = signers
        .principal_for(b.public(), BACKUP_NAMESPACE, nov)
        .unwrap_err()
        .to_string();
    assert!(err.contains("not yet valid"), "{err}");
    let err = signers
        .principal_for(a.public(), "file", nov)
        .unwrap_err()
        .to_string();
    assert!(err.contains("may not sign in namespace"), "{err}");

    // ssh-keygen agrees on the same file, at now (December): the old key is refused, the new one
    // accepted.
    let data = b"manifest";
    assert!(!stock_verify(
        dir.path(),
        &text,
        "old@prod",
        &a.sign(BACKUP_NAMESPACE, data),
        data
    ));
    assert!(stock_verify(
        dir.path(),
        &text,
        "new@prod",
        &b.sign(BACKUP_NAMESPACE, data),
        data
    ));

    for (bad, why) in [
        ("p@x cert-authority ssh-ed25519 AAAA", "cert-authority"),
        ("p@x bogus=1 ssh-ed25519 AAAA", "unknown option"),
        ("p@x valid-after=\"yesterday\" ssh-ed25519 AAAA", "YYYYMMDD"),
        ("p@x", "principals, then the key"),
    ] {
        let (line, message) = AllowedSigners::parse(bad).unwrap_err();
        assert_eq!(line, 1);
        assert!(message.contains(why), "{bad}: {message}");
    }
}

#[test]
fn a_readable_or_encrypted_signing_key_is_refused_with_the_fix() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let path = keygen(dir.path(), "k");
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = SigningKey::load(&path).unwrap_err().to_string();
    assert!(err.contains("chmod 600"), "{err}");
    let enc = dir.path().join("enc");
    let out = Command::new(system_tool("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "secret-passphrase", "-f"])
        .arg(&enc)
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = SigningKey::load(&enc).unwrap_err().to_string();
    assert!(err.contains("passphrase-protected"), "{err}");
    assert!(!err.contains("secret-passphrase"));
    // The Debug form never shows the secret.
    let key = SigningKey::load(&keygen(dir.path(), "k2")).unwrap();
    assert!(format!("{key:?}").starts_with("SigningKey(SHA256:"));
}

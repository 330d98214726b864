//! Signed backups end to end, on real backups of a real etcd 3.5.1 in a local store, with keys
//! made by stock `ssh-keygen` and every signature etcdsafe writes checked by stock
//! `ssh-keygen -Y verify`: a forged, re-signed-by-a-stranger or unsigned backup is refused by
//! `backups fetch`, `restore`, and `drill` before anything is fetched or touched; `backups list`
//! and `backups audit` show the SIGNED state; retention never counts a forged backup; the
//! service's audit reports unsigned backups and bad signatures as metrics.

mod common;

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::service::ServiceProcess;
use common::*;
use etcdsafe::exit::Exit;
use etcdsafe::sshsig::BACKUP_NAMESPACE;
use serde_json::Value;

const PRINCIPAL: &str = "etcdsafe@prod-eu-1";

fn keygen(path: &Path) {
    let out = Command::new(system_tool("ssh-keygen"))
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "etcdsafe", "-f"])
        .arg(path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The SIGNED cell of a `backups list` table row (the last column).
fn signed_cell(row: &str) -> String {
    let cells: Vec<&str> = row.split('|').map(str::trim).collect();
    cells[cells.len() - 2].to_string()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).to_string()
}

/// This file's helpers on the common [`Env`].
impl Env {
    /// A config that signs with a fresh key and verifies against an allowed_signers naming it.
    fn signing() -> Env {
        let env = Env::new();
        env.cluster
            .ctl(&["put", "/registry/secrets/default/s", "v"]);
        keygen(&env.signing_key());
        let public = std::fs::read_to_string(env.signing_key().with_extension("pub")).unwrap();
        std::fs::write(
            env.allowed_signers(),
            format!("{PRINCIPAL} namespaces=\"{BACKUP_NAMESPACE}\" {public}"),
        )
        .unwrap();
        env.set_signing(true);
        env
    }

    /// The ssh key backups are signed with.
    fn signing_key(&self) -> PathBuf {
        self.path().join("signing-key")
    }

    fn allowed_signers(&self) -> PathBuf {
        self.path().join("allowed_signers")
    }

    /// The config with or without the signing section (verification always on).
    fn set_signing(&self, on: bool) {
        let base = std::fs::read_to_string(&self.config).unwrap();
        let base = base.split("signing:").next().unwrap().to_string();
        let base = base.split("verification:").next().unwrap().to_string();
        let mut text = base;
        if on {
            text.push_str(&format!(
                "signing:\n  key-file: {}\n  principal: {PRINCIPAL}\n",
                self.signing_key().display()
            ));
        }
        text.push_str(&format!(
            "verification:\n  allowed-signers: {}\n",
            self.allowed_signers().display()
        ));
        std::fs::write(&self.config, text).unwrap();
    }

    /// `backups fetch ID EXTRA`, which must end with `exit`; (its output, where it fetches to).
    fn fetch(&self, id: &str, extra: &[&str], exit: Exit) -> (Output, PathBuf) {
        let out_path = self.path().join(format!("fetched-{id}-{}.db", extra.len()));
        let out = run_exit(self.fetch_cmd(id, &out_path).args(extra), exit);
        (out, out_path)
    }

    /// `backups list -w json`, which must end with `exit`; (its output, the document).
    fn list_json(&self, exit: Exit) -> (Output, Value) {
        let out = self.run_exit(&["backups", "list", "-w", "json"], exit);
        let doc = serde_json::from_slice(&out.stdout).unwrap();
        (out, doc)
    }

    /// fetch, restore (--dry-run: the signature is checked before the plan) and drill each refuse
    /// `id`, saying `needle`, and nothing is written.
    fn assert_refused_everywhere(&self, id: &str, needle: &str) {
        let (out, path) = self.fetch(id, &[], Exit::Failed);
        assert!(stderr(&out).contains(needle), "fetch: {}", stderr(&out));
        assert!(!path.exists());
        let restore = run_err(
            self.cmd(&["restore", id, "--dry-run", "--journal"])
                .arg(self.path().join("journal.json"))
                .arg("--identity")
                .arg(&self.identity),
        );
        assert!(restore.contains(needle), "restore: {restore}");
        assert!(!self.path().join("journal.json").exists());
        let drill = run_err(
            self.cmd(&["drill", id, "--work-dir"])
                .arg(self.path().join("drill"))
                .arg("--identity")
                .arg(&self.identity),
        );
        assert!(drill.contains(needle), "drill: {drill}");
    }

    /// Stock OpenSSH checks the signature etcdsafe stored.
    fn stock_verify(&self, id: &str) -> bool {
        let manifest = std::fs::read(self.manifest_path(id)).unwrap();
        let mut child = Command::new(system_tool("ssh-keygen"))
            .args(["-Y", "verify", "-f"])
            .arg(self.allowed_signers())
            .args(["-I", PRINCIPAL, "-n", BACKUP_NAMESPACE, "-s"])
            .arg(self.signature_path(id))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(&manifest).unwrap();
        child.wait().unwrap().success()
    }

    /// Edits a stored manifest in place (a forgery by someone who can write the bucket).
    fn forge(&self, id: &str) {
        self.edit_manifest(id, |m| m["labels"]["forged"] = Value::String("yes".into()));
    }
}

#[test]
fn every_backup_is_signed_before_it_is_visible_and_stock_ssh_keygen_verifies_it() {
    let env = Env::signing();
    let id = env.save();
    let sig = std::fs::read_to_string(env.signature_path(&id)).unwrap();
    assert!(sig.starts_with("-----BEGIN SSH SIGNATURE-----\n"), "{sig}");
    assert!(
        env.stock_verify(&id),
        "ssh-keygen -Y verify refused etcdsafe's signature"
    );

    let table = env.run_ok(&["backups", "list"]);
    assert!(table.contains("SIGNED"), "{table}");
    let row = table.lines().find(|l| l.contains(&id)).unwrap();
    assert_eq!(signed_cell(row), "yes", "{row}");
    let (_, doc) = env.list_json(Exit::Success);
    assert_eq!(doc["signed"][&id]["state"], "yes");
    assert_eq!(doc["signed"][&id]["detail"], PRINCIPAL);

    let (_, path) = env.fetch(&id, &[], Exit::Success);
    assert!(path.exists());

    // A key file others can read is refused before any backup, naming the fix.
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(env.signing_key(), std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = env.run_err(&["snapshot", "save"]);
    assert!(
        err.contains("signing.key-file") && err.contains("chmod 600"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

#[test]
fn a_forged_manifest_is_refused_by_fetch_restore_and_drill_and_listed_as_bad() {
    let env = Env::signing();
    let good = env.save();
    env.cluster
        .ctl(&["put", "/registry/secrets/default/s", "v2"]);
    let forged = env.save();
    env.forge(&forged);
    assert!(
        !env.stock_verify(&forged),
        "stock ssh-keygen must refuse the forgery too"
    );

    let (out, path) = env.fetch(&forged, &[], Exit::Failed);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("backup {forged} has a bad signature")),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    assert!(!path.exists(), "nothing is written for a forged backup");
    // --allow-unsigned never lets a bad signature through.
    let (_, path) = env.fetch(&forged, &["--allow-unsigned"], Exit::Failed);
    assert!(!path.exists());

    // A bad signature is a problem to report.
    let (_, doc) = env.list_json(Exit::Failed);
    assert_eq!(doc["signed"][&forged]["state"], "bad");
    assert_eq!(doc["signed"][&good]["state"], "yes");
    let table = String::from_utf8(env.run_exit(&["backups", "list"], Exit::Failed).stdout).unwrap();
    let row = table.lines().find(|l| l.contains(&forged)).unwrap();
    assert_eq!(signed_cell(row), "bad", "{row}");

    // restore refuses before it reads anything on the node (there is no kubeadm node here: the
    // signature is what stops it).
    let restore = run_err(
        env.cmd(&["restore", &forged, "--dry-run", "--journal"])
            .arg(env.path().join("journal.json"))
            .arg("--identity")
            .arg(&env.identity),
    );
    assert!(restore.contains("has a bad signature"), "{restore}");

    let drill = run_err(
        env.cmd(&["drill", &forged, "--work-dir"])
            .arg(env.path())
            .arg("--identity")
            .arg(&env.identity),
    );
    assert!(drill.contains("has a bad signature"), "{drill}");

    // The audit fails the forged backup's row, with its signature state.
    let audit = env.run_exit(&["backups", "audit", "-w", "json"], Exit::Failed);
    let report: Value = serde_json::from_slice(&audit.stdout).unwrap();
    assert_eq!(report["badSignatures"], 1);
    let row = report["entries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["id"] == forged.as_str())
        .unwrap();
    assert_eq!(row["ok"], false);
    assert_eq!(row["signed"], "bad");

    // Retention never counts the forgery as the newest backup: keep-last 1 deletes nothing.
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str("retention:\n  keep-last: 1\n  min-keep: 1\n");
    std::fs::write(&env.config, text).unwrap();
    let prune = env.run_exit(&["backups", "prune"], Exit::Failed);
    assert!(
        stderr(&prune).contains("bad signature"),
        "{}",
        stderr(&prune)
    );
    assert!(env.object_path(&good).exists());
}

#[test]
fn a_backup_signed_by_a_key_not_allowed_is_bad_and_an_unsigned_one_needs_allow_unsigned() {
    let env = Env::signing();
    // Someone with their own key signs a backup they wrote: a valid signature, a stranger's key.
    let stranger = env.dir.path().join("stranger");
    keygen(&stranger);
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text = text.replace(
        &env.signing_key().display().to_string(),
        &stranger.display().to_string(),
    );
    std::fs::write(&env.config, &text).unwrap();
    let by_stranger = env.save();
    env.assert_refused_everywhere(&by_stranger, "is not in the allowed signers file");

    // Before signing was turned on: unsigned.
    env.set_signing(false);
    let unsigned = env.save();
    assert!(!env.signature_path(&unsigned).exists());
    env.assert_refused_everywhere(&unsigned, "is not signed");
    let (out, path) = env.fetch(&unsigned, &[], Exit::Failed);
    let err = stderr(&out);
    assert!(
        err.contains(&format!("backup {unsigned} is not signed"))
            && err.contains("--allow-unsigned"),
        "{err}"
    );
    assert!(!path.exists());
    let (out, path) = env.fetch(&unsigned, &["--allow-unsigned"], Exit::Success);
    assert!(stderr(&out).contains("is NOT signed"), "{}", stderr(&out));
    assert!(path.exists());
    let (_, doc) = env.list_json(Exit::Failed);
    assert_eq!(doc["signed"][&unsigned]["state"], "no");

    // The service's audit counts the unsigned backup and the stranger's signature.
    let mut text = std::fs::read_to_string(&env.config).unwrap();
    text.push_str("schedule: \"0 0 1 1 *\"\naudit-schedule: \"*/2 * * * * *\"\n");
    std::fs::write(&env.config, text).unwrap();
    let service = ServiceProcess::start(&env.config, &env.dir.path().join("run.log"));
    service.wait_for("an audit", Duration::from_secs(30), |s| {
        s.metric("etcdsafe_audit_last_run_timestamp_seconds")
            .unwrap_or(0.0)
            > 0.0
    });
    assert_eq!(service.metric("etcdsafe_audit_unsigned_backups"), Some(1.0));
    assert_eq!(service.metric("etcdsafe_audit_bad_signatures"), Some(1.0));
}

#[test]
fn without_allowed_signers_the_signed_column_says_unchecked() {
    let env = Env::signing();
    let id = env.save();
    let text = std::fs::read_to_string(&env.config).unwrap();
    let text = text.split("verification:").next().unwrap().to_string();
    std::fs::write(&env.config, text).unwrap();
    let table = env.run_ok(&["backups", "list"]);
    let row = table.lines().find(|l| l.contains(&id)).unwrap();
    assert!(
        row.trim_end().ends_with("| ?      |") || row.contains("| ? "),
        "{row}"
    );
    let (_, doc) = env.list_json(Exit::Success);
    assert_eq!(doc["signed"][&id]["state"], "unchecked");
}

/// `ssh-keygen -Y sign` of a file, armored signature text.
fn stock_sign(key: &Path, namespace: &str, data: &Path) -> String {
    let out = Command::new(system_tool("ssh-keygen"))
        .args(["-Y", "sign", "-n", namespace, "-f"])
        .arg(key)
        .arg(data)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sig_path = PathBuf::from(format!("{}.sig", data.display()));
    let sig = std::fs::read_to_string(&sig_path).unwrap();
    std::fs::remove_file(sig_path).unwrap();
    sig
}

#[test]
fn wrong_namespace_swapped_object_and_expired_key_are_refused_with_nothing_written() {
    let env = Env::signing();
    let a = env.save();
    env.cluster
        .ctl(&["put", "/registry/secrets/default/s", "v3"]);
    let b = env.save();

    // A signature by the right key, but in another namespace (as if for `ssh-keygen -Y sign -n
    // file`): replaces backup a's signature.
    let manifest_a = env.dir.path().join("manifest-a.json");
    std::fs::copy(env.manifest_path(&a), &manifest_a).unwrap();
    let wrong_ns = stock_sign(&env.signing_key(), "file", &manifest_a);
    std::fs::write(env.signature_path(&a), wrong_ns).unwrap();
    env.assert_refused_everywhere(&a, "namespace");

    // b's object swapped for a's: b's signature is good, but the object is not the one it
    // signed for (its SHA-256): refused, nothing written.
    let obj = |id: &str| env.object_path(id);
    std::fs::copy(obj(&a), obj(&b)).unwrap();
    let (out, path) = env.fetch(&b, &[], Exit::Failed);
    assert!(!path.exists());
    let err = stderr(&out);
    assert!(
        err.contains(&b)
            && (err.contains("SHA-256") || err.contains("damaged") || err.contains("bytes")),
        "{err}"
    );
}

#[test]
fn a_key_past_its_valid_before_at_the_backups_time_is_refused() {
    let env = Env::signing();
    let id = env.save();
    let public = std::fs::read_to_string(env.signing_key().with_extension("pub")).unwrap();
    std::fs::write(
        env.allowed_signers(),
        format!(
            "{PRINCIPAL} namespaces=\"{BACKUP_NAMESPACE}\",valid-before=\"20260101Z\" {public}"
        ),
    )
    .unwrap();
    env.assert_refused_everywhere(&id, "no longer valid");
}

#[test]
fn rotation_backups_under_the_old_and_the_new_key_both_verify_with_one_file() {
    let env = Env::signing();
    let old_public = std::fs::read_to_string(env.signing_key().with_extension("pub")).unwrap();
    let before = env.save();
    // The switch: after the first backup, before the second (allowed_signers times are to the
    // second, in UTC).
    std::thread::sleep(Duration::from_millis(1100));
    let switch = chrono::Utc::now().format("%Y%m%d%H%M%SZ").to_string();
    std::thread::sleep(Duration::from_millis(1100));
    let new_key = env.dir.path().join("signing-key-2");
    keygen(&new_key);
    let new_public = std::fs::read_to_string(new_key.with_extension("pub")).unwrap();
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        &env.signing_key().display().to_string(),
        &new_key.display().to_string(),
    );
    std::fs::write(&env.config, text).unwrap();
    std::fs::write(
        env.allowed_signers(),
        format!(
            "{PRINCIPAL} namespaces=\"{BACKUP_NAMESPACE}\",valid-before=\"{switch}\" {old_public}\
             {PRINCIPAL} namespaces=\"{BACKUP_NAMESPACE}\",valid-after=\"{switch}\" {new_public}"
        ),
    )
    .unwrap();
    let after = env.save();
    let (_, doc) = env.list_json(Exit::Success);
    assert_eq!(doc["signed"][&before]["state"], "yes");
    assert_eq!(doc["signed"][&after]["state"], "yes");
    for id in [&before, &after] {
        let (_, path) = env.fetch(id, &[], Exit::Success);
        assert!(path.exists());
    }
    // The old key may not sign now: a backup it signs after the switch is refused.
    let text = std::fs::read_to_string(&env.config).unwrap().replace(
        &new_key.display().to_string(),
        &env.signing_key().display().to_string(),
    );
    std::fs::write(&env.config, text).unwrap();
    let late = env.save();
    let (out, _) = env.fetch(&late, &[], Exit::Failed);
    assert!(stderr(&out).contains("no longer valid"), "{}", stderr(&out));
}

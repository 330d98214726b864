//! Line-level edits of the held etcd.yaml: only the data-dir values change, every other byte of
//! the file stays as it was (no YAML re-serialization).

/// What the rewrite changed.
#[derive(Debug, PartialEq)]
pub struct Edited {
    pub text: String,
    /// Line numbers (0-based) that changed.
    pub lines: Vec<usize>,
}

#[derive(Debug, thiserror::Error)]
pub enum EditError {
    #[error("cannot rewrite the data dir in the etcd manifest: expected one `--data-dir={old_flag}` line, found {found}; restore with --swap instead, or edit it by hand")]
    FlagLines { old_flag: String, found: usize },
    #[error("cannot rewrite the data dir in the etcd manifest: expected one `path: {old_host}` in the etcd-data hostPath volume, found {found}; restore with --swap instead, or edit it by hand")]
    HostPathLines { old_host: String, found: usize },
}

fn unquote(v: &str) -> &str {
    let v = v.trim();
    v.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .or_else(|| v.strip_prefix('\'').and_then(|s| s.strip_suffix('\'')))
        .unwrap_or(v)
}

fn indent(line: &str) -> usize {
    line.len() - line.trim_start().len()
}

/// Rewrites `--data-dir=OLD` to `--data-dir=NEW`, and within the list item named `etcd-data`:
/// `path: OLD_HOST` (the hostPath) and `mountPath: OLD` (the container mount, when it equals the
/// `--data-dir` value: kubeadm mounts the host dir at the same path).
pub fn rewrite_data_dir(
    text: &str,
    old_flag: &str,
    old_host: &str,
    new: &str,
) -> Result<Edited, EditError> {
    let mut lines: Vec<String> = text.split_inclusive('\n').map(str::to_string).collect();
    let mut changed = Vec::new();
    let mut flag_hits = 0;
    let mut host_hits = 0;
    // The flag.
    for (i, line) in lines.iter_mut().enumerate() {
        let body = line.trim_end_matches(['\n', '\r']);
        let trimmed = body.trim_start();
        if let Some(item) = trimmed.strip_prefix("- ") {
            if let Some(value) = unquote(item).strip_prefix("--data-dir=") {
                if value == old_flag {
                    let ending = &line[body.len()..];
                    let prefix = &body[..indent(body)];
                    let quoted = item.trim().starts_with('"');
                    let new_item = if quoted {
                        format!("\"--data-dir={new}\"")
                    } else {
                        format!("--data-dir={new}")
                    };
                    *line = format!("{prefix}- {new_item}{ending}");
                    changed.push(i);
                    flag_hits += 1;
                }
            }
        }
    }
    // The list items named etcd-data.
    let mut i = 0;
    while i < lines.len() {
        let body = lines[i].trim_end_matches(['\n', '\r']).to_string();
        let dash = indent(&body);
        if !body.trim_start().starts_with("- ") {
            i += 1;
            continue;
        }
        let mut end = i + 1;
        while end < lines.len() {
            let b = lines[end].trim_end_matches(['\n', '\r']);
            if !b.trim().is_empty() && indent(b) <= dash {
                break;
            }
            end += 1;
        }
        let key_of = |l: &str| -> Option<(String, String)> {
            let t = l.trim_end_matches(['\n', '\r']).trim_start();
            let t = t.strip_prefix("- ").unwrap_or(t);
            let (k, v) = t.split_once(':')?;
            Some((k.trim().to_string(), unquote(v).to_string()))
        };
        // The item's own keys: the dash line, and lines indented two past the dash.
        let named = (i..end).any(|j| {
            let own = j == i || indent(lines[j].trim_end_matches(['\n', '\r'])) == dash + 2;
            own && key_of(&lines[j]) == Some(("name".to_string(), "etcd-data".to_string()))
        });
        if named {
            for (j, slot) in lines.iter_mut().enumerate().take(end).skip(i) {
                if let Some((k, v)) = key_of(slot) {
                    let hit = (k == "path" && v == old_host) || (k == "mountPath" && v == old_flag);
                    if hit {
                        let line = slot.clone();
                        let body = line.trim_end_matches(['\n', '\r']);
                        let ending = line[body.len()..].to_string();
                        let colon = body.find(':').unwrap();
                        let rest = &body[colon + 1..];
                        let quote = rest
                            .trim()
                            .chars()
                            .next()
                            .filter(|c| *c == '"' || *c == '\'');
                        let value = match quote {
                            Some(q) => format!("{q}{new}{q}"),
                            None => new.to_string(),
                        };
                        let new_line = format!("{}: {value}{ending}", &body[..colon]);
                        *slot = new_line;
                        changed.push(j);
                        if k == "path" {
                            host_hits += 1;
                        }
                    }
                }
            }
        }
        // Nested items (e.g. inside `volumes:`) are visited too: only advance by one line.
        i += 1;
    }
    if flag_hits != 1 {
        return Err(EditError::FlagLines {
            old_flag: old_flag.to_string(),
            found: flag_hits,
        });
    }
    if host_hits != 1 {
        return Err(EditError::HostPathLines {
            old_host: old_host.to_string(),
            found: host_hits,
        });
    }
    changed.sort();
    changed.dedup();
    Ok(Edited {
        text: lines.concat(),
        lines: changed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const KUBEADM: &str = include_str!("../../tests/fixtures/restore/kubeadm-etcd.yaml");

    #[test]
    fn only_the_data_dir_lines_change() {
        let e = rewrite_data_dir(
            KUBEADM,
            "/var/lib/etcd",
            "/var/lib/etcd",
            "/var/lib/etcd-restored",
        )
        .unwrap();
        let before: Vec<&str> = KUBEADM.split_inclusive('\n').collect();
        let after: Vec<&str> = e.text.split_inclusive('\n').collect();
        assert_eq!(before.len(), after.len());
        let differing: Vec<usize> = (0..before.len())
            .filter(|&i| before[i] != after[i])
            .collect();
        assert_eq!(differing, e.lines);
        assert_eq!(differing.len(), 3, "flag, mountPath, hostPath");
        for i in differing {
            assert_eq!(
                before[i].replace("/var/lib/etcd", "/var/lib/etcd-restored"),
                after[i]
            );
        }
        // Other occurrences of the old path in other volumes are left alone.
        let m = crate::etcd::EtcdManifest::parse(std::path::Path::new("x"), &e.text).unwrap();
        assert_eq!(m.flag("data-dir"), Some("/var/lib/etcd-restored"));
    }

    #[test]
    fn crlf_and_quotes_are_kept() {
        let text = KUBEADM
            .replace("path: /var/lib/etcd\n", "path: \"/var/lib/etcd\"\n")
            .replace('\n', "\r\n");
        let e = rewrite_data_dir(&text, "/var/lib/etcd", "/var/lib/etcd", "/x").unwrap();
        assert!(e.text.contains("      path: \"/x\"\r\n"));
        assert!(e.text.contains("- --data-dir=/x\r\n"));
        assert_eq!(
            e.text.len(),
            text.len() - 3 * "/var/lib/etcd".len() + 3 * "/x".len()
        );
    }

    #[test]
    fn refuses_what_it_does_not_understand() {
        let text = KUBEADM.replace("- --data-dir=/var/lib/etcd\n", "");
        let err = rewrite_data_dir(&text, "/var/lib/etcd", "/var/lib/etcd", "/x").unwrap_err();
        assert!(err.to_string().contains("--swap"), "{err}");
        let text = KUBEADM.replace("name: etcd-data", "name: data");
        assert!(rewrite_data_dir(&text, "/var/lib/etcd", "/var/lib/etcd", "/x").is_err());
    }
}

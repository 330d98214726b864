//! Member ids, cluster id and member JSON exactly as etcd's membership package computes them
//! when a new cluster is bootstrapped from `--initial-cluster` / `--initial-cluster-token`
//! (which is what `etcdutl snapshot restore` does).
//!
//! - `--initial-cluster` is split on `,`; empty items are skipped; each item is split at its
//!   first `=` into name and URL; the same name may appear several times (one member with
//!   several peer URLs).
//! - Each peer URL: surrounding spaces trimmed, scheme `http` or `https`, authority
//!   `host:port`, no path. A member's URLs are sorted as strings.
//! - Member id: SHA-1 over the member's sorted peer URLs concatenated with no separator,
//!   followed by the token; the first 8 bytes of the digest, big-endian.
//! - Cluster id: SHA-1 over the member ids sorted ascending, each as 8 big-endian bytes; the
//!   first 8 bytes of the digest, big-endian.
//! - Member JSON (ConfChange context and the value in the bbolt `members` bucket):
//!   `{"id":<decimal u64>,"peerURLs":[...],"name":"..."}` (`isLearner` and `clientURLs` are
//!   omitted when false/empty, `name` when empty), with Go's `encoding/json` string escaping.
//! - Ids print (and key the `members` bucket and the v2 store paths) as lowercase hex without
//!   padding.

use std::collections::BTreeSet;

use thiserror::Error;

/// A problem with `--initial-cluster`, `--initial-cluster-token` or `--name`.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MembershipError {
    #[error("--initial-cluster is empty: give it as NAME=PEER_URL[,NAME=PEER_URL...], e.g. \"m1=https://10.0.0.1:2380\"")]
    Empty,
    #[error("--initial-cluster entry \"{entry}\" is not NAME=URL: write it as NAME=PEER_URL, e.g. \"m1=https://10.0.0.1:2380\"")]
    NotNameUrl { entry: String },
    #[error(
        "--initial-cluster entry \"{entry}\" has an empty member name: write it as NAME=PEER_URL"
    )]
    EmptyName { entry: String },
    #[error("--initial-cluster member \"{name}\" has an invalid peer URL \"{url}\": {reason}")]
    BadUrl {
        name: String,
        url: String,
        reason: String,
    },
    #[error("--initial-cluster lists the peer URL \"{url}\" twice (members \"{first}\" and \"{second}\"): every peer URL must belong to exactly one member")]
    DuplicateUrl {
        url: String,
        first: String,
        second: String,
    },
    #[error("members \"{first}\" and \"{second}\" get the same member id {id}: give them different peer URLs")]
    SameId {
        first: String,
        second: String,
        id: String,
    },
    #[error("member \"{name}\" gets member id 0, which raft reserves: change its peer URLs or --initial-cluster-token")]
    ZeroId { name: String },
    #[error("--name \"{name}\" is not in --initial-cluster (members: {known}): use one of those names or add NAME=PEER_URL for it")]
    UnknownName { name: String, known: String },
    #[error("--initial-advertise-peer-urls {advertised} does not match --initial-cluster's URLs {listed} for member \"{name}\": make them the same")]
    AdvertiseMismatch {
        name: String,
        advertised: String,
        listed: String,
    },
}

/// One member of the cluster being bootstrapped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub name: String,
    /// Normalized and sorted as etcd stores them.
    pub peer_urls: Vec<String>,
}

/// The members (sorted by id, as etcd lists them) and the cluster id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Membership {
    pub cluster_id: u64,
    pub members: Vec<Member>,
}

/// etcd's `types.ID` string form: lowercase hex, no padding.
pub fn id_hex(id: u64) -> String {
    format!("{id:x}")
}

fn sha1_prefix_u64(data: &[u8]) -> u64 {
    let digest = ring::digest::digest(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY, data);
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    u64::from_be_bytes(first)
}

/// The member id etcd derives from peer URLs (any order) and the cluster token.
pub fn member_id(peer_urls: &[String], token: &str) -> u64 {
    let mut sorted: Vec<&str> = peer_urls.iter().map(String::as_str).collect();
    sorted.sort_unstable();
    let mut b = sorted.concat().into_bytes();
    b.extend_from_slice(token.as_bytes());
    sha1_prefix_u64(&b)
}

/// The cluster id etcd derives from the member ids (any order).
pub fn cluster_id(ids: &[u64]) -> u64 {
    let mut sorted = ids.to_vec();
    sorted.sort_unstable();
    let b: Vec<u8> = sorted.iter().flat_map(|id| id.to_be_bytes()).collect();
    sha1_prefix_u64(&b)
}

/// Appends `s` as a JSON string the way Go's `encoding/json` writes it (HTML-safe escaping:
/// `<`, `>`, `&`, U+2028 and U+2029 as `\u` escapes; `\n`, `\r`, `\t` short forms; other control
/// characters as `\u00XX`).
pub fn go_json_string(out: &mut String, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '<' | '>' | '&' | '\u{0}'..='\u{1f}' => {
                let b = c as u8;
                out.push_str("\\u00");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
            '\u{2028}' => out.push_str("\\u2028"),
            '\u{2029}' => out.push_str("\\u2029"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn go_json_string_array(out: &mut String, items: &[String]) {
    out.push('[');
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        go_json_string(out, item);
    }
    out.push(']');
}

impl Member {
    /// The member as etcd's `json.Marshal(*membership.Member)` writes it.
    pub fn json(&self) -> Vec<u8> {
        let mut s = String::with_capacity(64 + 32 * self.peer_urls.len());
        s.push_str("{\"id\":");
        s.push_str(&self.id.to_string());
        s.push_str(",\"peerURLs\":");
        go_json_string_array(&mut s, &self.peer_urls);
        if !self.name.is_empty() {
            s.push_str(",\"name\":");
            go_json_string(&mut s, &self.name);
        }
        s.push('}');
        s.into_bytes()
    }

    /// `json.Marshal(member.RaftAttributes)`: the value of `/0/members/<id>/raftAttributes` in
    /// the v2 store.
    pub fn raft_attributes_json(&self) -> String {
        let mut s = String::from("{\"peerURLs\":");
        go_json_string_array(&mut s, &self.peer_urls);
        s.push('}');
        s
    }

    /// The key of this member in the bbolt `members` bucket: the id in lowercase hex.
    pub fn backend_key(&self) -> Vec<u8> {
        id_hex(self.id).into_bytes()
    }
}

/// Validates and normalizes one peer URL as etcd's `types.NewURLs` accepts it. Stricter than
/// Go's `net/url` in corner cases it would re-encode (user info, query, fragment, empty host or
/// port), which are rejected here rather than risk a string that differs from etcd's.
fn normalize_url(name: &str, raw: &str) -> Result<String, MembershipError> {
    let bad = |reason: &str| MembershipError::BadUrl {
        name: name.to_string(),
        url: raw.to_string(),
        reason: reason.to_string(),
    };
    let url = raw.trim();
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| bad("it must look like http://HOST:PORT or https://HOST:PORT"))?;
    let scheme = scheme.to_ascii_lowercase();
    if scheme != "http" && scheme != "https" {
        return Err(bad("the scheme must be http or https"));
    }
    if rest.contains(['/', '?', '#']) {
        return Err(bad(
            "it must not contain a path, query or fragment: give only SCHEME://HOST:PORT",
        ));
    }
    if rest.contains('@') {
        return Err(bad("it must not contain user info"));
    }
    let port = if let Some(v6) = rest.strip_prefix('[') {
        let (h, after) = v6
            .split_once(']')
            .ok_or_else(|| bad("an IPv6 host must be written [ADDR]:PORT"))?;
        let port = after
            .strip_prefix(':')
            .ok_or_else(|| bad("the address does not have the form host:port"))?;
        if h.is_empty()
            || !h
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return Err(bad("the IPv6 address is not valid"));
        }
        port
    } else {
        let (h, p) = rest
            .rsplit_once(':')
            .ok_or_else(|| bad("the address does not have the form host:port"))?;
        if h.contains(':') {
            return Err(bad("an IPv6 host must be written [ADDR]:PORT"));
        }
        if h.is_empty()
            || !h
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_')
        {
            return Err(bad("the host must be a DNS name or an IP address"));
        }
        p
    };
    if port.is_empty() || !port.bytes().all(|b| b.is_ascii_digit()) || port.len() > 5 {
        return Err(bad("the port must be a number"));
    }
    Ok(format!("{scheme}://{rest}"))
}

impl Membership {
    /// Builds the cluster `etcdutl snapshot restore --initial-cluster ... --initial-cluster-token
    /// ...` would create.
    pub fn from_flags(initial_cluster: &str, token: &str) -> Result<Membership, MembershipError> {
        // name -> raw URLs, in first-seen order of names.
        let mut by_name: Vec<(String, Vec<String>)> = Vec::new();
        for entry in initial_cluster.split(',') {
            if entry.is_empty() {
                continue;
            }
            let (name, url) = entry
                .split_once('=')
                .ok_or_else(|| MembershipError::NotNameUrl {
                    entry: entry.to_string(),
                })?;
            if name.is_empty() {
                return Err(MembershipError::EmptyName {
                    entry: entry.to_string(),
                });
            }
            let url = normalize_url(name, url)?;
            match by_name.iter_mut().find(|(n, _)| n == name) {
                Some((_, urls)) => urls.push(url),
                None => by_name.push((name.to_string(), vec![url])),
            }
        }
        if by_name.is_empty() {
            return Err(MembershipError::Empty);
        }
        // Every URL once in the whole cluster (etcd's CheckDuplicateURL).
        let mut seen: Vec<(&str, &str)> = Vec::new();
        for (name, urls) in &by_name {
            for url in urls {
                if let Some((_, first)) = seen.iter().find(|(u, _)| u == url) {
                    return Err(MembershipError::DuplicateUrl {
                        url: url.clone(),
                        first: first.to_string(),
                        second: name.clone(),
                    });
                }
                seen.push((url, name));
            }
        }
        let mut members: Vec<Member> = Vec::with_capacity(by_name.len());
        for (name, mut urls) in by_name {
            urls.sort();
            let id = member_id(&urls, token);
            if id == 0 {
                return Err(MembershipError::ZeroId { name });
            }
            if let Some(other) = members.iter().find(|m| m.id == id) {
                return Err(MembershipError::SameId {
                    first: other.name.clone(),
                    second: name,
                    id: id_hex(id),
                });
            }
            members.push(Member {
                id,
                name,
                peer_urls: urls,
            });
        }
        members.sort_by_key(|m| m.id);
        let ids: Vec<u64> = members.iter().map(|m| m.id).collect();
        Ok(Membership {
            cluster_id: cluster_id(&ids),
            members,
        })
    }

    /// The member with this `--name`.
    pub fn member(&self, name: &str) -> Option<&Member> {
        self.members.iter().find(|m| m.name == name)
    }

    /// The member with this `--name`, or the error etcd gives when `--name` is not in
    /// `--initial-cluster`.
    pub fn local(&self, name: &str) -> Result<&Member, MembershipError> {
        self.member(name)
            .ok_or_else(|| MembershipError::UnknownName {
                name: name.to_string(),
                known: self
                    .members
                    .iter()
                    .map(|m| format!("\"{}\"", m.name))
                    .collect::<Vec<_>>()
                    .join(", "),
            })
    }

    /// etcd's check that `--initial-advertise-peer-urls` equals the local member's URLs in
    /// `--initial-cluster` (compared as normalized strings; etcd additionally tries resolving
    /// DNS names before giving up, which this does not).
    pub fn check_advertise(
        &self,
        name: &str,
        advertised: &[String],
    ) -> Result<(), MembershipError> {
        let local = self.local(name)?;
        let mut adv = BTreeSet::new();
        for url in advertised {
            adv.insert(normalize_url(name, url)?);
        }
        let listed: BTreeSet<String> = local.peer_urls.iter().cloned().collect();
        if adv != listed {
            return Err(MembershipError::AdvertiseMismatch {
                name: name.to_string(),
                advertised: adv.into_iter().collect::<Vec<_>>().join(","),
                listed: local.peer_urls.join(","),
            });
        }
        Ok(())
    }

    /// Member ids, ascending.
    pub fn ids(&self) -> Vec<u64> {
        self.members.iter().map(|m| m.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn urls(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn member_ids_match_etcd_member_test_vectors() {
        // etcd server/etcdserver/api/membership/member_test.go, TestMemberTime (no time).
        assert_eq!(
            member_id(&urls(&["http://10.0.0.8:2379"]), ""),
            14544069596553697298
        );
        assert_eq!(
            member_id(&urls(&["http://10.0.0.1:2379", "http://10.0.0.2:2379"]), ""),
            16552244735972308939
        );
        assert_eq!(
            member_id(&urls(&["http://10.0.0.2:2379", "http://10.0.0.1:2379"]), ""),
            16552244735972308939
        );
    }

    #[test]
    fn default_single_member_cluster() {
        // A stock `etcd` with no flags: name "default", peer http://localhost:2380, token
        // "etcd-cluster" -> member 8e9e05c52164694d in cluster cdf818194e3a8c32 (the ids every
        // default etcd logs).
        let m = Membership::from_flags("default=http://localhost:2380", "etcd-cluster").unwrap();
        assert_eq!(id_hex(m.members[0].id), "8e9e05c52164694d");
        assert_eq!(id_hex(m.cluster_id), "cdf818194e3a8c32");
        assert_eq!(m.members[0].backend_key(), b"8e9e05c52164694d");
    }

    #[test]
    fn members_sorted_by_id_and_json() {
        let m = Membership::from_flags(
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,a=HTTP://127.0.0.0:9, ,c=https://[::1]:3",
            "tok",
        );
        // " " is an entry without '='.
        assert!(matches!(m, Err(MembershipError::NotNameUrl { .. })));
        let m = Membership::from_flags(
            "a=http://127.0.0.1:1,b=http://127.0.0.1:2,,a=HTTP://127.0.0.0:9,c=https://[::1]:3",
            "tok",
        )
        .unwrap();
        assert_eq!(m.members.len(), 3);
        assert!(m.members.windows(2).all(|w| w[0].id < w[1].id));
        let a = m.member("a").unwrap();
        assert_eq!(a.peer_urls, ["http://127.0.0.0:9", "http://127.0.0.1:1"]);
        assert_eq!(a.id, member_id(&a.peer_urls, "tok"));
        assert_eq!(
            String::from_utf8(a.json()).unwrap(),
            format!(
                "{{\"id\":{},\"peerURLs\":[\"http://127.0.0.0:9\",\"http://127.0.0.1:1\"],\"name\":\"a\"}}",
                a.id
            )
        );
        assert_eq!(
            a.raft_attributes_json(),
            "{\"peerURLs\":[\"http://127.0.0.0:9\",\"http://127.0.0.1:1\"]}"
        );
        assert_eq!(m.cluster_id, cluster_id(&m.ids()));
    }

    #[test]
    fn go_json_escaping() {
        let mut s = String::new();
        go_json_string(&mut s, "a<b>&\"\\\n\u{1}\u{2028}é");
        assert_eq!(s, "\"a\\u003cb\\u003e\\u0026\\\"\\\\\\n\\u0001\\u2028é\"");
    }

    #[test]
    fn flag_errors() {
        use MembershipError::*;
        let e = |ic: &str| Membership::from_flags(ic, "t").unwrap_err();
        assert_eq!(e(""), Empty);
        assert_eq!(e(",,"), Empty);
        assert!(matches!(e("m1"), NotNameUrl { .. }));
        assert!(matches!(e("=http://a:1"), EmptyName { .. }));
        assert!(matches!(e("m1=ftp://a:1"), BadUrl { .. }));
        assert!(matches!(e("m1=http://a"), BadUrl { .. }));
        assert!(matches!(e("m1=http://a:1/x"), BadUrl { .. }));
        assert!(matches!(e("m1=http://a:x"), BadUrl { .. }));
        assert!(matches!(e("m1=a:1"), BadUrl { .. }));
        assert!(matches!(e("m1=http://::1:1"), BadUrl { .. }));
        assert_eq!(
            e("m1=http://a:1,m2=http://a:1"),
            DuplicateUrl {
                url: "http://a:1".into(),
                first: "m1".into(),
                second: "m2".into()
            }
        );
        assert!(matches!(
            e("m1=http://a:1,m1=http://a:1"),
            DuplicateUrl { .. }
        ));
        let msg = e("x").to_string();
        assert!(
            msg.contains("--initial-cluster entry \"x\" is not NAME=URL"),
            "{msg}"
        );

        let m = Membership::from_flags(" m1=http://a:1", "t");
        // Names are not trimmed (as etcd): the member is called " m1".
        assert_eq!(m.unwrap().members[0].name, " m1");
        let m = Membership::from_flags("m1= http://a:1 ", "t").unwrap();
        assert_eq!(m.members[0].peer_urls, ["http://a:1"]);
        let err = m.local("m2").unwrap_err();
        assert!(err
            .to_string()
            .contains("--name \"m2\" is not in --initial-cluster"));
        assert!(m.check_advertise("m1", &urls(&["http://a:1"])).is_ok());
        assert!(matches!(
            m.check_advertise("m1", &urls(&["http://b:1"])),
            Err(AdvertiseMismatch { .. })
        ));
    }
}

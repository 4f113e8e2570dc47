//! phoenix's own ground: the files and the API that no plan may reach, whatever a policy says.
//!
//! A plan that could write a policy file would grant itself new capabilities at the next hot
//! reload; one that could replace another patch's module, the config or the store would own
//! phoenix; one that could call the API could trip breakers or approve plans. So phoenix's own
//! inputs and state (the config file, `policies_dir`, `patches_dir`, `data_dir`) and its
//! executable are outside every plan, and so is its listener. This is checked twice:
//!
//! - **at load**, a policy whose `writable_dirs` entry is, contains or lies inside one of the
//!   inputs, or whose `http_prefixes` entry resolves to the listener, is refused, naming both
//!   (at start: exit 64; at a reload: the last good set stays);
//! - **when a plan runs**, a write is refused when the directory it opened (component by
//!   component, without following links) is, or lies inside, one of phoenix's directories,
//!   compared by identity (device and inode, as at start and as now) as well as by path, so a
//!   symlink, a `..`, a bind mount or a directory moved since the load cannot route around it;
//!   and an HTTP action whose address (resolved at the request) is phoenix's own listener is
//!   refused before it connects. Both are `capability_denied`.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::{Component, Path, PathBuf};
use std::sync::RwLock;
use std::time::{Duration, Instant};

use crate::core::policy::Policy;
use crate::fs::{DirEntry, FileId};

/// How long a load may spend resolving the host names of `http_prefixes` (a name that does not
/// resolve in time is checked when a request is sent instead).
const RESOLVE_BUDGET: Duration = Duration::from_secs(2);

/// One of phoenix's own files or directories.
#[derive(Debug, Clone)]
struct Own {
    /// What it is, as messages name it.
    what: &'static str,
    /// Where it is, symlinks resolved as far as it exists.
    path: PathBuf,
    /// A directory (everything inside it is phoenix's), else one file.
    dir: bool,
    /// Whether a policy whose writable directory contains it is refused at load (an input of
    /// phoenix's), or only a write to it (the executable, which may sit in a folder that
    /// policies legitimately write).
    refused_at_load: bool,
    /// The identity of the directory (for a file: of its folder) when phoenix started.
    id_at_start: Option<FileId>,
}

impl Own {
    fn new(what: &'static str, path: &Path, dir: bool, refused_at_load: bool) -> Own {
        let path = resolved(path);
        let folder = if dir {
            Some(path.as_path())
        } else {
            path.parent()
        };
        Own {
            what,
            id_at_start: folder.and_then(FileId::of),
            path,
            dir,
            refused_at_load,
        }
    }

    /// The directory's (or the file's folder's) identities: as at start and as now.
    fn ids(&self) -> impl Iterator<Item = FileId> {
        let folder = if self.dir {
            Some(self.path.as_path())
        } else {
            self.path.parent()
        };
        self.id_at_start
            .into_iter()
            .chain(folder.and_then(FileId::of))
    }
}

/// Where phoenix's own inputs and state are, as its config says (absolute paths).
#[derive(Debug, Clone, Copy)]
pub struct OwnGround<'a> {
    pub config_file: Option<&'a Path>,
    pub policies_dir: &'a Path,
    pub patches_dir: &'a Path,
    pub data_dir: &'a Path,
    pub listen: SocketAddr,
}

/// phoenix's own files and address, and the checks that keep plans off them.
#[derive(Debug)]
pub struct Containment {
    own: Vec<Own>,
    /// The API's address: as configured until the listener is bound, then as bound.
    listener: RwLock<SocketAddr>,
}

impl Containment {
    /// phoenix's own ground: `own`'s files and folders, phoenix's executable, and the listen
    /// address configured.
    pub fn new(own: &OwnGround<'_>) -> Containment {
        let mut found = Vec::new();
        if let Some(file) = own.config_file {
            found.push(Own::new("config file", file, false, true));
        }
        found.push(Own::new("policies_dir", own.policies_dir, true, true));
        found.push(Own::new("patches_dir", own.patches_dir, true, true));
        found.push(Own::new("data_dir", own.data_dir, true, true));
        if let Ok(exe) = std::env::current_exe() {
            found.push(Own::new("executable", &exe, false, false));
        }
        Containment {
            own: found,
            listener: RwLock::new(own.listen),
        }
    }

    /// The listener is bound at `addr` (with port 0 configured, only now is the port known).
    pub fn set_listener(&self, addr: SocketAddr) {
        *self.listener.write().unwrap_or_else(|p| p.into_inner()) = addr;
    }

    fn listener(&self) -> SocketAddr {
        *self.listener.read().unwrap_or_else(|p| p.into_inner())
    }

    /// The port phoenix's API listens on (0 until it is bound, when configured so).
    pub fn listener_port(&self) -> u16 {
        self.listener().port()
    }

    /// Why `policy` may not be loaded, if one of its capabilities reaches phoenix's own files
    /// or API. `base` is the folder relative writable directories resolve against.
    pub fn check_policy(&self, policy: &Policy, base: &Path) -> Result<(), String> {
        for entry in &policy.capabilities.writable_dirs {
            self.check_writable_dir(entry, base)?;
        }
        let deadline = Instant::now() + RESOLVE_BUDGET;
        for prefix in &policy.capabilities.http_prefixes {
            if let Some(addr) = self.prefix_reaching_api(prefix, deadline) {
                return Err(format!(
                    "`capabilities.http_prefixes` entry `{prefix}` reaches phoenix's own API ({addr}): no policy may give a plan access to phoenix itself"
                ));
            }
        }
        Ok(())
    }

    fn check_writable_dir(&self, entry: &Path, base: &Path) -> Result<(), String> {
        let dir = resolved(&base.join(entry));
        let along: Vec<FileId> = dir.ancestors().filter_map(FileId::of).collect();
        for own in self.own.iter().filter(|own| own.refused_at_load) {
            let relation = if own.dir && dir == own.path {
                Some("is")
            } else if own.path.starts_with(&dir) {
                Some("contains")
            } else if own.dir && dir.starts_with(&own.path) {
                Some("lies inside")
            } else if own.dir && own.ids().any(|id| along.contains(&id)) {
                Some("lies inside (by another path to)")
            } else {
                None
            };
            if let Some(relation) = relation {
                return Err(format!(
                    "`capabilities.writable_dirs` entry `{}` ({}) {relation} phoenix's {} ({}): no policy may give a plan write access to phoenix's own files",
                    entry.display(),
                    dir.display(),
                    own.what,
                    own.path.display()
                ));
            }
        }
        Ok(())
    }

    /// The address of phoenix's API that `prefix` (an http(s) URL) resolves to, if any.
    fn prefix_reaching_api(&self, prefix: &str, deadline: Instant) -> Option<SocketAddr> {
        let url = reqwest::Url::parse(prefix).ok()?;
        let port = url.port_or_known_default()?;
        let host = url.host_str()?;
        let literal = host.trim_start_matches('[').trim_end_matches(']');
        let addrs = match literal.parse::<IpAddr>() {
            Ok(ip) => vec![SocketAddr::new(ip, port)],
            Err(_) => resolve_within(host, port, deadline),
        };
        addrs.into_iter().find(|addr| self.reaches_api(*addr))
    }

    /// Whether a connection to `addr` would reach phoenix's own listener: its address and port,
    /// or any address of this host when it listens on every one (and 0.0.0.0 or `::`, which
    /// connect to this host).
    pub fn reaches_api(&self, addr: SocketAddr) -> bool {
        let listener = self.listener();
        if listener.port() == 0 || addr.port() != listener.port() {
            return false;
        }
        let (ip, own) = (plain(addr.ip()), plain(listener.ip()));
        ip == own || ip.is_unspecified() || (own.is_unspecified() && is_local(ip))
    }

    /// Why a write into `entry` must not happen, if it must not: the directory phoenix opened
    /// for it is one of phoenix's own or lies inside one (by identity along the path it was
    /// opened by, or by path), or the entry is one of phoenix's own files.
    pub fn check_write(&self, entry: &DirEntry) -> Result<(), String> {
        let target = entry.path();
        let folder = entry.dir_path();
        let chain = entry.ancestors();
        for own in &self.own {
            let inside = if own.dir {
                target == own.path
                    || folder.starts_with(&own.path)
                    || own.ids().any(|id| chain.contains(&id))
            } else {
                target == own.path
                    || (Some(entry.name()) == own.path.file_name()
                        && chain
                            .last()
                            .is_some_and(|dir| own.ids().any(|id| id == *dir)))
            };
            if inside {
                let relation = if own.dir { "is inside" } else { "is" };
                return Err(format!(
                    "`{}` {relation} phoenix's {} ({}): no plan may write phoenix's own files",
                    target.display(),
                    own.what,
                    own.path.display()
                ));
            }
        }
        Ok(())
    }
}

/// An IPv4-mapped IPv6 address as the IPv4 address it is.
fn plain(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// Whether `ip` is an address of this host: the kernel lets a socket bind only to those (with
/// `ip_nonlocal_bind` set it lets every one, and phoenix then refuses more, never less).
fn is_local(ip: IpAddr) -> bool {
    std::net::UdpSocket::bind(SocketAddr::new(ip, 0)).is_ok()
}

/// `name`'s addresses at `port`, if it resolves before `deadline` (the resolver runs on a
/// thread of its own: a dead DNS server must not hold a reload).
fn resolve_within(name: &str, port: u16, deadline: Instant) -> Vec<SocketAddr> {
    let (answer, answered) = std::sync::mpsc::channel();
    let target = (name.to_owned(), port);
    let spawned = std::thread::Builder::new()
        .name("phoenix-resolve".into())
        .spawn(move || {
            let addrs: Vec<SocketAddr> = target
                .to_socket_addrs()
                .map(Iterator::collect)
                .unwrap_or_default();
            let _ = answer.send(addrs);
        });
    if spawned.is_err() {
        return Vec::new();
    }
    answered
        .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_default()
}

/// `path` with symlinks resolved as far as it exists; the names past that, as written (they
/// cannot be links: they do not exist yet).
pub fn resolved(path: &Path) -> PathBuf {
    let mut existing = path;
    let mut missing = Vec::new();
    loop {
        if let Ok(real) = existing.canonicalize() {
            let mut out = real;
            for name in missing.iter().rev() {
                out.push(name);
            }
            return out;
        }
        match (existing.parent(), existing.components().next_back()) {
            (Some(parent), Some(Component::Normal(name))) => {
                missing.push(name.to_owned());
                existing = parent;
            }
            _ => return lexical(path),
        }
    }
}

/// `path` with `.` and `..` folded by its names alone (for a path no part of which exists).
fn lexical(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_path_resolves_through_its_links_as_far_as_it_exists() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().canonicalize().unwrap();
        std::fs::create_dir(real.join("data")).unwrap();
        std::os::unix::fs::symlink("data", real.join("alias")).unwrap();
        assert_eq!(resolved(&real.join("alias")), real.join("data"));
        assert_eq!(
            resolved(&real.join("alias/not/yet")),
            real.join("data/not/yet")
        );
        assert_eq!(resolved(&real.join("alias/../data")), real.join("data"));
        assert_eq!(
            resolved(Path::new("/no-such-root/a/../b")),
            PathBuf::from("/no-such-root/b")
        );
    }

    #[test]
    fn the_api_is_its_listeners_address_or_any_of_this_hosts_when_it_listens_everywhere() {
        let nowhere = Path::new("/nowhere");
        let containment = Containment::new(&OwnGround {
            config_file: None,
            policies_dir: nowhere,
            patches_dir: nowhere,
            data_dir: nowhere,
            listen: "127.0.0.1:0".parse().unwrap(),
        });
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        assert!(
            !containment.reaches_api(at("127.0.0.1:7070")),
            "port unknown until bound"
        );
        containment.set_listener(at("127.0.0.1:7070"));
        for (addr, reaches) in [
            ("127.0.0.1:7070", true),
            ("[::ffff:127.0.0.1]:7070", true),
            ("0.0.0.0:7070", true),
            ("127.0.0.1:7071", false),
            ("127.0.0.2:7070", false),
            ("192.0.2.1:7070", false),
        ] {
            assert_eq!(containment.reaches_api(at(addr)), reaches, "{addr}");
        }
        containment.set_listener(at("0.0.0.0:7070"));
        for (addr, reaches) in [
            ("127.0.0.1:7070", true),
            ("127.0.0.9:7070", true),
            ("192.0.2.1:7070", false),
            ("127.0.0.1:7071", false),
        ] {
            assert_eq!(containment.reaches_api(at(addr)), reaches, "{addr}");
        }
    }
}
